"""Leave-one-out retrieval evaluation, checked against exact numpy search on the study's data."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from core.errors import InputError
from core.task import Task
from eval.retrieval import (
    cross_fitted_softmax,
    evaluate_loo,
    fit_softmax_vote,
    loo_neighbours,
)
from eval.retrieval_cli import retrieval
from rag.index import import_embeddings
from rag.npz import read_embeddings_npz
from rag.store import ChromaStore, ImageIndex

STUDY_MODEL = "openai/clip-vit-base-patch32"


def import_study(store: ChromaStore, paper_dir: Path, task: Task, model: str) -> ImageIndex:
    data = read_embeddings_npz(paper_dir / "train_clip_vitb32_embeddings.npz", task)
    index = store.index(task.name, model, data.vectors.shape[1])
    import_embeddings(data, index, model=model)
    return index


def exact_share_predictions(vectors: np.ndarray, truth: np.ndarray, k: int, *, cosine: bool):
    """Independent exact LOO with the study's rule: top-k by dot product, diagonal excluded."""
    x = vectors.astype(np.float64)
    if cosine:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    nn = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(sims, nn, axis=1)
    scores = np.stack([np.where(truth[nn] == c, top, 0.0).sum(axis=1) for c in range(4)], 1)
    return scores.argmax(axis=1), np.sort(top, axis=1)[:, ::-1]


def check_study_loo(index: ImageIndex, paper_dir: Path, task: Task) -> dict:
    """The LOO figures at k = 10 of the store equal exact numpy search; returns them."""
    raw = np.load(paper_dir / "train_clip_vitb32_embeddings.npz", allow_pickle=False)
    truth = np.array([task.labels.index(label) for label in raw["labels"]])
    result = evaluate_loo(index, task, k=10)
    by_rule = {v.rule: v for v in result.variants}
    cosine_pred, cosine_top = exact_share_predictions(raw["embeddings"], truth, 10, cosine=True)
    exact_accuracy = float(np.mean(cosine_pred == truth))
    assert exact_accuracy == pytest.approx(488 / 512)
    assert by_rule["similarity-share"].accuracy == exact_accuracy
    # the file's vectors have norms 1.0001-1.0006; raw dot products (the study's 0.955) move
    # exactly one item across the line
    dot_pred, _ = exact_share_predictions(raw["embeddings"], truth, 10, cosine=False)
    assert float(np.mean(dot_pred == truth)) == pytest.approx(489 / 512)
    loo = loo_neighbours(index, task, 10)
    order = [loo.ids.index(i) for i in read_ids(paper_dir, task)]
    np.testing.assert_allclose(loo.similarities[order], cosine_top, atol=2e-5)
    share, softmax = by_rule["similarity-share"], by_rule["softmax"]
    fitted = fit_softmax_vote(index, task, k=10)
    assert fitted.to_dict()["temperature"] == pytest.approx(softmax.params["temperature"])
    assert 0.94 <= share.macro_f1 <= 0.96
    assert share.calibration["ece"] == pytest.approx(0.0785, abs=0.002)
    assert softmax.accuracy >= share.accuracy
    assert softmax.calibration["ece"] < share.calibration["ece"] / 2
    assert softmax.params["temperature"] > 0 and softmax.params["n_fit"] == 512
    assert result.n == 512 and result.k == 10 and result.bins == 10
    return result.to_dict()


def read_ids(paper_dir: Path, task: Task) -> list[str]:
    return read_embeddings_npz(paper_dir / "train_clip_vitb32_embeddings.npz", task).ids


def test_study_loo_equals_exact_search_embedded(
    paper_dir: Path, tmp_path: Path, apple_task: Task
) -> None:
    store = ChromaStore.open(index_dir=tmp_path / "index")
    index = import_study(store, paper_dir, apple_task, STUDY_MODEL)
    check_study_loo(index, paper_dir, apple_task)


def test_loo_excludes_each_item_and_cross_fits(tmp_path: Path, apple_task: Task) -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 12))
    truth = np.repeat(np.arange(4), 15)
    x = centres[truth] + 1.5 * rng.normal(size=(60, 12))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    store = ChromaStore.open(index_dir=tmp_path / "index")
    index = store.index(apple_task.name, "synthetic", 12)
    ids = [f"item{i}" for i in range(60)]
    labels = [apple_task.labels[t] for t in truth]
    index.add(ids, x, model="synthetic", labels=labels, sources=ids)
    loo = loo_neighbours(index, apple_task, 5, batch_size=7)
    assert loo.similarities.shape == (60, 5)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    expected = -np.sort(-sims, axis=1)[:, :5]
    order = [loo.ids.index(i) for i in ids]
    np.testing.assert_allclose(loo.similarities[order], expected, atol=1e-5)
    scores, full = cross_fitted_softmax(loo, folds=5, seed=0)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0)
    assert full.n_fit_ == 60
    # an item's own truth never enters the fit that scores it: changing it changes nothing
    flipped_truth = loo.truth_idx.copy()
    flipped_truth[7] = (flipped_truth[7] + 1) % 4
    flipped = replace(loo, truth_idx=flipped_truth)
    again, _ = cross_fitted_softmax(flipped, folds=5, seed=0)
    np.testing.assert_array_equal(again[7], scores[7])
    assert not np.array_equal(again, scores)  # other folds' fits did see it


def test_retrieval_command_json_and_table(
    paper_dir: Path, tmp_path: Path, apple_task: Task
) -> None:
    store = ChromaStore.open(index_dir=tmp_path / "index")
    import_study(store, paper_dir, apple_task, STUDY_MODEL)
    app = typer.Typer()
    app.command()(retrieval)
    app.command("other")(lambda: None)
    runner = CliRunner()
    common = ["retrieval", "--loo", "-k", "10", "--index-dir", str(tmp_path / "index")]
    done = runner.invoke(app, [*common, "--json"])
    assert done.exit_code == 0, done.output
    out = json.loads(done.stdout)
    assert out["variants"]["similarity-share"]["accuracy"] == pytest.approx(488 / 512)
    assert set(out["variants"]) == {"similarity-share", "softmax"}
    assert out["ece_bins"] == 10 and out["softmax_folds"] == 10
    table = runner.invoke(app, common)
    assert table.exit_code == 0 and "similarity-share" in table.stdout and "0.953" in table.stdout


def synthetic_index(store: ChromaStore, task: Task, n: int, dim: int = 8) -> ImageIndex:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    index = store.index(task.name, "synthetic", dim)
    ids = [f"item{i}" for i in range(n)]
    index.add(ids, x, model="synthetic", labels=[task.labels[i % 4] for i in range(n)], sources=ids)
    return index


def test_large_k_is_batched_under_the_sql_variable_limit(tmp_path: Path, apple_task: Task):
    # 200 queries x 200 results in one Chroma call exceeded SQLite's 32,766 variables
    store = ChromaStore.open(index_dir=tmp_path / "index")
    index = synthetic_index(store, apple_task, 200)
    loo = loo_neighbours(index, apple_task, 199)
    assert loo.similarities.shape == (200, 199) and (loo.label_idx >= 0).all()
    ids = np.array(loo.ids)
    for row in range(0, 200, 37):
        found = index.query(index.all_vectors().vectors[[row]], 200, model="synthetic")[0]
        assert len({n.id for n in found} - {ids[row]}) == 199
    result = evaluate_loo(index, apple_task, k=199, folds=2)
    assert result.k == 199 and result.n == 200


def test_k_of_index_size_or_more_is_an_input_error(tmp_path: Path, apple_task: Task):
    store = ChromaStore.open(index_dir=tmp_path / "index")
    index = synthetic_index(store, apple_task, 5)
    with pytest.raises(InputError, match=r"k=5 is too large: .* holds 5 items.*use -k 4 or less"):
        evaluate_loo(index, apple_task, k=5)
    assert evaluate_loo(index, apple_task, k=4, folds=2).k == 4


def test_index_under_three_items_is_an_input_error(tmp_path: Path, apple_task: Task):
    store = ChromaStore.open(index_dir=tmp_path / "index")
    index = synthetic_index(store, apple_task, 2)
    with pytest.raises(InputError, match="holds 2 item\\(s\\); leave-one-out needs at least 3"):
        evaluate_loo(index, apple_task, k=1)


def test_retrieval_command_rejects_k_zero(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(retrieval)
    app.command("other")(lambda: None)
    done = CliRunner().invoke(app, ["retrieval", "-k", "0", "--index-dir", str(tmp_path / "x")])
    assert done.exit_code == 2 and "greater than or equal to 1" in done.output
    assert not (tmp_path / "x").exists()
