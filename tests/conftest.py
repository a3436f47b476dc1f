"""Shared fixtures: the reference study's real recorded data, the apple-leaf task."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.task import Task, load_task

PAPER_DIR = Path(
    os.environ.get(
        "TRUSTORCH_PAPER_DATA", Path(__file__).resolve().parents[2] / "shared/data/paper"
    )
)


@pytest.fixture(scope="session")
def paper_dir() -> Path:
    if not (PAPER_DIR / "case1_zero_shot.csv").is_file():
        pytest.skip(
            f"the reference study's recorded data is not at {PAPER_DIR} "
            "(set TRUSTORCH_PAPER_DATA to the folder holding case1_zero_shot.csv)"
        )
    return PAPER_DIR


@pytest.fixture(scope="session")
def apple_task() -> Task:
    return load_task("apple-leaf")


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny seeded CLIP (random weights, real architecture) saved to a folder."""
    from tiny_models import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("tiny-clip") / "clip")
