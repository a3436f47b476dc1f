"""Families of fusion on the study's two files: the select policy beside the trust policy and
the baselines, and what the selection costs.

Measured in one run, for Case 1 (zero-shot, no retrieval, no second looks) and Case 3 (first
looks, retrieval, second looks), 5-fold, seeds 0-4:
- the replay table: ``select`` (the default policy) and ``trust`` per seed and their mean;
  majority, the best single source, Dawid-Skene and stacking fitted on the same folds; every
  recorded source alone; the families ``select`` chose per seed and fold, with their inner-CV
  scores;
- fitting time: the seconds spent fitting the trust policy alone (before) and the select
  policy (after: the trust policy, the other families and their inner cross-validation), on
  the same folds in the same process;
- ``trustorch eval replay FILE --seeds 0-4 --json`` end to end in a fresh interpreter, with
  ``--policy trust`` and with the default ``select``: wall and CPU seconds, and their ratio
  (the selection must not make it more than 2x slower).

The files are read from ``$TRUSTORCH_PAPER_DATA`` (default ``../shared/data/paper``).

Usage:
  python bench/bench_replay_families.py          # writes bench/results/replay_families.json
  python bench/bench_replay_families.py --seeds 0 1 --json-out /tmp/families.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_replay import cli_run  # noqa: E402

from orchestrator.replay.cli import SUMMARY_KEYS  # noqa: E402
from orchestrator.replay.run import FitPolicy, policy_fitter, run_replay  # noqa: E402

PAPER_DIR = Path(os.environ.get("TRUSTORCH_PAPER_DATA", ROOT.parent / "shared/data/paper"))
FILES = {"case1": "case1_zero_shot.csv", "case3": "case3_trust_rag.csv"}


def timed_fitter(name: str, spent: list[float]) -> FitPolicy:
    """``policy_fitter(name)`` that adds each fit's wall seconds to ``spent``."""
    fit = policy_fitter(name)

    def run(*args: Any) -> Any:
        start = time.perf_counter()
        policy = fit(*args)
        spent.append(time.perf_counter() - start)
        return policy

    return run


def summary(report: dict[str, Any]) -> dict[str, float]:
    return {k: report[k] for k in SUMMARY_KEYS}


def mean_of(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


def replay_table(path: Path, seeds: list[int]) -> dict[str, Any]:
    """Per seed the select and trust policies' figures, the fold baselines' and the choices."""
    out: dict[str, Any] = {"per_seed": [], "fitting_s": {}}
    fitting: dict[str, list[float]] = {"trust": [], "select": []}
    for seed in seeds:
        reports = {
            name: run_replay(path, seed=seed, policy=name, fit_policy=timed_fitter(name, spent))
            for name, spent in fitting.items()
        }
        select = reports["select"]
        out["per_seed"].append(
            {
                "seed": seed,
                "select": summary(select),
                "trust": summary(reports["trust"]),
                "fold_baselines": {k: summary(v) for k, v in select["fold_baselines"].items()},
                "families_chosen": select["families_chosen"],
                "inner_cv": [d["selection"]["scores"] for d in select["fold_details"]],
            }
        )
        out["recorded_baselines"] = {k: summary(v) for k, v in select["baselines"].items()}
    per_seed = out["per_seed"]
    out["mean"] = {
        "select": mean_of([r["select"] for r in per_seed]),
        "trust": mean_of([r["trust"] for r in per_seed]),
        **{
            name: mean_of([r["fold_baselines"][name] for r in per_seed])
            for name in per_seed[0]["fold_baselines"]
        },
    }
    out["fitting_s"] = {
        "trust_alone": sum(fitting["trust"]),
        "select": sum(fitting["select"]),
        "fits": len(fitting["select"]),
        "ratio": sum(fitting["select"]) / sum(fitting["trust"]),
    }
    best = max(
        [
            *out["recorded_baselines"].values(),
            *(out["mean"][n] for n in per_seed[0]["fold_baselines"]),
        ],
        key=lambda r: r["accuracy"],
    )
    out["best_baseline_accuracy"] = best["accuracy"]
    return out


def cli_seconds(path: Path, seeds: str, policy: str) -> dict[str, Any]:
    """``trustorch eval replay`` in a fresh interpreter: wall and CPU seconds, mean accuracy."""
    run = cli_run(path, "--seeds", seeds, "--policy", policy)
    report = run.pop("report")
    return {
        **run,
        "accuracy": report["mean"]["accuracy"] if "mean" in report else report["accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--json-out", type=Path, default=ROOT / "bench/results/replay_families.json"
    )
    args = parser.parse_args()
    seeds_text = ",".join(str(s) for s in args.seeds)
    result: dict[str, Any] = {"seeds": args.seeds, "folds": 5, "files": {}}
    for name, file in FILES.items():
        path = PAPER_DIR / file
        if not path.is_file():
            sys.exit(f"recorded file not found: {path}")
        table = replay_table(path, args.seeds)
        cli = {p: cli_seconds(path, seeds_text, p) for p in ("trust", "select")}
        cli["ratio_wall"] = cli["select"]["wall_s"] / cli["trust"]["wall_s"]
        cli["ratio_cpu"] = cli["select"]["cpu_s"] / cli["trust"]["cpu_s"]
        result["files"][name] = {"file": str(path), **table, "cli": cli}
        mean, fit = table["mean"], table["fitting_s"]
        chosen: dict[str, int] = {}
        for row in table["per_seed"]:
            for family in row["families_chosen"]:
                chosen[family] = chosen.get(family, 0) + 1
        print(f"{name}: mean accuracy over seeds {seeds_text}")
        for row_name, row in mean.items():
            print(f"  {row_name:12s} {row['accuracy']:.4f}  ece {row['ece']:.3f}")
        for source, row in table["recorded_baselines"].items():
            print(f"  {source:12s} {row['accuracy']:.4f}  (recorded, alone)")
        print(
            f"  per seed (select): {[round(r['select']['accuracy'], 4) for r in table['per_seed']]}"
            f"; families chosen: {chosen}"
        )
        print(
            f"  fitting: trust alone {fit['trust_alone']:.2f} s, select {fit['select']:.2f} s "
            f"({fit['ratio']:.2f}x); CLI --seeds {seeds_text}: trust "
            f"{cli['trust']['wall_s']:.1f} s, select {cli['select']['wall_s']:.1f} s wall "
            f"({cli['ratio_wall']:.2f}x; CPU "
            f"{cli['ratio_cpu']:.2f}x)"
        )
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
