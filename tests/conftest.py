"""Shared fixtures: the reference study's real recorded data, the apple-leaf task."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.study import study_folder
from core.task import Task, load_task


@pytest.fixture(scope="session")
def paper_dir() -> Path:
    """The study's recorded outputs: the copy shipped in the package (figures only), or the
    folder named by ``TRUSTORCH_PAPER_DATA`` (e.g. the full copy with reasons)."""
    override = os.environ.get("TRUSTORCH_PAPER_DATA")
    folder = Path(override) if override else study_folder()
    if not (folder / "case1_zero_shot.csv").is_file():
        pytest.fail(f"no case1_zero_shot.csv in {folder} (TRUSTORCH_PAPER_DATA)")
    return folder


@pytest.fixture(scope="session")
def apple_task() -> Task:
    return load_task("apple-leaf")


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny seeded CLIP (random weights, real architecture) saved to a folder."""
    from tiny_models import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("tiny-clip") / "clip")


@pytest.fixture
def retries_without_waiting(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The OpenAI-compatible client retries as usual but does not sleep between attempts; the
    backoff delays it would have waited are recorded in the returned list."""
    import agents.openai_compat.client as client_module

    real_backoff_s = client_module.backoff_s
    skipped_delays: list[float] = []

    def no_wait(attempt: int, error: Exception, *, base_s: float, max_s: float) -> float:
        skipped_delays.append(real_backoff_s(attempt, error, base_s=base_s, max_s=max_s))
        return 0.0

    monkeypatch.setattr(client_module, "backoff_s", no_wait)
    return skipped_delays
