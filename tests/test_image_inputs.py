"""The one scanner of image inputs: ``trustorch run`` (labels optional) and ``trustorch index
build`` (labels required) find the same images, in the same order, with the same labels."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from core.errors import InputError
from core.image_inputs import scan_images
from core.task import Task
from orchestrator.inputs import collect_images
from rag.index import scan_source


def _image(path: Path, shade: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade, 100, 50)).save(path, format="PNG")
    return path


def make_tree(root: Path) -> Path:
    """An ImageFolder tree with nested folders, hidden entries, non-images, odd suffix cases,
    symlinks (a label folder, a file, a loop) and a folder named by a synonym."""
    _image(root / "rust" / "b.png", 1)
    _image(root / "rust" / "a.PNG", 2)
    _image(root / "rust" / "deep" / "er" / "c.jpg", 3)
    _image(root / "rust" / ".hidden.png", 4)
    _image(root / "rust" / ".cache" / "d.png", 5)
    _image(root / "rust" / "._b.png", 6)
    (root / "rust" / "notes.txt").write_text("not an image")
    (root / "rust" / "e.png.bak").write_bytes(b"not an image suffix")
    _image(root / "Black_Rot" / "f.webp", 7)
    _image(root / ".git" / "g.png", 8)
    elsewhere = _image(root.parent / "elsewhere" / "scab" / "h.png", 9)
    (root / "scab").symlink_to(elsewhere.parent, target_is_directory=True)
    (root / "rust" / "linked.png").symlink_to(_image(root.parent / "loose" / "i.png", 10))
    (root / "rust" / "deep" / "loop").symlink_to(root, target_is_directory=True)
    (root / "rust" / "nowhere.png").symlink_to(root.parent / "absent.png")
    return root


EXPECTED = [
    ("Black_Rot/f.webp", "black-rot"),
    ("rust/a.PNG", "rust"),
    ("rust/b.png", "rust"),
    ("rust/deep/er/c.jpg", "rust"),
    ("rust/linked.png", "rust"),
    ("scab/h.png", "scab"),
]


def _found(root: Path, images) -> list[tuple[str, str | None]]:  # type: ignore[no-untyped-def]
    return [(Path(i.image.source).relative_to(root).as_posix(), i.truth) for i in images]


def test_run_and_index_build_find_the_same_images(tmp_path: Path, apple_task: Task) -> None:
    root = make_tree(tmp_path / "train")
    run = collect_images([root], task=apple_task)
    index = scan_source(root, apple_task, show_progress=False)
    assert _found(root, run.images) == _found(root, index.images) == EXPECTED
    assert run.skipped == index.skipped == []
    assert [i.line for i in index.images] == [None] * len(EXPECTED)


def test_a_folder_that_is_no_label(tmp_path: Path, apple_task: Task) -> None:
    root = make_tree(tmp_path / "train")
    _image(root / "mildew" / "j.png", 11)
    run = collect_images([root], task=apple_task)
    assert _found(root, run.images) == [*EXPECTED[:1], ("mildew/j.png", None), *EXPECTED[1:]]
    with pytest.raises(InputError) as err:
        scan_source(root, apple_task, show_progress=False)
    assert str(err.value) == (
        f"{root / 'mildew'}: label 'mildew' is not one of task apple-leaf's labels "
        "(black-rot, healthy, rust, scab)"
    )


def test_an_image_outside_a_label_folder(tmp_path: Path, apple_task: Task) -> None:
    root = make_tree(tmp_path / "train")
    loose = _image(root / "overview.png", 12)
    run = collect_images([root], task=apple_task)
    assert ("overview.png", None) in _found(root, run.images)
    with pytest.raises(InputError, match=r"overview\.png: image is not in a label folder"):
        scan_source(root, apple_task, show_progress=False)
    assert _found(root, collect_images([loose], task=apple_task).images) == [("overview.png", None)]
    with pytest.raises(InputError, match=r"overview\.png: an image file has no label"):
        scan_source(loose, apple_task, show_progress=False)


def test_unreadable_images_are_skipped_by_both(tmp_path: Path, apple_task: Task) -> None:
    root = make_tree(tmp_path / "train")
    (root / "rust" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    run = collect_images([root], task=apple_task)
    assert [(Path(s.source).name, s.reason) for s in run.skipped] == [
        ("broken.png", "not an image file (unknown format)")
    ]
    # the index build only hashes while scanning; its embedder reports the undecodable file
    index = scan_source(root, apple_task, show_progress=False)
    assert ("rust/broken.png", "rust") in _found(root, index.images) and index.skipped == []


def test_an_unlistable_folder_is_skipped(
    tmp_path: Path, apple_task: Task, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_tree(tmp_path / "train")
    real_scandir = os.scandir

    def refusing(path):  # type: ignore[no-untyped-def]
        if Path(path).name == "deep":
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    for scanned in (
        collect_images([root], task=apple_task),
        scan_source(root, apple_task, show_progress=False),
    ):
        assert ("rust/deep/er/c.jpg", "rust") not in _found(root, scanned.images)
        assert [(Path(s.source).name, s.reason) for s in scanned.skipped] == [
            ("deep", "cannot read the folder (Permission denied)")
        ]


def test_empty_and_missing_sources(tmp_path: Path, apple_task: Task) -> None:
    empty = tmp_path / "empty"
    (empty / "rust").mkdir(parents=True)
    (empty / "rust" / "notes.txt").write_text("no images")
    assert scan_images([empty], apple_task, labels_required=False).images == []
    with pytest.raises(InputError, match=r"empty: no images found: expected DIR/<label>/<image>"):
        scan_images([empty], apple_task, labels_required=True)
    with pytest.raises(InputError, match=r"absent: no such file or folder"):
        scan_images([tmp_path / "absent"], apple_task, labels_required=False)
    with pytest.raises(InputError, match=r"absent: no such folder or manifest"):
        scan_images([tmp_path / "absent"], apple_task, labels_required=True)


def test_a_manifest_and_a_folder_give_the_same_records(tmp_path: Path, apple_task: Task) -> None:
    root = make_tree(tmp_path / "train")
    manifest = tmp_path / "train.CSV"
    rows = "".join(f"train/{path},{label}\n" for path, label in EXPECTED)
    manifest.write_text("path,label\n" + rows)
    from_manifest = scan_images([manifest], apple_task, labels_required=True)
    from_folder = scan_images([root], apple_task, labels_required=True)
    assert [(i.image.sha256, i.truth) for i in from_manifest.images] == [
        (i.image.sha256, i.truth) for i in from_folder.images
    ]
    assert [i.line for i in from_manifest.images] == list(range(2, 2 + len(EXPECTED)))


def test_duplicates_are_kept_once_only_when_asked(tmp_path: Path, apple_task: Task) -> None:
    first = _image(tmp_path / "d" / "rust" / "a.png", 1)
    (tmp_path / "d" / "rust" / "b.png").write_bytes(first.read_bytes())
    every = scan_images([tmp_path / "d"], apple_task, labels_required=True)
    assert len(every.images) == 2 and every.duplicates == []
    once = scan_images([tmp_path / "d"], apple_task, labels_required=True, unique=True)
    assert len(once.images) == 1
    assert [(Path(s.source).name, s.reason) for s in once.duplicates] == [
        ("b.png", f"same bytes as {first}")
    ]
