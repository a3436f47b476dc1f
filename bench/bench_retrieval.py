"""Retrieval benchmark: build throughput, query latency and recall of the Chroma index.

Measured in one run, with their baselines:
- embedding rate of CLIP (a tiny seeded CLIP, and the ViT-B/32 architecture with random
  weights: the real model's cost, no download) beside the store's insert rate;
- single-image query latency p50 / p99 at each size, embedded and `chroma run` server, for
  the bare ``collection.query`` and for the product's ``ImageIndex.query`` + vote, and exact
  numpy search; recall@10 of the index against exact search on held-out queries.

Vectors are synthetic 512-d with the structure of real CLIP embeddings: a shared direction,
a few hundred clusters, variance concentrated on a power-law spectrum (the study's embeddings
have a participation ratio of ~16), L2-normalised. Their similarity statistics are printed
beside those of the study's embeddings when those are on this machine.

Usage:
  python bench/bench_retrieval.py                    # 10,000 and 100,000, embedded + server
  python bench/bench_retrieval.py --sizes 10000 --backends embedded --queries 100
  python bench/bench_retrieval.py --sweep            # recall / build time per HNSW setting
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from agents.types import Neighbour  # noqa: E402
from rag import store as store_module  # noqa: E402
from rag.store import ChromaStore, ImageIndex  # noqa: E402
from rag.vote import SimilarityShareVote, vote_dict  # noqa: E402

LABELS = ("black-rot", "healthy", "rust", "scab")
PAPER_NPZ = ROOT.parent / "shared/data/paper/train_clip_vitb32_embeddings.npz"


def clustered_vectors(
    n: int,
    *,
    dim: int = 512,
    clusters: int = 300,
    alpha: float = 1.2,
    centre_scale: float = 0.3,
    noise_scale: float = 0.2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """n unit vectors around ``clusters`` centres; returns (vectors, cluster of each)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    spectrum = np.arange(1, dim + 1, dtype=np.float64) ** -alpha
    basis = q * np.sqrt(spectrum / spectrum.sum())
    centres = q[:, -1] + centre_scale * (rng.normal(size=(clusters, dim)) @ basis.T)
    which = rng.integers(clusters, size=n)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 20000):
        rows = which[start : start + 20000]
        x = centres[rows] + noise_scale * (rng.normal(size=(len(rows), dim)) @ basis.T)
        out[start : start + len(rows)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out, which


def similarity_stats(x: np.ndarray, sample: int = 512, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(x), size=min(sample, len(x)), replace=False)
    v = x[rows].astype(np.float64)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    sims = v @ v.T
    np.fill_diagonal(sims, np.nan)
    ordered = -np.sort(-np.nan_to_num(sims, nan=-9.0), axis=1)
    centred = v - v.mean(axis=0)
    ev = np.linalg.svd(centred, compute_uv=False) ** 2
    return {
        "mean_pairwise": float(np.nanmean(sims)),
        "mean_top1": float(ordered[:, 0].mean()),
        "mean_top10": float(ordered[:, 9].mean()),
        "participation_ratio": float(ev.sum() ** 2 / (ev**2).sum()),
        "sample": len(rows),
    }


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    sims = queries @ base.T
    top = np.argpartition(-sims, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.array(samples) * 1000.0
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ChromaServer:
    """`chroma run` on 127.0.0.1 on a free port, in a temp folder."""

    def __init__(self, folder: Path) -> None:
        cli = Path(sys.executable).parent / "chroma"
        exe = str(cli) if cli.is_file() else shutil.which("chroma")
        if exe is None:
            raise RuntimeError("the `chroma` CLI is not installed")
        port = str(free_port())
        self.url = f"http://127.0.0.1:{port}"
        self.log = (folder / "server.log").open("wb")
        self.process = subprocess.Popen(
            [exe, "run", "--path", str(folder / "db"), "--host", "127.0.0.1", "--port", port],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/api/v2/heartbeat", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"chroma run did not start on {self.url}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def insert(index: ImageIndex, vectors: np.ndarray, model: str, batch: int) -> float:
    """Seconds to add ``vectors`` through the product path (id check + add), per ``batch``."""
    ids = [f"{i:064x}" for i in range(len(vectors))]
    labels = [LABELS[i % 4] for i in range(len(vectors))]
    started = time.perf_counter()
    for s in range(0, len(vectors), batch):
        index.add(
            ids[s : s + batch],
            vectors[s : s + batch],
            model=model,
            labels=labels[s : s + batch],
            sources=ids[s : s + batch],
        )
    return time.perf_counter() - started


def query_latencies(
    index: ImageIndex, base: np.ndarray, queries: np.ndarray, model: str, k: int
) -> dict[str, Any]:
    """Per-query latency of bare Chroma, the product and exact numpy; recall@k of both."""
    vote = SimilarityShareVote()
    exact = exact_topk(base, queries, k)
    truths = [{f"{i:064x}" for i in row} for row in exact]
    # each method in its own loop (after a warm-up), so none pays for another's cache misses
    bare_t: list[float] = []
    recall_bare: list[float] = []
    for q in queries[:5]:
        index.collection.query(query_embeddings=q[None, :], n_results=k)
    for q, truth in zip(queries, truths, strict=True):
        t0 = time.perf_counter()
        got = index.collection.query(
            query_embeddings=q[None, :], n_results=k, include=["distances", "metadatas"]
        )
        bare_t.append(time.perf_counter() - t0)
        recall_bare.append(len(truth & set(got["ids"][0])) / k)
    product_t: list[float] = []
    recall_product: list[float] = []
    for q in queries[:5]:
        index.query(q[None, :], k, model=model)
    for q, truth in zip(queries, truths, strict=True):
        t0 = time.perf_counter()
        neighbours: list[Neighbour] = index.query(q[None, :], k, model=model)[0]
        vote_dict(vote, neighbours, LABELS)
        product_t.append(time.perf_counter() - t0)
        recall_product.append(len(truth & {n.id for n in neighbours}) / k)
    numpy_t: list[float] = []
    # one BLAS thread: a matrix-vector product is memory-bound, and BLAS threads spinning
    # beside a busy `chroma run` process on 2 cores measured 10-100x slower
    with threadpool_limits(limits=1):
        for q in queries[:5]:
            exact_topk(base, q[None, :], k)
        for q in queries:
            t0 = time.perf_counter()
            exact_topk(base, q[None, :], k)
            numpy_t.append(time.perf_counter() - t0)
    bare, product, numpy_ = percentiles(bare_t), percentiles(product_t), percentiles(numpy_t)
    return {
        "queries": len(queries),
        "bare_chroma": bare,
        "product": product,
        "exact_numpy": numpy_,
        "recall_at_k": float(np.mean(recall_product)),
        "recall_at_k_bare": float(np.mean(recall_bare)),
        "product_over_bare_p50": product["p50_ms"] / bare["p50_ms"],
        "product_over_bare_p99": product["p99_ms"] / bare["p99_ms"],
        "bare_over_numpy_p50": bare["p50_ms"] / numpy_["p50_ms"],
    }


def embedding_rates(images: int, batch: int, device: str) -> dict[str, Any]:
    """Images/s of the tiny CLIP and of a random-weight ViT-B/32 CLIP (real cost)."""
    import torch
    from PIL import Image
    from tiny_models import make_tiny_clip
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    from agents.clip_model import ClipModel, load_clip, resolve_device

    rng = np.random.default_rng(0)
    pics = [
        Image.fromarray(rng.integers(0, 255, size=(256, 256, 3), dtype=np.uint8))
        for _ in range(images)
    ]
    out: dict[str, Any] = {"device": resolve_device(device), "batch": batch, "images": images}
    with tempfile.TemporaryDirectory() as tmp:
        tiny = load_clip(str(make_tiny_clip(Path(tmp) / "tiny")), device=device)
        vit = CLIPConfig(projection_dim=512)  # defaults are ViT-B/32 sizes
        dev = resolve_device(device)
        dtype = torch.float16 if dev.startswith("cuda") else torch.float32
        processor = CLIPProcessor.from_pretrained(Path(tmp) / "tiny")
        processor.image_processor.size = {"shortest_edge": 224}
        processor.image_processor.crop_size = {"height": 224, "width": 224}
        torch.manual_seed(0)
        big = ClipModel(
            name="vit-b32-random",
            model=CLIPModel(vit).to(dev, dtype=dtype).eval(),
            processor=processor,
            device=dev,
            dtype=dtype,
        )
        for name, clip in (("tiny", tiny), ("vit_b32_random_weights", big)):
            clip.embed_images(pics[:batch], batch_size=batch)  # warm-up
            t0 = time.perf_counter()
            vectors = clip.embed_images(pics, batch_size=batch)
            seconds = time.perf_counter() - t0
            out[name] = {"images_per_s": images / seconds, "dim": int(vectors.shape[1])}
    return out


def run_backend(
    name: str, store: ChromaStore, sizes: list[int], n_queries: int, k: int, batch: int
) -> list[dict[str, Any]]:
    results = []
    for size in sizes:
        base, queries = held_out_split(size, n_queries)
        model = f"bench/synthetic-{size}-{time.time_ns()}"
        index = store.index("bench", model, base.shape[1])
        seconds = insert(index, base, model, batch)
        row = {"backend": name, "size": size, "insert_s": seconds, "insert_per_s": size / seconds}
        row |= query_latencies(index, base, queries, model, k)
        store.client.delete_collection(index.name)
        results.append(row)
        print(
            f"  {name:8s} n={size:>7,d}  insert {size / seconds:8.0f}/s  "
            f"bare p50 {row['bare_chroma']['p50_ms']:.2f} ms p99 {row['bare_chroma']['p99_ms']:.2f}"
            f"  product p50 {row['product']['p50_ms']:.2f} ms "
            f"(x{row['product_over_bare_p50']:.2f} of bare)  numpy p50 "
            f"{row['exact_numpy']['p50_ms']:.2f} ms  recall@{k} {row['recall_at_k']:.4f}",
            flush=True,
        )
    return results


def held_out_split(size: int, n_queries: int) -> tuple[np.ndarray, np.ndarray]:
    """Base vectors and queries from the same clusters; the queries are not in the base."""
    both, _ = clustered_vectors(size + n_queries, seed=1)
    return both[:size], both[size:]


def sweep(size: int, n_queries: int, k: int, batch: int) -> list[dict[str, Any]]:
    """Build time and recall@k for several HNSW settings (embedded)."""
    settings = [
        {"max_neighbors": 16, "ef_construction": 100, "ef_search": 100},
        {"max_neighbors": 16, "ef_construction": 200, "ef_search": 128},
        {"max_neighbors": 32, "ef_construction": 200, "ef_search": 128},
        {"max_neighbors": 32, "ef_construction": 200, "ef_search": 256},
    ]
    base, queries = held_out_split(size, n_queries)
    out = []
    default = dict(store_module.DEFAULT_HNSW)
    try:
        for setting in settings:
            store_module.DEFAULT_HNSW.update(setting)
            with tempfile.TemporaryDirectory() as tmp:
                store = ChromaStore.open(index_dir=tmp)
                index = store.index("sweep", "m", base.shape[1])
                seconds = insert(index, base, "m", batch)
                got = query_latencies(index, base, queries, "m", k)
            row = setting | {
                "size": size,
                "insert_per_s": size / seconds,
                "recall_at_k": got["recall_at_k"],
                "bare_p50_ms": got["bare_chroma"]["p50_ms"],
            }
            print(f"  {row}", flush=True)
            out.append(row)
    finally:
        store_module.DEFAULT_HNSW.clear()
        store_module.DEFAULT_HNSW.update(default)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated index sizes")
    parser.add_argument("--backends", default="embedded,server")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--insert-batch", type=int, default=5000)
    parser.add_argument("--embed-images", type=int, default=64)
    parser.add_argument("--embed-batch", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-embed", action="store_true", help="skip the CLIP embedding rates")
    parser.add_argument("--sweep", action="store_true", help="HNSW settings sweep only")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/retrieval.json")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    started = time.perf_counter()
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "hnsw_defaults": dict(store_module.DEFAULT_HNSW),
        "k": args.k,
    }
    if args.sweep:
        print(f"HNSW sweep at n={sizes[0]:,}")
        result["sweep"] = sweep(sizes[0], args.queries, args.k, args.insert_batch)
        args.out = args.out.with_name("retrieval_sweep.json")
    else:
        synthetic = similarity_stats(clustered_vectors(20000, seed=1)[0])
        result["synthetic_stats"] = synthetic
        if PAPER_NPZ.is_file():
            study = np.load(PAPER_NPZ, allow_pickle=False)["embeddings"]
            result["study_stats"] = similarity_stats(study)
        print(
            "similarity structure:",
            json.dumps({k: v for k, v in result.items() if k.endswith("_stats")}),
        )
        if not args.no_embed:
            print("embedding rates ...", flush=True)
            result["embedding"] = embedding_rates(args.embed_images, args.embed_batch, args.device)
            print(" ", json.dumps(result["embedding"]), flush=True)
        rows: list[dict[str, Any]] = []
        with tempfile.TemporaryDirectory() as tmp:
            for backend in args.backends.split(","):
                if backend == "embedded":
                    store = ChromaStore.open(index_dir=Path(tmp) / "embedded")
                    rows += run_backend(
                        "embedded", store, sizes, args.queries, args.k, args.insert_batch
                    )
                elif backend == "server":
                    folder = Path(tmp) / "server"
                    folder.mkdir()
                    server = ChromaServer(folder)
                    try:
                        store = ChromaStore.open(chroma_url=server.url)
                        rows += run_backend(
                            "server", store, sizes, args.queries, args.k, args.insert_batch
                        )
                    finally:
                        server.stop()
        result["runs"] = rows
        if "embedding" in result and rows:
            insert_rate = min(r["insert_per_s"] for r in rows if r["backend"] == "embedded")
            for name in ("tiny", "vit_b32_random_weights"):
                rate = result["embedding"][name]["images_per_s"]
                result["embedding"][name]["embed_over_insert"] = rate / insert_rate
                print(
                    f"  {name}: embeds {rate:.0f} img/s = x{rate / insert_rate:.2f} of the "
                    f"slowest embedded insert rate ({insert_rate:.0f}/s)"
                )
    result["wall_s"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} in {result['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
