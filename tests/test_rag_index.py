"""Index building (ImageFolder, CSV manifest), resumability, bad inputs, npz import, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from agents.clip_model import ClipModel, load_clip
from core.errors import InputError
from core.task import Task
from orchestrator.cli import main
from rag.embedder import ImageEmbedder
from rag.index import build_index, import_embeddings, scan_source
from rag.npz import read_embeddings_npz
from rag.store import ChromaStore

COLOURS = {
    "black-rot": (90, 40, 30),
    "healthy": (40, 160, 40),
    "rust": (220, 140, 30),
    "scab": (100, 110, 60),
}


def make_image_folder(root: Path, per_label: int = 3, seed: int = 0) -> Path:
    """DIR/<label>/<n>.png: small noisy images, distinct bytes, a colour per label."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label, colour in COLOURS.items():
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_label):
            noise = rng.integers(-40, 40, size=(32, 32, 3))
            pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{label}-{i}.png")
    return root


@pytest.fixture(scope="module")
def tiny_clip(tiny_clip_dir: Path) -> ClipModel:
    return load_clip(str(tiny_clip_dir), device="cpu")


@pytest.fixture
def store(tmp_path: Path) -> ChromaStore:
    return ChromaStore.open(index_dir=tmp_path / "index")


def test_build_skips_corrupt_images_and_is_idempotent(
    tmp_path: Path, tiny_clip: ClipModel, store: ChromaStore, apple_task: Task
) -> None:
    src = make_image_folder(tmp_path / "train")
    (src / "rust" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (src / "scab" / "notes.txt").write_text("ignored: not an image suffix")
    shutil.copy(src / "healthy" / "healthy-0.png", src / "healthy" / "copy.png")
    embedder = ImageEmbedder(tiny_clip, batch_size=4)
    index = store.index(apple_task.name, embedder.model, embedder.dim)
    report = build_index(src, apple_task, embedder, index, show_progress=False)
    assert report.seen == 14
    assert report.added == 12
    assert report.duplicates == 1
    assert [Path(f.source).name for f in report.failures] == ["broken.jpg"]
    assert "corrupt" in report.failures[0].reason or "not an image" in report.failures[0].reason
    assert index.count() == 12
    assert index.label_counts() == dict.fromkeys(COLOURS, 3)
    # the stored vectors are the CLIP embeddings of the files, under their sha256 ids
    stored = index.all_vectors()
    from core.images import ImageRef

    ref = ImageRef.from_path(src / "rust" / "rust-1.png")
    row = stored.ids.index(ref.sha256)
    np.testing.assert_allclose(
        stored.vectors[row], embedder.embed_refs([ref])[0], rtol=1e-4, atol=1e-5
    )
    again = build_index(src, apple_task, embedder, index, show_progress=False)
    # 12 stored images + the byte-identical copy, which has the same id
    assert (again.added, again.already_indexed, index.count()) == (0, 13, 12)
    assert len(again.failures) == 1


def test_interrupted_build_resumes_without_duplicates(
    tmp_path: Path,
    tiny_clip: ClipModel,
    store: ChromaStore,
    apple_task: Task,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src = make_image_folder(tmp_path / "train", per_label=4)
    embedder = ImageEmbedder(tiny_clip, batch_size=3)
    index = store.index(apple_task.name, embedder.model, embedder.dim)
    # 1) stopped by a limit
    first = build_index(src, apple_task, embedder, index, limit=5, show_progress=False)
    assert (first.added, index.count()) == (5, 5)
    # 2) interrupted midway (Ctrl-C during the third batch)
    calls = {"n": 0}
    real = embedder.embed_images

    def interrupting(images):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(images)

    monkeypatch.setattr(embedder, "embed_images", interrupting)
    with pytest.raises(KeyboardInterrupt):
        build_index(src, apple_task, embedder, index, show_progress=False)
    assert index.count() == 5 + 2 * 3
    monkeypatch.setattr(embedder, "embed_images", real)
    # 3) resumed: only the rest is embedded, nothing twice
    final = build_index(src, apple_task, embedder, index, show_progress=False)
    assert (final.already_indexed, final.added) == (11, 5)
    stored = index.all_vectors()
    assert len(stored.ids) == len(set(stored.ids)) == 16
    assert index.label_counts() == dict.fromkeys(COLOURS, 4)


def test_manifest_source_and_label_errors(tmp_path: Path, apple_task: Task) -> None:
    src = make_image_folder(tmp_path / "imgs", per_label=1)
    manifest = tmp_path / "train.csv"
    manifest.write_text(
        "path,label\nimgs/rust/rust-0.png,Rust\n"
        f"{(src / 'scab' / 'scab-0.png').resolve()},apple scab\n"
    )
    scanned = scan_source(manifest, apple_task, show_progress=False)
    assert [(i.truth, i.line, Path(i.image.source).is_file()) for i in scanned.images] == [
        ("rust", 2, True),
        ("scab", 3, True),
    ]
    manifest.write_text("path,label\nimgs/rust/rust-0.png,rust\nimgs/x.png,mildew\n")
    with pytest.raises(InputError) as e:
        scan_source(manifest, apple_task, show_progress=False)
    assert str(e.value) == (
        f"{manifest}:3: column 'label': label 'mildew' is not one of task apple-leaf's labels "
        "(black-rot, healthy, rust, scab)"
    )
    manifest.write_text("file,class\na.png,rust\n")
    with pytest.raises(InputError, match="needs a 'label' column"):
        scan_source(manifest, apple_task, show_progress=False)
    (src / "mildew").mkdir()
    with pytest.raises(InputError, match=r"mildew: label 'mildew' is not one of"):
        scan_source(src, apple_task, show_progress=False)
    with pytest.raises(InputError, match="no such folder or manifest"):
        scan_source(tmp_path / "absent", apple_task, show_progress=False)


def test_import_npz_refuses_pickles_and_bad_rows(tmp_path: Path, apple_task: Task) -> None:
    vectors = np.eye(4, 8, dtype=np.float32)
    good = tmp_path / "good.npz"
    np.savez(good, embeddings=vectors, labels=np.array(["rust", "scab", "Healthy", "black rot"]))
    data = read_embeddings_npz(good, apple_task)
    assert data.labels == ["rust", "scab", "healthy", "black-rot"]
    assert "embedding bytes" in data.id_scheme and len(set(data.ids)) == 4
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, embeddings=vectors, labels=np.array([{"x": 1}] * 4, dtype=object))
    with pytest.raises(InputError, match="refused: holds pickled objects"):
        read_embeddings_npz(pickled, apple_task)
    bad_label = tmp_path / "bad.npz"
    np.savez(bad_label, embeddings=vectors, labels=np.array(["rust", "rust", "mildew", "rust"]))
    with pytest.raises(InputError, match=r"column 'labels\[2\]': label 'mildew'"):
        read_embeddings_npz(bad_label, apple_task)
    missing = tmp_path / "missing.npz"
    np.savez(missing, vectors=vectors)
    with pytest.raises(InputError, match="column 'embeddings': missing array"):
        read_embeddings_npz(missing, apple_task)
    nan = tmp_path / "nan.npz"
    bad_vectors = vectors.copy()
    bad_vectors[1, 0] = np.nan
    np.savez(nan, embeddings=bad_vectors, labels=np.array(["rust"] * 4))
    with pytest.raises(InputError, match="row 1 is zero or not finite"):
        read_embeddings_npz(nan, apple_task)


def test_import_study_embeddings(paper_dir: Path, tmp_path: Path, apple_task: Task) -> None:
    store = ChromaStore.open(index_dir=tmp_path / "index")
    data = read_embeddings_npz(paper_dir / "train_clip_vitb32_embeddings.npz", apple_task)
    index = store.index(apple_task.name, "openai/clip-vit-base-patch32", data.vectors.shape[1])
    report = import_embeddings(data, index, model="openai/clip-vit-base-patch32")
    assert (report.added, report.total, index.dim) == (512, 512, 512)
    assert index.label_counts() == dict.fromkeys(apple_task.labels, 128)
    assert "'image:' + the npz 'image' name" in report.id_scheme
    again = import_embeddings(data, index, model="openai/clip-vit-base-patch32")
    assert (again.added, again.already_indexed, index.count()) == (0, 512, 512)
    # the same vectors under another model's name go elsewhere; another dimension is refused
    from rag.errors import StoreError

    with pytest.raises(StoreError, match="holds vectors of model"):
        import_embeddings(data, index, model="my/other-clip")


def test_cli_build_stats_and_errors(
    tmp_path: Path, tiny_clip_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = make_image_folder(tmp_path / "train", per_label=2)
    (src / "rust" / "broken.png").write_bytes(b"garbage")
    index_dir = tmp_path / "index"
    common = ["--index-dir", str(index_dir)]
    args = ["index", "build", str(src), "--task", "apple-leaf", "--clip-model", str(tiny_clip_dir)]
    assert main([*args, *common, "--batch-size", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["added"], out["total_in_index"]) == (8, 8)
    assert [Path(f["source"]).name for f in out["failed"]] == ["broken.png"]
    assert main([*args, *common]) == 0
    text = capsys.readouterr().out
    assert "already indexed" in text and "skipped (unreadable):" in text and "broken.png" in text
    assert main(["index", "stats", *common, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    (info,) = stats["indexes"]
    assert info["labels"] == dict.fromkeys(COLOURS, 2)
    assert (info["model"], info["dim"], info["count"]) == (str(tiny_clip_dir), 16, 8)
    (src / "mildew").mkdir()
    assert main([*args, *common]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "label 'mildew'" in err[0]
