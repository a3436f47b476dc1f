"""Conformal prediction sets of ``eval replay --alpha``: coverage and set size per alpha.

For each shared study file (Case 3 and Case 1, ``$TRUSTORCH_PAPER_DATA``, default
``../shared/data/paper``), each policy (default: ``select``, the replay's default, and
``trust``) and each seed (default 0-4), the replay's 5-fold split; in each
training fold the policy is fitted on three quarters of the rows and calibrates the sets on the
last quarter (``orchestrator.replay.conformal``), and the held-out fold's sets are scored.
Several set rules are read from the same fitted folds: the default (LAC with tie breaks), the
deterministic rule (MAPIE's, ``--no-tie-break``), Mondrian and APS. Reported per file, rule and
alpha: coverage (mean over seeds, each seed's, the worst class of the mean per-class coverage),
mean set size, the fraction answered by the singleton rule and its accuracy, and whether the
issue's targets hold (coverage within 2.5 points of 1 - alpha; on Case 3 a mean set size at
alpha 0.05 of at most 1.15). Also the replay's wall time with and without the sets.

Usage:
  python bench/bench_conformal.py                     # writes bench/results/conformal.json
  python bench/bench_conformal.py --seeds 0-9 --alpha 0.2 --alpha 0.1 --json-out /tmp/c.json
  python bench/bench_conformal.py --policy trust
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eval.recorded.records import read_records  # noqa: E402
from orchestrator.replay.cli import parse_seeds  # noqa: E402
from orchestrator.replay.conformal import (  # noqa: E402
    CALIBRATION_FRACTION,
    ConformalSettings,
    conformal_report,
)
from orchestrator.replay.run import (  # noqa: E402
    ReplaySetup,
    conformal_calibration,
    policy_fitter,
    replay_folds,
    run_replay,
)

PAPER_DIR = Path(os.environ.get("TRUSTORCH_PAPER_DATA", ROOT.parent / "shared/data/paper"))
FILES = {"case3": PAPER_DIR / "case3_trust_rag.csv", "case1": PAPER_DIR / "case1_zero_shot.csv"}
RULES = {
    "lac": {"score": "lac"},
    "lac-deterministic": {"score": "lac", "randomized": False},
    "lac-mondrian": {"score": "lac", "mondrian": True},
    "aps": {"score": "aps"},
}
COVERAGE_TOLERANCE = 0.025
MAX_SET_SIZE_CASE3 = 1.15


def _mean_known(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def per_file(
    name: str, path: Path, policy: str, seeds: list[int], alphas: tuple[float, ...]
) -> dict[str, Any]:
    records = read_records(path)
    setup = ReplaySetup.of(path, records)
    fit = policy_fitter(policy)
    folds_by_seed = {
        seed: [
            conformal_calibration(setup, fit, held, seed, CALIBRATION_FRACTION, 2)
            for held in replay_folds(setup.images, 5, seed)
        ]
        for seed in seeds
    }
    rules: dict[str, Any] = {}
    for rule, options in RULES.items():
        settings = ConformalSettings(alphas=alphas, **options)
        reports = [
            conformal_report(folds_by_seed[s], setup.task.labels, settings, seed=s) for s in seeds
        ]
        levels = []
        for i, alpha in enumerate(settings.alphas):
            per_seed = [r["levels"][i] for r in reports]
            coverage = [lv["coverage"] for lv in per_seed]
            per_class = {
                c: float(np.mean([lv["coverage_per_class"][c] for lv in per_seed]))
                for c in per_seed[0]["coverage_per_class"]
            }
            mean_size = float(np.mean([lv["mean_set_size"] for lv in per_seed]))
            entry = {
                "alpha": alpha,
                "target_coverage": 1 - alpha,
                "coverage_mean": float(np.mean(coverage)),
                "coverage_per_seed": coverage,
                "coverage_per_class_mean": per_class,
                "mean_set_size": mean_size,
                "set_size_per_seed": [lv["mean_set_size"] for lv in per_seed],
                "empty_rate": float(np.mean([lv["empty_rate"] for lv in per_seed])),
                "answered": float(np.mean([lv["singleton_rate"] for lv in per_seed])),
                "answered_accuracy": _mean_known([lv["singleton_accuracy"] for lv in per_seed]),
                "coverage_within_target": abs(float(np.mean(coverage)) - (1 - alpha))
                <= COVERAGE_TOLERANCE,
            }
            if name == "case3" and alpha == 0.05:
                entry["set_size_within_target"] = mean_size <= MAX_SET_SIZE_CASE3
            levels.append(entry)
        rules[rule] = levels
    started = time.perf_counter()
    plain = [run_replay(path, seed=s, policy=policy, records=records) for s in seeds]
    plain_wall = time.perf_counter() - started
    started = time.perf_counter()
    for s in seeds:
        run_replay(
            path, seed=s, policy=policy, records=records, conformal=ConformalSettings(alphas=alphas)
        )
    conformal_wall = time.perf_counter() - started
    return {
        "file": str(path),
        "sha256": records.sha256,
        "rows": len(records.ids()),
        "replay_accuracy_mean": float(np.mean([r["accuracy"] for r in plain])),
        "rules": rules,
        "replay_wall_s": {"without_sets": plain_wall, "with_sets": conformal_wall},
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("--alpha", type=float, action="append", dest="alphas")
    parser.add_argument("--policy", action="append", dest="policies")
    parser.add_argument("--json-out", type=Path, default=ROOT / "bench/results/conformal.json")
    args = parser.parse_args()
    seeds = parse_seeds(args.seeds)
    alphas = tuple(args.alphas or (0.1, 0.05))
    policies = args.policies or ["select", "trust"]
    out = {
        "seeds": seeds,
        "calibration_fraction": CALIBRATION_FRACTION,
        "policies": {
            policy: {
                name: per_file(name, path, policy, seeds, alphas) for name, path in FILES.items()
            }
            for policy in policies
        },
    }
    for policy, files in out["policies"].items():
        report(policy, files, args.seeds)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"written to {args.json_out}")


def report(policy: str, files: dict[str, Any], seeds: str) -> None:
    for name, result in files.items():
        for rule, levels in result["rules"].items():
            for lv in levels:
                marks = "ok" if lv["coverage_within_target"] else "MISS"
                if "set_size_within_target" in lv:
                    marks += " size " + ("ok" if lv["set_size_within_target"] else "MISS")
                worst = min(lv["coverage_per_class_mean"].values())
                print(
                    f"{policy:6} {name:6} {rule:18} alpha {lv['alpha']:<5g} coverage "
                    f"{lv['coverage_mean']:.4f} (worst class {worst:.3f}) size "
                    f"{lv['mean_set_size']:.3f} answered {lv['answered']:.3f} at accuracy "
                    f"{_fmt(lv['answered_accuracy'])}  {marks}"
                )
        wall = result["replay_wall_s"]
        print(
            f"{policy:6} {name:6} replay of seeds {seeds} (accuracy "
            f"{result['replay_accuracy_mean']:.4f}): {wall['without_sets']:.1f} s without "
            f"sets, {wall['with_sets']:.1f} s with them"
        )


if __name__ == "__main__":
    main()
