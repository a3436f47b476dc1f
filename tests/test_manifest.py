"""CSV manifests shared by ``trustorch run`` (labels optional) and ``index build`` (required)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import InputError
from core.image_inputs import scan_images
from core.task import Task
from orchestrator.inputs import collect_images


def test_column_synonyms_relative_paths_and_optional_labels(tmp_path: Path, apple_task: Task):
    absolute = tmp_path / "abs" / "c.png"
    absolute.parent.mkdir()
    for i, path in enumerate([tmp_path / "a.png", tmp_path / "b,1.png", absolute]):
        path.write_bytes(bytes([i]))
    manifest = tmp_path / "m.csv"
    manifest.write_text(f'file,category\na.png,Apple Scab\n"b,1.png",\n{absolute},RUST\n')
    scanned = scan_images([manifest], apple_task, labels_required=False)
    assert [(Path(i.image.source), i.truth, i.line) for i in scanned.images] == [
        (tmp_path / "a.png", "scab", 2),
        (tmp_path / "b,1.png", None, 3),
        (absolute, "rust", 4),
    ]
    with pytest.raises(InputError) as err:
        scan_images([manifest], apple_task, labels_required=True)
    assert (err.value.line, err.value.field) == (3, "category")
    assert "empty label" in str(err.value)


def test_line_numbers_count_quoted_newlines(tmp_path: Path, apple_task: Task):
    manifest = tmp_path / "m.csv"
    manifest.write_text('path,label\n"two\nlines.png",rust\nx.png,mildew\n')
    with pytest.raises(InputError) as err:
        scan_images([manifest], apple_task, labels_required=False)
    assert (err.value.line, err.value.field) == (4, "label")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"label\nrust\n", "manifest needs a 'path' column (columns: label)"),
        (b"path\na.png\n", "manifest needs a 'label' column (columns: path)"),
        (b"", "manifest needs a 'path' and a 'label' column (columns: none)"),
        (b"path,label\n", "manifest has no rows"),
        (b"path,label,label\na.png,rust,scab\n", ":1: the header names column(s) 'label' more"),
        (b"path,label\n ,rust\n", "empty image path"),
        (b"path,label\n\xff\xfe.png,rust\n", "not a UTF-8 CSV manifest"),
    ],
)
def test_bad_manifests_are_one_line_input_errors(
    tmp_path: Path, apple_task: Task, content: bytes, message: str
):
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(content)
    with pytest.raises(InputError) as err:
        scan_images([manifest], apple_task, labels_required=True)
    assert message in str(err.value) and str(manifest) in str(err.value)
    assert "\n" not in str(err.value)


def test_run_inputs_report_a_non_utf8_manifest_as_bad_input(tmp_path: Path, apple_task: Task):
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(b"path\n\xff.png\n")
    with pytest.raises(InputError, match="not a UTF-8 CSV manifest"):
        collect_images([manifest], task=apple_task)
