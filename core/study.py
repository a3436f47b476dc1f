"""The reference study's recorded outputs that ship with the package (arXiv 2507.10571; MIT,
see ``prompts/study/NOTICE``), reachable by name from every command that reads a recorded file:
``study:case1``, ``study:case3``, ``study:train-embeddings``.

The shipped copy holds figures only (labels, confidences, retrieval scores, flags, embeddings);
the models' free-text reasons are left out. ``PROVENANCE.json`` beside the files gives their
source commit and sha256.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from core.errors import InputError

STUDY_PREFIX = "study:"
STUDY_FILES = {
    "case1": "case1_zero_shot.csv",
    "case3": "case3_trust_rag.csv",
    "train-embeddings": "train_clip_vitb32_embeddings.npz",
}


def study_folder() -> Path:
    """The folder of the shipped study files inside the installed package."""
    return Path(str(resources.files("prompts") / "study"))


def resolve_data_path(value: str | Path) -> Path:
    """``study:<name>`` as the shipped file's path; any other value as a plain path."""
    text = str(value)
    if not text.startswith(STUDY_PREFIX):
        return Path(value)
    name = text.removeprefix(STUDY_PREFIX)
    if name not in STUDY_FILES:
        known = ", ".join(STUDY_PREFIX + n for n in STUDY_FILES)
        raise InputError(f"unknown study file '{text}' (shipped: {known})")
    path = study_folder() / STUDY_FILES[name]
    if not path.is_file():
        raise InputError("the shipped study file is missing from the installation", path=str(path))
    return path
