"""Replay throughput: ``eval replay`` on 10,000 rows resampled from Case 3, arrays vs the graph.

Measured in one run, after a warm-up replay of the 160 study rows on each engine (so neither
pays for importing its libraries):
- the product: ``run_replay`` with its default engine (the trust policy on arrays), on every
  resampled row, 5-fold (fitting on the training folds included), in images per second;
- the bare baseline: the same replay through the LangGraph graph (``engine="graph"``), on the
  first ``--graph-rows`` rows only (its time per image is what a whole run would take per
  image, fitting included); the arrays path on those same rows too, and whether both give the
  same report;
- the fitting alone (the five folds' trust policies), the part of any replay that is not
  deciding;
- the CLI end to end: ``trustorch eval replay FILE --json`` in a fresh interpreter (start-up,
  reading the file, fitting, deciding, the report).

Wall and CPU seconds are both given: on a shared machine the wall clock waits for other work.

The study's file is read from ``$TRUSTORCH_PAPER_DATA`` (default ``../shared/data/paper``).

Usage:
  python bench/bench_replay.py                      # writes bench/results/replay.json
  python bench/bench_replay.py --rows 2000 --graph-rows 200 --json-out /tmp/replay.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eval.recorded.records import read_records  # noqa: E402
from orchestrator.replay.run import ReplaySetup, policy_fitter, replay_folds, run_replay  # noqa: E402

PAPER_DIR = Path(os.environ.get("TRUSTORCH_PAPER_DATA", ROOT.parent / "shared/data/paper"))
CASE3 = PAPER_DIR / "case3_trust_rag.csv"


def resample_rows(source: Path, rows: int, seed: int, out: Path) -> Path:
    """``rows`` rows drawn with replacement from ``source``, each with an id of its own."""
    with source.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        found, fields = list(reader), list(reader.fieldnames or [])
    rng = random.Random(seed)
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for i in range(rows):
            row = dict(rng.choice(found))
            row["id"] = f"r{i:06d}-{row['id']}"
            writer.writerow(row)
    return out


def timed(work: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, wall seconds, CPU seconds of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def replay_figures(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k != "engine"}


def cli_run(path: Path, *options: str) -> dict[str, Any]:
    """``trustorch eval replay PATH OPTIONS --json`` in a fresh interpreter: wall and CPU
    seconds, its report."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [
            *(sys.executable, "-c", "from orchestrator.cli import entry; entry()"),
            *("eval", "replay", str(path), *options, "--json"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "report": json.loads(done.stdout)}


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    full = resample_rows(args.file, args.rows, args.seed, workdir / f"case3_{args.rows}.csv")
    subset = resample_rows(args.file, args.graph_rows, args.seed, workdir / "case3_subset.csv")
    records = read_records(full)
    n = len(records.ids())
    for engine in ("auto", "graph"):  # warm-up: every library either engine imports
        run_replay(args.file, folds=2, seed=0, engine=engine)

    arrays, arrays_wall, arrays_cpu = timed(
        lambda: run_replay(full, folds=args.folds, seed=0, records=records)
    )

    setup = ReplaySetup.of(full, records)
    fit = policy_fitter("trust")

    def fit_folds() -> None:
        for held in replay_folds(setup.images, args.folds, 0):
            held_set = set(held)
            train = [li.extra["id"] for i, li in enumerate(setup.images) if i not in held_set]
            fit(records, setup.columns, train, setup.retrieval, 0)

    _, fit_wall, fit_cpu = timed(fit_folds)

    small = read_records(subset)
    small_arrays, small_arrays_wall, small_arrays_cpu = timed(
        lambda: run_replay(subset, folds=args.folds, seed=0, records=small)
    )
    graph, graph_wall, graph_cpu = timed(
        lambda: run_replay(subset, folds=args.folds, seed=0, records=small, engine="graph")
    )
    m = len(small.ids())
    cli = cli_run(full, "--folds", str(args.folds))
    product = n / arrays_wall
    bare = m / graph_wall
    return {
        "file": str(args.file),
        "rows": n,
        "folds": args.folds,
        "resample_seed": args.seed,
        "arrays": {
            "engine": arrays["engine"],
            "wall_s": arrays_wall,
            "cpu_s": arrays_cpu,
            "images_per_s": product,
            "images_per_cpu_s": n / arrays_cpu,
            "accuracy": arrays["accuracy"],
            "reeval_rate": arrays["reeval_rate"],
        },
        "fitting_only": {"wall_s": fit_wall, "cpu_s": fit_cpu, "images_per_s": n / fit_wall},
        "graph_subset": {
            "rows": m,
            "engine": graph["engine"],
            "wall_s": graph_wall,
            "cpu_s": graph_cpu,
            "images_per_s": bare,
            "images_per_cpu_s": m / graph_cpu,
            "extrapolated_s_for_all_rows": graph_wall / m * n,
        },
        "arrays_subset": {
            "rows": m,
            "wall_s": small_arrays_wall,
            "cpu_s": small_arrays_cpu,
            "images_per_s": m / small_arrays_wall,
            "same_figures_as_graph": replay_figures(small_arrays) == replay_figures(graph),
        },
        "cli": {
            "wall_s": cli["wall_s"],
            "cpu_s": cli["cpu_s"],
            "images_per_s": n / cli["wall_s"],
            "images_per_cpu_s": n / cli["cpu_s"],
            "same_figures_as_in_process": replay_figures(cli["report"]) == replay_figures(arrays),
        },
        "ratio_arrays_over_graph_images_per_s": product / bare,
        "target_images_per_s": 300,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=CASE3)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--graph-rows", type=int, default=500)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="seed of the resampling")
    parser.add_argument("--json-out", type=Path, default=ROOT / "bench/results/replay.json")
    args = parser.parse_args()
    if not args.file.is_file():
        sys.exit(f"recorded file not found: {args.file}")
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(args, Path(tmp))
    a, g, c = result["arrays"], result["graph_subset"], result["cli"]
    print(
        f"eval replay, {result['rows']} rows, {result['folds']} folds: arrays "
        f"{a['images_per_s']:.0f} images/s ({a['wall_s']:.1f} s wall, {a['cpu_s']:.1f} s CPU)"
    )
    print(
        f"  graph (bare baseline) on {g['rows']} rows: {g['images_per_s']:.0f} images/s "
        f"(~{g['extrapolated_s_for_all_rows']:.0f} s for all rows); "
        f"ratio {result['ratio_arrays_over_graph_images_per_s']:.1f}x; same figures on the "
        f"subset: {result['arrays_subset']['same_figures_as_graph']}"
    )
    print(
        f"  fitting alone: {result['fitting_only']['wall_s']:.1f} s; CLI end to end: "
        f"{c['images_per_s']:.0f} images/s ({c['wall_s']:.1f} s wall, {c['cpu_s']:.1f} s CPU)"
    )
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
