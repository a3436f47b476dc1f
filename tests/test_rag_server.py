"""The same store behaviour against a real `chroma run` server on 127.0.0.1 (free port)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_eval_retrieval import check_study_loo, import_study
from test_rag_index import COLOURS, make_image_folder
from test_rag_store import StoreBehaviour

from core.task import Task
from orchestrator.cli import main
from rag.store import ChromaStore

pytestmark = pytest.mark.heavy


def chroma_cli() -> str | None:
    beside = Path(sys.executable).parent / "chroma"
    return str(beside) if beside.is_file() else shutil.which("chroma")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def chroma_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    cli = chroma_cli()
    if cli is None:
        pytest.skip("the `chroma` CLI (installed with chromadb) is not on this machine")
    folder = tmp_path_factory.mktemp("chroma-server")
    port = free_port()
    log = (folder / "server.log").open("wb")
    server = subprocess.Popen(
        [cli, "run", "--path", str(folder / "db"), "--port", str(port), "--host", "127.0.0.1"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                pytest.fail(f"chroma run exited with {server.returncode}; see {log.name}")
            try:
                if httpx.get(f"{url}/api/v2/heartbeat", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"chroma run did not answer on {url} within 60 s")
            time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


class TestServerStore(StoreBehaviour):
    @pytest.fixture
    def store(self, chroma_url: str) -> ChromaStore:
        return ChromaStore.open(chroma_url=chroma_url)


def test_study_loo_equals_exact_search_on_server(
    chroma_url: str, paper_dir: Path, apple_task: Task
) -> None:
    store = ChromaStore.open(chroma_url=chroma_url)
    assert store.location == chroma_url
    index = import_study(store, paper_dir, apple_task, "server/openai-clip-vit-base-patch32")
    check_study_loo(index, paper_dir, apple_task)


def test_cli_build_resumes_against_server(
    chroma_url: str, tmp_path: Path, tiny_clip_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = make_image_folder(tmp_path / "train", per_label=2)
    task_file = tmp_path / "task.json"
    task_file.write_text(
        json.dumps(
            {
                "name": "server-task",
                "labels": list(COLOURS),
                "descriptions": {label: label for label in COLOURS},
            }
        )
    )
    args = ["index", "build", str(src), "--task", str(task_file), "--clip-model"]
    args += [str(tiny_clip_dir), "--chroma-url", chroma_url, "--json"]
    assert main([*args, "--limit", "3"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["added"], first["total_in_index"]) == (3, 3)
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert (second["added"], second["already_indexed"], second["total_in_index"]) == (5, 3, 8)
    assert (
        main(["index", "stats", "--task", "server-task", "--chroma-url", chroma_url, "--json"]) == 0
    )
    (info,) = json.loads(capsys.readouterr().out)["indexes"]
    assert info["labels"] == dict.fromkeys(COLOURS, 2) and info["location"] == chroma_url


class _TokenProxy:
    """A loopback reverse proxy in front of the Chroma server that lets a request through only
    with ``Authorization: Bearer <token>`` (what nginx or a gateway does in a deployment)."""

    def __init__(self, upstream: str, token: str) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        seen: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def forward(self) -> None:
                seen.append(self.headers.get("Authorization", ""))
                if self.headers.get("Authorization") != f"Bearer {token}":
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                size = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(size) if size else None
                headers = {"Content-Type": self.headers.get("Content-Type", "application/json")}
                reply = httpx.request(
                    self.command, upstream + self.path, content=body, headers=headers, timeout=30
                )
                self.send_response(reply.status_code)
                self.send_header("Content-Type", reply.headers.get("content-type", "text/plain"))
                self.send_header("Content-Length", str(len(reply.content)))
                self.end_headers()
                self.wfile.write(reply.content)

            do_GET = do_POST = do_PUT = do_DELETE = forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.seen = seen
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_server_behind_an_authenticating_proxy_takes_a_token_or_a_url_login(
    chroma_url: str, monkeypatch: pytest.MonkeyPatch
):
    import numpy as np

    from rag.errors import StoreError

    proxy = _TokenProxy(chroma_url, "s3cret-token")
    try:
        monkeypatch.delenv("TRUSTORCH_CHROMA_TOKEN", raising=False)
        with pytest.raises(StoreError) as refused:
            ChromaStore.open(chroma_url=proxy.url)
        assert "cannot reach the Chroma server" in str(refused.value)
        assert proxy.seen and proxy.seen[-1] == ""

        monkeypatch.setenv("TRUSTORCH_CHROMA_TOKEN", "s3cret-token")
        store = ChromaStore.open(chroma_url=proxy.url)
        index = store.index("proxy-task", "m", 3)
        added = index.add(
            ["a" * 64], np.array([[1.0, 0.0, 0.0]]), model="m", labels=["rust"], sources=["x"]
        )
        assert added == 1 and index.count() == 1
        assert set(proxy.seen[1:]) == {"Bearer s3cret-token"}

        # a wrong token is refused by the proxy, and the message never shows it
        monkeypatch.setenv("TRUSTORCH_CHROMA_TOKEN", "wrong-token")
        with pytest.raises(StoreError) as wrong:
            ChromaStore.open(chroma_url=proxy.url)
        assert "wrong-token" not in str(wrong.value)
    finally:
        proxy.close()


def test_a_url_login_is_sent_as_basic_auth_and_a_token_wins():
    from urllib.parse import urlparse

    from rag.store import chroma_auth_headers

    url = urlparse("https://ann:p%40ss@chroma.example:8443")
    assert chroma_auth_headers(url, {}) == {"Authorization": "Basic YW5uOnBAc3M="}  # ann:p@ss
    token = {"TRUSTORCH_CHROMA_TOKEN": " t0k "}
    assert chroma_auth_headers(url, token) == {"Authorization": "Bearer t0k"}
    assert chroma_auth_headers(urlparse("http://127.0.0.1:8000"), {}) == {}
