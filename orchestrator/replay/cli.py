"""``trustorch eval replay``: the offline replay benchmark of the graph on recorded answers."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from core.cli import (
    JsonOption,
    at_least,
    checked_by,
    emit_json,
    number_in,
    output_file,
    print_table,
    progress_bar,
    usage_error,
)
from core.errors import InputError
from eval.metric_table import Report, metrics_in
from orchestrator.policies.registry import check_policy_name, policy_names

if TYPE_CHECKING:
    from orchestrator.decision import Decision

REPLAYED_POLICIES_LEAVE_OUT = ("llm",)
"""Policies replay cannot play (the llm policy would call a live model)."""


def replay(
    file: Annotated[Path, typer.Argument(help="Recorded wide/long file (the study's case3 CSV).")],
    folds: Annotated[
        int,
        typer.Option("--folds", help="Cross-validation folds over rows.", callback=at_least(2)),
    ] = 5,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of the fold split.", callback=at_least(0))
    ] = 0,
    seeds: Annotated[
        str | None,
        typer.Option(
            "--seeds",
            help="Several fold splits, e.g. 0-4 or 0,3,7: per-seed figures and their mean "
            "(replaces --seed).",
            callback=checked_by(lambda text: parse_seeds(text)),
        ),
    ] = None,
    policy: Annotated[
        str,
        typer.Option(
            "--policy",
            help="Fusion policy: "
            f"{', '.join(n for n in policy_names(fitted_on_records=True) if n != 'llm')} "
            "(select: the family that inner cross-validation on the training folds supports).",
            callback=checked_by(
                lambda name: check_policy_name(
                    name, excluded=REPLAYED_POLICIES_LEAVE_OUT, fitted_on_records=True
                )
            ),
        ),
    ] = "select",
    max_rounds: Annotated[
        int,
        typer.Option(
            "--max-rounds", help="Rounds per image (1 = no re-evaluation).", callback=at_least(1)
        ),
    ] = 2,
    task: Annotated[
        str | None,
        typer.Option("--task", help="Task preset or JSON file (default: labels of the file)."),
    ] = None,
    trust_threshold: Annotated[
        float | None,
        typer.Option(
            "--trust-threshold",
            help="trust policy: re-evaluate below this fused confidence instead of the "
            "threshold fitted on the training folds.",
            callback=number_in(0.0, 1.0),
        ),
    ] = None,
    save_policy: Annotated[
        Path | None,
        typer.Option(
            "--save-policy",
            help="trust or select policy: also fit it on ALL rows and write its settings "
            "(weights, thresholds; for select, the family chosen and its inner-CV scores) to "
            "this JSON file, for trustorch run --policy-file.",
            callback=output_file("the policy file"),
        ),
    ] = None,
    graph: Annotated[
        bool,
        typer.Option(
            "--graph",
            help="Run every row through the LangGraph graph itself (the same decisions as "
            "the default array path, much slower).",
        ),
    ] = False,
    trace: Annotated[
        Path | None,
        typer.Option(
            "--trace",
            help="Write every held-out decision with its whole trace (answers, assessments, "
            "routes) to this JSONL file, one line per row and seed; runs the graph.",
            callback=output_file("the trace"),
        ),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Replay recorded agents with the graph's rules, k-fold: fit on the training folds,
    decide the held-out rows.

    First look = <agent>_initial_* columns, retrieval = rag_* (rag_scores_json),
    re-evaluation = <agent>_* columns, played only when the policy asks. The rows are
    decided on arrays, with the decisions the graph makes (--graph runs the graph itself;
    --trace writes each decision's trace).

    Examples:

        trustorch eval replay ../shared/data/paper/case3_trust_rag.csv --folds 5 --seed 0 --json

        trustorch eval replay case3_trust_rag.csv --seeds 0-4

        trustorch eval replay case3_trust_rag.csv --policy single:rag --max-rounds 1

        trustorch eval replay case3_trust_rag.csv --trust-threshold 0.9 --seed 3

        trustorch eval replay case3_trust_rag.csv --save-policy trust-policy.json

        trustorch eval replay case3_trust_rag.csv --trace decisions.jsonl

    --save-policy fits the trust policy once more on every row (the cross-validated numbers
    above are its estimate on unseen rows) and saves its settings, not the profiles: run with
    the same agent names (and the retriever named like the file's, e.g. rag=retrieval).
    """
    from core.task import load_task
    from eval.recorded.records import read_records
    from orchestrator.replay.run import policy_fitter, refuse_decisions_file, run_replay

    if save_policy is not None and policy not in ("trust", "select"):
        raise usage_error("--save-policy needs --policy trust or select")
    options = {}
    if trust_threshold is not None:
        if policy not in ("trust", "select"):
            raise usage_error("--trust-threshold needs --policy trust or select")
        options["trust_threshold"] = trust_threshold
    refuse_decisions_file(file)
    the_task = load_task(task) if task else None
    seed_list = parse_seeds(seeds) if seeds is not None else [seed]
    records = read_records(file, task=the_task)
    for note in records.label_notes:
        print(f"note: {note}", file=sys.stderr)
    n_rows = len(records.ids())
    reports = []
    traced: list[str] = []
    with progress_bar(disable=json_out) as bar:
        for one_seed in seed_list:
            job = bar.add_task(f"replay {file.name} (seed {one_seed})", total=n_rows)
            reports.append(
                run_replay(
                    file,
                    folds=folds,
                    seed=one_seed,
                    policy=policy,
                    max_rounds=max_rounds,
                    task=the_task,
                    fit_policy=policy_fitter(policy, **options),
                    on_image=lambda job=job: bar.advance(job),
                    engine="graph" if graph else "auto",
                    on_decision=None if trace is None else _trace_line(traced, one_seed),
                    records=records,
                )
            )
    report = reports[0] if len(reports) == 1 else seeds_report(reports)
    if trace is not None:
        report["trace"] = _write_trace(trace, traced)
    if save_policy is not None:
        report["saved_policy"] = _save_policy(
            save_policy, records, policy_fitter(policy, **options), seed_list[0]
        )
    if json_out:
        emit_json(report)
        return
    if len(reports) == 1:
        rows = [[policy, *(report[k] for k in SUMMARY_KEYS)]]
    else:
        rows = [[f"{policy} seed {r['seed']}", *(r[k] for k in SUMMARY_KEYS)] for r in reports]
        rows.append([f"{policy} mean", *(report["mean"][k] for k in SUMMARY_KEYS)])
    rows += fold_baseline_rows(report)
    rows += [[name, *(b[k] for k in SUMMARY_KEYS)] for name, b in report["baselines"].items()]
    which = f"seed {seed_list[0]}" if len(seed_list) == 1 else f"seeds {seeds}"
    print_table(
        f"Replay of {file.name}: {folds} folds, {which}, ECE with {reports[0]['ece_bins']} bins",
        ["source", *SUMMARY_KEYS],
        rows,
    )
    print_families_chosen(report)
    if save_policy is not None:
        print(f"{policy} policy fitted on all {n_rows} rows saved to {save_policy}")
    if trace is not None:
        print(f"{len(traced)} decisions with their traces written to {trace}")


SUMMARY_KEYS = (
    "accuracy",
    "macro_f1",
    *(m.key for m in metrics_in(Report.BRIEF)),
    "reeval_rate",
    "vlm_calls_per_image",
)


def _trace_line(lines: list[str], seed: int) -> Callable[[Decision], None]:
    """Appends each decision, with the seed of its fold split, to ``lines`` as JSON."""

    def add(decision: Decision) -> None:
        lines.append(json.dumps({"seed": seed, **decision.to_dict()}, ensure_ascii=False))

    return add


def _write_trace(path: Path, lines: list[str]) -> str:
    from core.files import write_text_atomically

    write_text_atomically(path, "".join(f"{line}\n" for line in lines), what="the trace")
    return str(path)


def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` -> [0, 1, 2, 3, 4]; ``"0,3,7"`` -> [0, 3, 7]; InputError otherwise."""
    try:
        if "-" in text.strip().lstrip("-"):
            first, last = (int(part) for part in text.split("-", 1))
            out = list(range(first, last + 1))
        else:
            out = [int(part) for part in text.split(",")]
    except ValueError:
        out = []
    if not out or len(set(out)) != len(out) or min(out) < 0:
        raise InputError(f"--seeds must be a range like 0-4 or a list like 0,3,7, got {text!r}")
    return out


def seeds_report(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Several seeds' replay reports: each under ``per_seed``, the summary keys' means under
    ``mean``; the file, policy, folds and the (seed-independent) baselines once."""
    first = reports[0]
    return {
        "file": first["file"],
        "sha256": first["sha256"],
        "policy": first["policy"],
        "folds": first["folds"],
        "max_rounds": first["max_rounds"],
        "seeds": [r["seed"] for r in reports],
        "mean": {k: sum(r[k] for r in reports) / len(reports) for k in SUMMARY_KEYS},
        "per_seed": reports,
        "baselines": first["baselines"],
        **fold_baselines_over_seeds(reports),
    }


def fold_baselines_over_seeds(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Each fold baseline's summary keys averaged over the seeds' reports, and the families
    the select policy chose, per seed and fold."""
    names = list(reports[0].get("fold_baselines", {}))
    out: dict[str, Any] = {
        "fold_baselines": {
            name: {
                k: sum(r["fold_baselines"][name][k] for r in reports) / len(reports)
                for k in SUMMARY_KEYS
            }
            for name in names
        }
    }
    if any("families_chosen" in r for r in reports):
        out["families_chosen"] = [r.get("families_chosen", []) for r in reports]
    return out


def fold_baseline_rows(report: dict[str, Any]) -> list[list[Any]]:
    """Table rows of the baselines fitted on the policy's folds (their mean over seeds)."""
    return [
        [name, *(b[k] for k in SUMMARY_KEYS)]
        for name, b in report.get("fold_baselines", {}).items()
    ]


def print_families_chosen(report: dict[str, Any]) -> None:
    """One line: how often the select policy chose each family over the folds."""
    from collections import Counter

    chosen = report.get("families_chosen")
    if not chosen:
        return
    flat = [f for per_seed in chosen for f in per_seed] if isinstance(chosen[0], list) else chosen
    counts = ", ".join(f"{family} {n}" for family, n in Counter(flat).most_common())
    print(f"families chosen over {len(flat)} fold(s): {counts}")


def _save_policy(path: Path, records: Any, fit: Any, seed: int) -> str:
    """Fit on every row of ``records`` and save the settings; the path written."""
    from orchestrator.policies.trust_fit import save_trust_policy
    from orchestrator.replay.run import replay_columns

    columns, retrieval = replay_columns(records)
    ids = records.ids()
    fitted = fit(records, columns, ids, retrieval, seed)
    fitted_on = {"file": records.path, "sha256": records.sha256, "rows": len(ids), "seed": seed}
    save_trust_policy(path, fitted, fitted_on=fitted_on)
    return str(path)
