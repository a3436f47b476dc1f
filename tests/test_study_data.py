"""The shipped figures-only copy of the study's recorded outputs: reachable by name, true to its
provenance, and free of the models' sentences."""

from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest

from core.errors import InputError
from core.study import STUDY_FILES, resolve_data_path, study_folder


def test_every_name_resolves_to_a_shipped_file() -> None:
    for name, file_name in STUDY_FILES.items():
        path = resolve_data_path(f"study:{name}")
        assert path.name == file_name
        assert path.is_file()


def test_plain_paths_pass_through(tmp_path) -> None:
    assert resolve_data_path(tmp_path / "x.csv") == tmp_path / "x.csv"
    assert str(resolve_data_path("studies/case3.csv")) == "studies/case3.csv"


def test_unknown_name_lists_the_shipped_ones() -> None:
    with pytest.raises(InputError, match=r"unknown study file 'study:case2'.*study:case3"):
        resolve_data_path("study:case2")


def test_files_match_their_recorded_sha256() -> None:
    provenance = json.loads((study_folder() / "PROVENANCE.json").read_text())
    assert provenance["upstream_commit"] and (study_folder() / "NOTICE").is_file()
    recorded = {entry["file"]: entry["sha256"] for entry in provenance["files"]}
    assert set(recorded) == set(STUDY_FILES.values())
    for file_name, digest in recorded.items():
        assert hashlib.sha256((study_folder() / file_name).read_bytes()).hexdigest() == digest


def test_csvs_hold_figures_and_no_reasons() -> None:
    for name, rows_expected in (("case1", 160), ("case3", 160)):
        with resolve_data_path(f"study:{name}").open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == rows_expected
        assert not [c for c in rows[0] if c.endswith("_reason")]
        assert {"id", "image", "category", "gpt_pred", "gpt_conf"} <= set(rows[0])
        assert all(0.0 <= float(r["gpt_conf"]) <= 1.0 for r in rows)


def test_embeddings_are_the_512_training_vectors() -> None:
    with np.load(resolve_data_path("study:train-embeddings"), allow_pickle=False) as data:
        vectors, labels = data["embeddings"], data["labels"]
    assert vectors.shape == (512, 512) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=2e-3)
    assert sorted(set(labels.tolist())) == ["black-rot", "healthy", "rust", "scab"]
