"""Output files are written whole, with the usual permissions, and a path that cannot be written
is a one-line error naming it (``core.files``), through every writer of the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from core.errors import InputError
from core.files import output_folder, write_atomically, write_text_atomically
from orchestrator.cli import main

ROWS = [
    {"id": str(i), "agent": "a", "truth": t, "pred": p, "confidence": c}
    for i, (t, p, c) in enumerate(
        [("cat", "cat", 0.9), ("dog", "dog", 0.8), ("dog", "cat", 0.6), ("cat", "cat", 0.7)]
    )
]


def test_text_is_written_whole_with_the_umask_permissions(tmp_path: Path):
    target = tmp_path / "new" / "out.json"
    assert write_text_atomically(target, "{}\n", what="x") == target
    assert target.read_text() == "{}\n"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_a_failing_writer_keeps_the_old_file_and_leaves_no_part_file(tmp_path: Path):
    target = tmp_path / "out.txt"
    target.write_text("old")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(InputError) as err:
        write_atomically(target, half_then_fail, what="the thing")
    assert str(err.value) == f"{target}: cannot write the thing (No space left on device)"
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_files_and_folders_in_the_way_are_named(tmp_path: Path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="a file is in the way of the folder for the plots"):
        output_folder(tmp_path / "file" / "plots", what="the plots")
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(InputError, match="a folder is in the way of the profiles"):
        write_text_atomically(tmp_path / "dir.json", "{}", what="the profiles")
    assert list((tmp_path / "dir.json").iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "folder", "message"),
    [
        (["eval", "trust", "{data}", "--out", "{blocker}/p.json"], "", "the trust profiles"),
        (["eval", "calibration", "{data}", "--plots", "{blocker}/plots"], "/plots", "a plot"),
    ],
)
def test_cli_writers_fail_in_one_line(
    tmp_path: Path, capsys, argv: list[str], folder: str, message: str
):
    data, blocker = tmp_path / "long.jsonl", tmp_path / "blocker"
    data.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    blocker.write_text("a file, not a folder")
    args = [a.format(data=data, blocker=blocker) for a in argv]
    assert main([*args, "--bootstrap", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: {blocker}{folder}: a file is in the way of the folder for {message}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "long.jsonl"]


def _held_elsewhere(path: Path) -> bool:
    """Whether another process finds ``path``'s flock taken (it tries without waiting)."""
    import subprocess
    import sys

    probe = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
        "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n"
        "    sys.exit(3)\n"
    )
    return subprocess.run([sys.executable, "-c", probe, str(path)]).returncode == 3


def test_a_folder_lock_is_re_entrant_and_keeps_other_processes_out(tmp_path: Path):
    from core.files import FolderLock

    lock = FolderLock(tmp_path / ".lock")
    assert not _held_elsewhere(tmp_path / ".lock")
    with lock.held():
        with lock.held():  # a nested hold by the same holder does not wait for itself
            assert _held_elsewhere(tmp_path / ".lock")
        assert _held_elsewhere(tmp_path / ".lock")  # still held by the outer block
    assert not _held_elsewhere(tmp_path / ".lock")


def test_a_folder_lock_in_a_read_only_folder_locks_nothing(tmp_path: Path):
    from core.files import FolderLock

    with FolderLock(tmp_path / "missing-folder" / ".lock").held():
        pass
    assert not (tmp_path / "missing-folder").exists()
