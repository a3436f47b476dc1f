"""``trustorch demo leaf --serve`` driven by a real headless browser.

The command runs as a subprocess (tiny seeded CLIP, a real Chroma index); Debian's chromium,
started with flags that keep it off the network, is driven through selenium and
/usr/bin/chromedriver: it uploads a leaf photo and reads the decision from the page, which must
be the decision the same pipeline makes in this process.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from offline_browser import browser_missing, offline_chrome
from test_demo_report import COLOURS, leaf_image, make_index, make_leaf_folder
from tiny_models import clip_with_token_limit

pytestmark = pytest.mark.heavy


def _missing() -> str | None:
    if reason := browser_missing():
        return reason
    if importlib.util.find_spec("gradio") is None:
        return "gradio is not installed (the 'demo' extra)"
    return None


if reason := _missing():
    pytest.skip(reason, allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class DemoServer:
    """The ``demo leaf --serve`` process, started, and the page's address."""

    url: str
    process: subprocess.Popen[str]

    def wait_until_up(self, timeout_s: float = 300.0) -> str:
        """The page's address once it answers (fails the test if the server exits or hangs)."""
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                out, _ = self.process.communicate()
                pytest.fail(
                    f"the demo server exited with {self.process.returncode}:\n{out[-3000:]}"
                )
            try:
                if httpx.get(self.url, timeout=2.0).status_code == 200:
                    return self.url
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        pytest.fail(f"the demo server did not answer at {self.url} within {timeout_s:.0f} s")


@pytest.fixture(scope="module")
def demo_setup(tiny_clip_dir, apple_task, tmp_path_factory):
    from agents.clip_model import load_clip

    root = tmp_path_factory.mktemp("demo-browser")
    clip_dir = clip_with_token_limit(tiny_clip_dir, root / "clip")
    clip = load_clip(str(clip_dir), device="cpu")
    make_index(clip, root / "index", make_leaf_folder(root / "refs"), apple_task)
    photo = leaf_image(root / "upload" / "my leaf.png", COLOURS["rust"], seed=77, size=96)
    return root, clip_dir, root / "index", photo


@pytest.fixture(scope="module")
def demo_server(demo_setup) -> Iterator[DemoServer]:
    """The server, started but not waited for: the fixtures after it (the decision this process
    makes, the browser) are set up while it loads."""
    root, clip_dir, index_dir, _ = demo_setup
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "TRUSTORCH_", "GRADIO_"))
    }
    env |= {
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_TEMP_DIR": str(root / "gradio-tmp"),
        "HF_HUB_OFFLINE": "1",
    }
    cmd = [
        sys.executable, "-c", "from orchestrator.cli import entry; entry()",
        "demo", "leaf", "--serve", "--port", str(port),
        "--clip-model", str(clip_dir), "--index-dir", str(index_dir),
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        yield DemoServer(url=f"http://127.0.0.1:{port}/", process=proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def expected_decision(demo_server, demo_setup, apple_task):
    """The decision the same pipeline makes in this process, made while the server starts."""
    from core.images import ImageRef
    from orchestrator.demo import build_pipeline

    _, clip_dir, index_dir, photo = demo_setup
    return asyncio.run(
        build_pipeline(
            task=apple_task, clip_model=str(clip_dir), index_dir=index_dir, environ={}
        ).diagnose(ImageRef.from_path(photo))
    )


@pytest.fixture()
def browser(tmp_path, monkeypatch):
    monkeypatch.setenv("SE_OFFLINE", "true")
    driver = offline_chrome(tmp_path / "chromium-profile")
    try:
        yield driver
    finally:
        driver.quit()


def test_upload_a_leaf_and_read_the_decision(
    demo_server, expected_decision, browser, demo_setup, tmp_path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from orchestrator.demo.web import summary_text

    _, _, _, photo = demo_setup
    browser.get(demo_server.wait_until_up())
    upload = WebDriverWait(browser, 180).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "#leaf-input input[type=file]")
    )
    upload.send_keys(str(photo))

    def page_summary(driver) -> str | bool:
        text = driver.find_element(By.CSS_SELECTOR, "#diagnosis-summary textarea").get_attribute(
            "value"
        )
        return text if text and text.startswith(("Diagnosis", "No diagnosis", "Error")) else False

    summary = WebDriverWait(browser, 300).until(page_summary)
    browser.save_screenshot(str(tmp_path / "page.png"))

    assert summary == summary_text(expected_decision)

    frame = WebDriverWait(browser, 90).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "#report iframe#report-frame")
    )
    browser.switch_to.frame(frame)
    diagnosis = browser.find_element(By.ID, "diagnosis")
    assert diagnosis.get_attribute("data-label") == (expected_decision.label or "")
    assert float(diagnosis.get_attribute("data-confidence")) == pytest.approx(
        expected_decision.confidence, abs=1e-4
    )
    if expected_decision.label is not None:
        assert browser.find_element(By.ID, "final-label").text == expected_decision.label
    else:
        assert diagnosis.get_attribute("data-abstained") == "true"
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.prediction")
    assert [r.get_attribute("data-agent") for r in rows] == [
        p.agent for p in expected_decision.predictions
    ]
    leaf = browser.find_element(By.ID, "leaf")
    assert leaf.get_attribute("src").startswith("data:image/png;base64,")
    assert browser.execute_script("return arguments[0].naturalWidth", leaf) == 96
    browser.switch_to.default_content()
