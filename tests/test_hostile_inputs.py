"""Hostile inputs: every file a user names is checked before it is read and read under a cap.

A sparse 3 GB ``.png``, a FIFO with no writer and ``/dev/zero`` given to the real CLI (run in
subprocesses, with a timeout as the hang guard) are refused in one line with a non-zero exit,
and the child's peak memory stays far below the file's size; every wrong-format file given to
``index import`` is one line; concurrent imports into a new index folder all succeed and add
each row once; manifests keep URLs and quoted line breaks; large photos and large bootstraps
fit in memory.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from peak_rss import run_each_with_peak_rss
from PIL import Image
from test_run_cli import trustorch_command

from core.errors import InputError
from core.image_inputs import scan_images
from core.jsonio import read_json_file
from core.reading import file_sha256, read_file_bytes
from core.tables import read_rows
from core.task import Task
from orchestrator.cli import main
from rag.npz import read_embeddings_npz

HANG_GUARD_S = 120
MIB = 1024 * 1024
MeasuredRun = tuple[int, int, str, str]
"""Exit code, peak resident bytes of the command, stdout, stderr."""


def run_measured(args: list[str], *, cwd: Path) -> MeasuredRun:
    """``trustorch ARGS``: exit code, peak resident bytes of the command, stdout, stderr."""
    (result,) = run_each_measured([args], cwd=cwd)
    return result


def run_each_measured(arg_lists: list[list[str]], *, cwd: Path) -> list[MeasuredRun]:
    """``run_measured`` of each ``trustorch ARGS``, all at once, in the order given."""
    env = {**os.environ, "TRUSTORCH_INDEX_DIR": str(cwd / "default-index")}
    cmds = [[*trustorch_command(), *args] for args in arg_lists]
    return run_each_with_peak_rss(cmds, timeout_s=HANG_GUARD_S, cwd=cwd, env=env)


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def sparse_file(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        handle.truncate(size)
    return path


def leaf_png(path: Path, colour: tuple[int, int, int] = (120, 60, 30), size: int = 24) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)
    return path


# -- the bounded readers themselves ----------------------------------------------------------


def test_fifo_device_folder_and_growing_files_are_refused_before_reading(tmp_path: Path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(
        InputError, match=r"pipe\.png: the image file is not a regular file \(a FIFO"
    ):
        read_file_bytes(fifo, what="image file", max_bytes=100)
    with pytest.raises(InputError, match=r"not a regular file \(a character device\)"):
        file_sha256("/dev/zero", what="image file", max_bytes=100)
    with pytest.raises(InputError, match=r"not a regular file \(a folder\)"):
        read_file_bytes(tmp_path, what="manifest", max_bytes=100)
    with pytest.raises(InputError, match="no such manifest"):
        read_file_bytes(tmp_path / "gone.csv", what="manifest", max_bytes=100)
    big = sparse_file(tmp_path / "big.bin", 3 * 1024**3)
    with pytest.raises(InputError, match=r"is 3221225472 bytes, over the cap of 100 bytes"):
        read_file_bytes(big, what="image file", max_bytes=100)
    # /proc files say they are empty and are not: the read itself stops at the cap
    with pytest.raises(InputError, match="grew over the cap of 10 bytes"):
        read_file_bytes("/proc/self/maps", what="file", max_bytes=10)
    data = tmp_path / "leaf.bin"
    data.write_bytes(b"x" * 3_000_000)
    assert (
        file_sha256(data, what="file", max_bytes=3_000_000)
        == hashlib.sha256(b"x" * 3_000_000).hexdigest()
    )


@pytest.mark.parametrize("target", ["fifo", "/dev/zero"])
def test_json_and_csv_readers_refuse_fifos_and_devices(tmp_path: Path, target: str):
    path = tmp_path / "in.csv"
    if target == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(target)
    with pytest.raises(InputError, match="not a regular file"):
        read_rows(path)
    with pytest.raises(InputError, match="not a regular file"):
        read_json_file(path, what="trust profile file")


def test_tables_keep_quoted_line_breaks_and_count_lines_where_rows_start(tmp_path: Path):
    table = tmp_path / "r.csv"
    table.write_text('id,note\na,"two\nlines"\n\nb,"x\r\ny"\nc,plain\n', newline="")
    header, rows = read_rows(table)
    assert header == ["id", "note"]
    assert list(rows) == [
        (2, {"id": "a", "note": "two\nlines"}),
        (5, {"id": "b", "note": "x\r\ny"}),
        (7, {"id": "c", "note": "plain"}),
    ]


# -- a 3 GB .png, a FIFO and /dev/zero through the real CLI ----------------------------------


def _image_commands(image: Path, tmp_path: Path, tiny_clip_dir: Path) -> dict[str, list[str]]:
    clip = ["--clip-model", str(tiny_clip_dir)]
    folder = tmp_path / "train"
    (folder / "rust").mkdir(parents=True, exist_ok=True)
    (folder / "rust" / image.name).symlink_to(image)
    return {
        "run": ["run", str(image), "--agent", "clip", *clip, "--out", str(tmp_path / "o.jsonl")],
        "index build": ["index", "build", str(folder), *clip, "--index-dir", str(tmp_path / "i")],
        "agents predict": ["agents", "predict", str(image), *clip],
    }


IMAGE_COMMANDS = ("run", "index build", "agents predict")
SPARSE_3GB = "sparse 3 GB"
ODD_IMAGES = (SPARSE_3GB, "fifo", "/dev/zero")


def _odd_image_args(kind: str, command: str, folder: Path, tiny_clip_dir: Path) -> list[str]:
    """The ``command`` arguments that give it an odd ``leaf.png`` of ``kind`` in ``folder``."""
    if kind == SPARSE_3GB:
        image = sparse_file(folder / "huge" / "leaf.png", 3 * 1024**3)
        return _image_commands(image, folder, tiny_clip_dir)[command]
    image = folder / "odd" / "leaf.png"
    image.parent.mkdir()
    if kind == "fifo":
        os.mkfifo(image)
    else:
        image.symlink_to(kind)
    args = _image_commands(image, folder, tiny_clip_dir)[command]
    if command == "index build":
        # a folder walk lists regular files only; a manifest names the odd file directly
        manifest = folder / "m.csv"
        manifest.write_text(f"path,label\n{image},rust\n")
        args[2] = str(manifest)
    return args


@pytest.fixture(scope="module")
def odd_image_runs(
    tmp_path_factory: pytest.TempPathFactory, tiny_clip_dir: Path
) -> Iterator[dict[tuple[str, str], Future[MeasuredRun]]]:
    """Every image command on every odd image, each in a folder of its own, run two at a time
    from the first test on (their start-up is most of their time); each test waits for its own
    run and gets its result or its error."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = {}
        for kind in ODD_IMAGES:
            for command in IMAGE_COMMANDS:
                folder = tmp_path_factory.mktemp("odd-image")
                args = _odd_image_args(kind, command, folder, tiny_clip_dir)
                runs[kind, command] = pool.submit(run_measured, args, cwd=folder)
        yield runs


@pytest.mark.parametrize("command", IMAGE_COMMANDS)
def test_sparse_3gb_png_is_refused_in_one_line_without_reading_it(
    odd_image_runs: dict[tuple[str, str], Future[MeasuredRun]], command: str
):
    code, peak, _, err = odd_image_runs[SPARSE_3GB, command].result()
    line = one_error_line(err)
    assert code == 1, err
    assert "3221225472 bytes, over the cap of 20971520 bytes" in line
    assert peak < 600 * MIB, f"peak RSS {peak / MIB:.0f} MiB for a refused 3 GB file"


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
@pytest.mark.parametrize("command", IMAGE_COMMANDS)
def test_fifo_and_dev_zero_as_an_image_return_promptly_in_one_line(
    odd_image_runs: dict[tuple[str, str], Future[MeasuredRun]], command: str, kind: str
):
    code, _, _, err = odd_image_runs[kind, command].result()
    line = one_error_line(err)
    assert code == 1, err
    expected = "a FIFO" if kind == "fifo" else "a character device"
    assert f"not a regular file ({expected})" in line


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
def test_fifo_and_dev_zero_as_json_and_csv_inputs_return_promptly(tmp_path: Path, kind: str):
    odd = tmp_path / "odd"
    if kind == "fifo":
        os.mkfifo(odd)
    else:
        odd.symlink_to(kind)
    commands = []
    for suffix, args in (
        (".csv", ["eval", "calibration"]),
        (".csv", ["run", "--agent", "clip", "--out", str(tmp_path / "o.jsonl")]),
        (".json", ["agents", "predict", "leaf.png", "--task"]),
    ):
        named = odd.with_suffix(suffix)
        if not named.exists():
            os.link(odd, named, follow_symlinks=False)
        commands.append([*args, str(named)])
    for args, (code, _, _, err) in zip(
        commands, run_each_measured(commands, cwd=tmp_path), strict=True
    ):
        line = one_error_line(err)
        assert code == 1 and "not a regular file" in line, (args, err)


# -- index import: every wrong format is one line --------------------------------------------


def _savez(path: Path, **arrays: object) -> Path:
    np.savez(path, **arrays)
    return path


def _bad_npz_files(tmp_path: Path) -> list[tuple[Path, str]]:
    vectors = np.eye(3, 4, dtype=np.float32)
    labels = np.array(["rust", "scab", "healthy"])
    nan = vectors.copy()
    nan[2, 1] = np.nan
    plain = tmp_path / "plain.npz"
    np.save(tmp_path / "plain.npy", vectors)
    (tmp_path / "plain.npy").rename(plain)
    good = _savez(tmp_path / "good.npz", embeddings=vectors, labels=labels)
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "text.npz"
    text.write_text("embeddings,labels\n")
    return [
        (plain, "is a plain .npy array"),
        (text, "not an .npz archive"),
        (cut, "not a readable .npz archive"),
        (_savez(tmp_path / "nolabels.npz", embeddings=vectors), "column 'labels': missing array"),
        (
            _savez(tmp_path / "pickled.npz", embeddings=vectors, labels=labels.astype(object)),
            "column 'labels': refused: holds pickled objects",
        ),
        (
            _savez(tmp_path / "flat.npz", embeddings=vectors[0], labels=labels),
            "column 'embeddings': must be a non-empty [n, d] array of real numbers",
        ),
        (
            _savez(tmp_path / "empty.npz", embeddings=np.zeros((0, 4)), labels=labels[:0]),
            "column 'embeddings': must be a non-empty",
        ),
        (
            _savez(tmp_path / "strings.npz", embeddings=np.array([["a", "b"]] * 3), labels=labels),
            "column 'embeddings': must be a non-empty [n, d] array of real numbers, got <U1",
        ),
        (
            _savez(tmp_path / "complex.npz", embeddings=vectors + 1j, labels=labels),
            "got complex",
        ),
        (
            _savez(tmp_path / "intlabels.npz", embeddings=vectors, labels=np.arange(3)),
            "column 'labels': must be an array of strings, got int64",
        ),
        (
            _savez(tmp_path / "short.npz", embeddings=vectors, labels=labels[:2]),
            "column 'labels': must have shape (3,) like the embeddings, got (2,)",
        ),
        (
            _savez(tmp_path / "names.npz", embeddings=vectors, labels=labels, image=labels[:1]),
            "column 'image': must have shape (3,)",
        ),
        (
            _savez(tmp_path / "nan.npz", embeddings=nan, labels=labels),
            "column 'embeddings': row 2 is zero or not finite",
        ),
        (
            _savez(tmp_path / "huge.npz", embeddings=np.full((3, 4), 1e300), labels=labels),
            "row 0 is zero or not finite (in float32)",
        ),
    ]


def test_every_wrong_format_for_index_import_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    for path, message in _bad_npz_files(tmp_path):
        args = ["index", "import", str(path), "--model", "m", "--index-dir", str(tmp_path / "i")]
        assert main(args) == 1, path
        err = capsys.readouterr().err
        line = one_error_line(err)
        assert line.startswith(f"error: {path}: ") and message in line, (path, line)


def test_an_archive_that_would_inflate_past_the_cap_is_refused(tmp_path: Path, apple_task: Task):
    bomb = tmp_path / "bomb.npz"
    np.savez_compressed(bomb, embeddings=np.zeros((2000, 512)), labels=np.array(["rust"] * 2000))
    assert bomb.stat().st_size < 100_000
    with pytest.raises(InputError, match=r"would inflate to \d+ bytes, over the cap of 1000000"):
        read_embeddings_npz(bomb, apple_task, max_bytes=1_000_000)
    # members named like arrays that are not .npy data (numpy hands their raw bytes back)
    odd = tmp_path / "odd.npz"
    with zipfile.ZipFile(odd, "w") as archive:
        archive.writestr("embeddings.npy", b"not an array")
        archive.writestr("labels.npy", b"nor this")
    with pytest.raises(InputError, match=r"odd\.npz: column 'embeddings': must be a non-empty"):
        read_embeddings_npz(odd, apple_task)


def test_three_concurrent_imports_into_a_new_folder_all_succeed_with_each_row_once(
    tmp_path: Path,
):
    rng = np.random.default_rng(3)
    n = 300
    names = np.array([f"leaf-{i}.png" for i in range(n)])
    labels = np.array(["rust", "scab", "healthy"] * (n // 3))
    vectors = rng.normal(size=(n, 8)).astype(np.float32)
    files = []
    for part in range(3):  # overlapping thirds: every row is in two of the files
        rows = np.r_[part * 100 : part * 100 + 200] % n
        path = tmp_path / f"part{part}.npz"
        np.savez(path, embeddings=vectors[rows], labels=labels[rows], image=names[rows])
        files.append(path)
    index_dir = tmp_path / "new-index"
    cmd = trustorch_command()
    procs = [
        subprocess.Popen(
            [
                *cmd,
                "index",
                "import",
                str(f),
                "--model",
                "m",
                "--index-dir",
                str(index_dir),
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for f in files
    ]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=HANG_GUARD_S)
        assert proc.returncode == 0, err
        reports.append(json.loads(out))
    assert sum(r["added"] for r in reports) == n
    assert [r["added"] + r["already_indexed"] for r in reports] == [200, 200, 200]
    from rag.store import ChromaStore

    index = ChromaStore.open(index_dir=index_dir, create=False).existing("apple-leaf", "m")
    stored = index.all_vectors()
    assert index.count() == n and sorted(stored.sources) == sorted(names.tolist())
    expected = {name: vector for name, vector in zip(names, vectors, strict=True)}
    for source, vector in zip(stored.sources, stored.vectors, strict=True):
        np.testing.assert_allclose(vector, expected[source], rtol=1e-6)


# -- manifests: URLs stay URLs, quoted line breaks stay in the path --------------------------


@pytest.fixture
def leaf_server() -> Iterator[tuple[str, bytes]]:
    """A real HTTP server on 127.0.0.1 serving one PNG at /leaf.png."""
    buffer = io.BytesIO()
    Image.new("RGB", (10, 6), (30, 140, 20)).save(buffer, format="PNG")
    png = buffer.getvalue()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            if self.path != "/leaf.png":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("content-type", "image/png")
            self.end_headers()
            self.wfile.write(png)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", png
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_manifest_keeps_urls_and_quoted_line_breaks(
    tmp_path: Path, apple_task: Task, leaf_server: tuple[str, bytes]
):
    base, png = leaf_server
    two_lines = leaf_png(tmp_path / "two\nlines.png")
    comma = leaf_png(tmp_path / "a,b.png", colour=(1, 2, 3))
    manifest = tmp_path / "images" / "m.csv"
    manifest.parent.mkdir()
    manifest.write_text(
        "path,label\n"
        f"{base}/leaf.png,rust\n"
        f'"{two_lines}",scab\n'
        f"{base}/missing.png,healthy\n"
        f'"{comma}",healthy\n'
        "ftp://example.org/leaf.png,rust\n"
        f'"{tmp_path}/two\n\nlines.png",rust\n',
        newline="",
    )
    scanned = scan_images([manifest], apple_task, labels_required=True)
    assert [(i.image.source, i.truth, i.line) for i in scanned.images] == [
        (f"{base}/leaf.png", "rust", 2),
        (str(two_lines), "scab", 3),
        (str(comma), "healthy", 6),
    ]
    assert scanned.images[0].image.sha256 == hashlib.sha256(png).hexdigest()
    assert [(s.source, s.reason.split(" (")[0]) for s in scanned.skipped] == [
        (f"{base}/missing.png", "HTTP 404 fetching the image"),
        ("ftp://example.org/leaf.png", "unsupported URL scheme 'ftp'"),
        (f"{tmp_path}/two\n\nlines.png", "no such file"),
    ]


def test_manifest_line_numbers_count_line_breaks_inside_quotes(tmp_path: Path, apple_task: Task):
    manifest = tmp_path / "m.csv"
    manifest.write_text('path,label\n"a\nb\nc.png",rust\n\nx.png,mildew\n')
    with pytest.raises(InputError) as err:
        scan_images([manifest], apple_task, labels_required=True)
    assert (err.value.line, err.value.field) == (6, "label")
    manifest.write_text("path,label\nx.png,rust,extra\n")
    with pytest.raises(InputError, match=r"m\.csv:2: row has more fields than the header"):
        scan_images([manifest], apple_task, labels_required=True)


# -- memory: a 36 MP photo for CLIP, a bootstrap of many rows --------------------------------

_CLIP_ONE_IMAGE = """
import sys
from agents.clip_agent import ClipAgent
from agents.clip_model import load_clip
from core.images import ImageRef
from core.task import load_task
clip = load_clip(sys.argv[1], device="cpu")
(prediction,) = ClipAgent(clip).classify([ImageRef.from_path(sys.argv[2])], load_task("apple-leaf"))
assert prediction.ok, prediction.error
"""


def _photo(path: Path, width: int, height: int) -> Path:
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 255, (height // 16, width // 16, 3), dtype=np.uint8))
    small.resize((width, height), Image.Resampling.BILINEAR).save(path, quality=90)
    return path


def _peak_rss_of_each(cmds: list[list[str]]) -> list[int]:
    """The peak resident bytes of each command, measured all at once, in the order given."""
    peaks = []
    for code, peak, _, err in run_each_with_peak_rss(cmds, timeout_s=HANG_GUARD_S):
        assert code == 0, err
        peaks.append(peak)
    return peaks


@pytest.mark.heavy
def test_a_36mp_photo_for_clip_costs_about_what_a_1mp_one_does(tmp_path: Path):
    from tiny_models import make_tiny_clip

    clip = make_tiny_clip(tmp_path / "clip", image_size=224)  # CLIP's real 224-pixel input
    small = _photo(tmp_path / "1mp.jpg", 1224, 816)
    large = _photo(tmp_path / "36mp.jpg", 7360, 4912)
    baseline, peak = _peak_rss_of_each(
        [[sys.executable, "-c", _CLIP_ONE_IMAGE, str(clip), str(photo)] for photo in (small, large)]
    )
    # decoded in full, the photo alone is 108 MB of RGB and several times that in floats
    assert peak < baseline + 60 * MIB, (peak / MIB, baseline / MIB)


def test_reduced_decodes_keep_what_the_model_needs(tmp_path: Path):
    from core.images import REDUCE_ABOVE_PIXELS, ImageRef, LoadedImage, open_image

    large = _photo(tmp_path / "large.jpg", 2400, 1800)
    assert REDUCE_ABOVE_PIXELS < 2400 * 1800
    ref = ImageRef.from_path(large)
    assert open_image(ref).size == (2400, 1800)
    reduced = open_image(ref, shortest_side=224)
    assert min(reduced.size) >= 224 and reduced.size[0] < 600
    assert abs(reduced.size[0] / reduced.size[1] - 4 / 3) < 0.02
    png = tmp_path / "large.png"
    Image.open(large).save(png)
    assert min(open_image(ImageRef.from_path(png), shortest_side=224).size) >= 224
    loaded = LoadedImage(ref)
    first = open_image(loaded, shortest_side=224)
    assert open_image(loaded, shortest_side=224) is first
    assert open_image(loaded).size == (2400, 1800)
    # a small image is decoded once at full size for every model
    small = LoadedImage(ImageRef.from_path(leaf_png(tmp_path / "small.png", size=300)))
    assert open_image(small, shortest_side=32) is open_image(small)


def test_bootstrap_in_chunks_gives_the_same_intervals(monkeypatch: pytest.MonkeyPatch):
    import eval.bootstrap as bootstrap

    rng = np.random.default_rng(5)
    confidence = rng.uniform(0.2, 1.0, 2000)
    correct = rng.uniform(size=2000) < confidence
    whole = bootstrap.bootstrap_intervals(correct, confidence, correct, resamples=200, seed=1)
    shapes: list[tuple[int, ...]] = []
    chunks = bootstrap.resample_count_chunks

    def recorded(*args, **kwargs):
        for chunk in chunks(*args, **kwargs):
            shapes.append(chunk.shape)
            yield chunk

    monkeypatch.setattr(bootstrap, "CHUNK_ELEMENTS", 20_000)
    monkeypatch.setattr(bootstrap, "resample_count_chunks", recorded)
    chunked = bootstrap.bootstrap_intervals(correct, confidence, correct, resamples=200, seed=1)
    assert chunked.keys() == whole.keys() == {"accuracy", "ece", "ccc"}
    for key in whole:
        np.testing.assert_allclose(chunked[key], whole[key], rtol=1e-12)
    assert max(rows * n for rows, n in shapes) <= 20_000 and sum(r for r, _ in shapes) == 400
