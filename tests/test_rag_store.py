"""The Chroma store: naming, idempotent inserts, cosine queries, filters, model/dim refusal.

``StoreBehaviour`` holds the behaviour tests; ``TestEmbeddedStore`` runs them on an embedded
PersistentClient here, ``tests/test_rag_server.py`` runs the same ones against `chroma run`.
"""

from __future__ import annotations

import re
import uuid

import numpy as np
import pytest

from core.errors import InputError
from rag.errors import StoreError
from rag.store import DEFAULT_HNSW, ChromaStore, collection_name, default_index_dir

NAME_RULE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")


def unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class StoreBehaviour:
    """Tests that must hold for any ChromaStore (a ``store`` fixture supplies it)."""

    @pytest.fixture
    def names(self) -> tuple[str, str]:
        tag = uuid.uuid4().hex[:8]
        return f"task-{tag}", f"org/model-{tag}"

    def test_insert_is_idempotent_by_id(self, store: ChromaStore, names: tuple[str, str]) -> None:
        task, model = names
        index = store.index(task, model, 8)
        x = unit_vectors(6, 8)
        ids = [f"sha{i}" for i in range(6)]
        labels = ["a", "b", "a", "b", "a", "b"]
        sources = [f"img{i}.png" for i in range(6)]
        assert index.add(ids[:4], x[:4], model=model, labels=labels[:4], sources=sources[:4]) == 4
        assert index.add(ids, x, model=model, labels=labels, sources=sources) == 2
        assert index.add(ids, x, model=model, labels=labels, sources=sources) == 0
        # the same id twice in one call is added once
        assert index.add(["dup", "dup"], x[:2], model=model, labels="ab", sources="xy") == 1
        assert index.count() == 7
        assert index.label_counts() == {"a": 4, "b": 3}
        # reopening the same (task, model) gives the same collection
        assert store.index(task, model, 8).count() == 7

    def test_query_is_exact_cosine_and_filters(
        self, store: ChromaStore, names: tuple[str, str]
    ) -> None:
        task, model = names
        index = store.index(task, model, 16)
        x = unit_vectors(40, 16, seed=1)
        ids = [f"id{i:02d}" for i in range(40)]
        labels = ["a" if i % 2 else "b" for i in range(40)]
        splits_ok = index.add(ids[:30], x[:30], model=model, labels=labels[:30], sources=ids[:30])
        index.add(ids[30:], x[30:], model=model, labels=labels[30:], sources=ids[30:], split="val")
        assert splits_ok == 30
        # vectors scaled by 3 are the same directions in cosine space
        found = index.query(3.0 * x[:5], 5, model=model)
        exact = x[:5] @ x.T
        for row, neighbours in enumerate(found):
            assert neighbours[0].id == ids[row]
            assert neighbours[0].similarity == pytest.approx(1.0, abs=1e-5)
            order = np.argsort(-exact[row])[:5]
            assert [n.id for n in neighbours] == [ids[i] for i in order]
            np.testing.assert_allclose(
                [n.similarity for n in neighbours], exact[row, order], atol=1e-5
            )
            assert neighbours[0].source == ids[row]
        only_a = index.query(x[:3], 4, model=model, labels=["a"])
        assert all(n.label == "a" for row in only_a for n in row)
        val = index.query(x[:3], 40, model=model, split="val")
        assert {n.id for row in val for n in row} <= set(ids[30:])
        assert len(val[0]) == 10
        both = index.query(x[:1], 40, model=model, labels=["b"], split="val")
        assert {n.id for n in both[0]} == {ids[i] for i in range(30, 40) if labels[i] == "b"}
        # k larger than the index is capped
        assert len(index.query(x[:1], 500, model=model)[0]) == 40

    def test_other_model_or_dimension_is_refused(
        self, store: ChromaStore, names: tuple[str, str]
    ) -> None:
        task, model = names
        index = store.index(task, model, 8)
        x = unit_vectors(3, 8)
        index.add(["a", "b", "c"], x, model=model, labels="xyz", sources="abc")
        with pytest.raises(StoreError, match=r"holds vectors of model .*not comparable"):
            index.query(x, 2, model="another/model")
        with pytest.raises(StoreError, match="not comparable"):
            index.add(["d"], x[:1], model="another/model", labels="x", sources="d")
        with pytest.raises(StoreError, match=r"holds 8-d vectors .* got 12-d"):
            index.query(unit_vectors(1, 12), 2, model=model)
        with pytest.raises(StoreError, match=r"holds 8-d vectors .* not 12-d"):
            store.index(task, model, 12)
        assert index.count() == 3

    def test_existing_lists_what_is_there(self, store: ChromaStore, names: tuple[str, str]) -> None:
        task, model = names
        with pytest.raises(StoreError, match=f"no index for task '{task}'"):
            store.existing(task)
        store.index(task, model, 4).add(
            ["a"], unit_vectors(1, 4), model=model, labels="x", sources="a"
        )
        assert store.existing(task).model == model
        with pytest.raises(StoreError, match=rf"present: '{model}' \(4-d, 1 images\)"):
            store.existing(task, "other/model")
        store.index(task, "other/model", 6)
        with pytest.raises(StoreError, match=r"several indexes .* --model"):
            store.existing(task)
        info = store.existing(task, model).info()
        assert (info.task, info.model, info.dim, info.count) == (task, model, 4, 1)
        assert info.labels == {"x": 1}
        assert info.collection == collection_name(task, model)
        listed = {(i.task, i.model) for i in store.indexes()}
        assert {(task, model), (task, "other/model")} <= listed

    @pytest.mark.filterwarnings("ignore:legacy embedding function config")
    def test_collection_is_cosine_with_default_hnsw(
        self, store: ChromaStore, names: tuple[str, str]
    ) -> None:
        task, model = names
        index = store.index(task, model, 4)
        hnsw = index.collection.configuration["hnsw"]
        for key, value in DEFAULT_HNSW.items():
            assert hnsw[key] == value


class TestEmbeddedStore(StoreBehaviour):
    @pytest.fixture
    def store(self, tmp_path) -> ChromaStore:  # type: ignore[no-untyped-def]
        return ChromaStore.open(index_dir=tmp_path / "index")


def test_collection_names_are_valid_and_distinct() -> None:
    cases = [
        ("apple-leaf", "openai/clip-vit-base-patch32"),
        ("apple-leaf", "/tmp/pytest-of-me/pytest-3/tiny-clip0/clip"),
        ("apple-leaf", "/tmp/other/tiny-clip0/clip"),
        ("x", "y"),
        ("Ünïcode task!!", "..//.."),
        ("a" * 200, "b" * 300),
        ("apple-leaf", "openai/clip-vit-base-patch32 "),
    ]
    names = [collection_name(task, model) for task, model in cases]
    for name in names:
        assert 3 <= len(name) <= 63 and NAME_RULE.match(name) and ".." not in name, name
    assert len(set(names)) == len(names)
    assert names[0].startswith("apple-leaf-openai-clip-vit-base-patch32-")


def test_embedded_index_persists_across_clients(tmp_path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "idx"
    store = ChromaStore.open(index_dir=folder)
    store.index("t1", "m", 4).add(
        ["a", "b"], unit_vectors(2, 4), model="m", labels="xy", sources="ab"
    )
    again = ChromaStore.open(index_dir=folder)
    assert again.existing("t1").count() == 2
    assert again.location == str(folder)


def test_default_index_dir_honours_env(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TRUSTORCH_INDEX_DIR", str(tmp_path / "here"))
    assert default_index_dir() == tmp_path / "here"
    monkeypatch.delenv("TRUSTORCH_INDEX_DIR")
    assert default_index_dir().parts[-2:] == ("trustorch", "index")


def test_unreachable_server_is_one_clear_error() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StoreError, match=f"cannot reach the Chroma server at .*:{port}"):
        ChromaStore.open(chroma_url=f"http://127.0.0.1:{port}")


def test_opening_for_reading_creates_nothing(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from orchestrator.cli import main

    missing = tmp_path / "nonexist" / "x"
    with pytest.raises(InputError, match=r"no index at .*nonexist.x; build one with"):
        ChromaStore.open(index_dir=missing, create=False)
    empty = tmp_path / "emptyidx"
    empty.mkdir()
    for argv in (
        ["index", "stats", "--index-dir", str(missing)],
        ["index", "stats", "--index-dir", str(missing), "--json"],
        ["eval", "retrieval", "--index-dir", str(missing)],
        ["eval", "retrieval", "--index-dir", str(empty)],
    ):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: no index at "), err
    assert not (tmp_path / "nonexist").exists() and list(empty.iterdir()) == []
    # a built index still opens for reading
    ChromaStore.open(index_dir=empty).index("t1", "m", 4)
    assert ChromaStore.open(index_dir=empty, create=False).existing("t1").count() == 0
