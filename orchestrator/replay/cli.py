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
    from orchestrator.replay.conformal import ConformalSettings

REPLAYED_POLICIES_LEAVE_OUT = ("llm",)
"""Policies replay cannot play (the llm policy would call a live model)."""


def _check_alphas(values: list[float] | None) -> list[float] | None:
    for value in values or []:
        if not 0.0 < value < 1.0:
            raise usage_error(f"must be in (0, 1), got {value}")
    return values


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
    alpha: Annotated[
        list[float] | None,
        typer.Option(
            "--alpha",
            help="Conformal prediction sets at this miscoverage (repeat it: --alpha 0.1 "
            "--alpha 0.05): coverage (overall, per class), mean set size, and the accuracy of "
            "answering only on singleton sets; calibrated on a quarter of each training fold.",
            callback=_check_alphas,
        ),
    ] = None,
    mondrian: Annotated[
        bool,
        typer.Option(
            "--mondrian",
            help="With --alpha: calibrate each class on its own rows (coverage per class).",
        ),
    ] = False,
    conformal_score: Annotated[
        str,
        typer.Option(
            "--conformal-score",
            help="With --alpha: lac (1 - p(label), smallest sets) or aps (adaptive sets).",
        ),
    ] = "lac",
    tie_break: Annotated[
        bool,
        typer.Option(
            "--tie-break/--no-tie-break",
            help="With --alpha: break ties between equal scores at random, by a hash of each "
            "row's id (coverage 1 - alpha on average); --no-tie-break: MAPIE's deterministic "
            "sets, which cover more when many rows share a distribution.",
        ),
    ] = True,
    json_out: JsonOption = False,
) -> None:
    """Replay recorded agents k-fold: fit on the training folds, decide the held-out rows.

    First look = <agent>_initial_* columns, retrieval = rag_* (rag_scores_json),
    re-evaluation = <agent>_* columns, played only when the policy asks. The rows are
    decided on arrays, with the decisions the graph makes (--graph runs the graph itself;
    --trace writes each decision's trace).

    Examples:

      trustorch eval replay study:case3 --folds 5 --seed 0 --json

      trustorch eval replay study:case3 --seeds 0-4

      trustorch eval replay study:case3 --policy single:rag --max-rounds 1

      trustorch eval replay study:case3 --trust-threshold 0.9 --seed 3

      trustorch eval replay study:case3 --save-policy trust-policy.json

      trustorch eval replay study:case3 --trace decisions.jsonl

      trustorch eval replay study:case3 --seeds 0-4 --alpha 0.1 --alpha 0.05

      trustorch eval replay study:case3 --alpha 0.1 --save-policy policy.json

    --save-policy fits the trust policy once more on every row (the cross-validated numbers
    above are its estimate on unseen rows) and saves its settings, not the profiles: run with
    the same agent names (and the retriever named like the file's, e.g. rag=retrieval). With
    --alpha it fits on three quarters of the rows and saves the conformal calibration of the
    last quarter with it (the first --alpha is the saved default).
    """
    from core.task import load_task
    from eval.recorded.records import read_records, second_looks_as_sources
    from orchestrator.replay.run import is_decisions_file, policy_fitter, run_replay

    if save_policy is not None and policy not in ("trust", "select"):
        raise usage_error("--save-policy needs --policy trust or select")
    options = {}
    if trust_threshold is not None:
        if policy not in ("trust", "select"):
            raise usage_error("--trust-threshold needs --policy trust or select")
        options["trust_threshold"] = trust_threshold
    conformal = _conformal_settings(alpha, mondrian, conformal_score, tie_break)
    if is_decisions_file(file):
        _fit_on_decisions(file, task, policy, policy_fitter(policy, **options), save_policy, seed)
        return
    the_task = load_task(task) if task else None
    seed_list = parse_seeds(seeds) if seeds is not None else [seed]
    records = second_looks_as_sources(read_records(file, task=the_task))
    for note in [*records.label_notes, *records.notes]:
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
                    conformal=conformal,
                )
            )
    report = reports[0] if len(reports) == 1 else seeds_report(reports)
    report["notes"] = [*records.label_notes, *records.notes]
    report["invalid_predictions"] = dict(records.invalid_predictions)
    if trace is not None:
        report["trace"] = _write_trace(trace, traced)
    if save_policy is not None:
        report["saved_policy"] = _save_policy(
            save_policy,
            records,
            policy_fitter(policy, **options),
            seed_list[0],
            conformal=conformal,
            task=the_task,
            max_rounds=max_rounds,
        )
        if conformal is not None:
            report["conformal_calibration_rows"] = _calibration_rows(save_policy)
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
    if conformal is not None:
        _print_conformal(report, file.name)
    if save_policy is not None and conformal is None:
        print(f"{policy} policy fitted on all {n_rows} rows saved to {save_policy}")
    elif save_policy is not None:
        calibrated = report["conformal_calibration_rows"]
        print(
            f"{policy} policy fitted on {n_rows - calibrated} rows, its conformal sets "
            f"calibrated on the other {calibrated}, saved to {save_policy}"
        )
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
        **({"conformal": _conformal_mean(reports)} if "conformal" in first else {}),
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


def _fit_on_decisions(
    file: Path, task: str | None, policy: str, fit: Any, save_policy: Path | None, seed: int
) -> None:
    """A labelled ``trustorch run`` output fits the policy on every decision (first looks, the
    retrieval vote, second looks where they happened); it cannot be replayed (the second looks
    that did not happen are missing), so nothing else is reported."""
    from core.task import load_task
    from eval.recorded.records import read_records
    from orchestrator.replay.run import refuse_decisions_file, replay_columns

    if save_policy is None:
        refuse_decisions_file(file)
    records = read_records(file, task=load_task(task) if task else None)
    columns, retrieval = replay_columns(records)
    _save_policy(save_policy, records, fit, seed)
    looks = ", ".join(
        f"{c.agent} ({len(records.for_agent(c.first))} first looks, "
        f"{len(records.for_agent(c.reeval)) if c.reeval else 0} second)"
        for c in columns
    )
    vote = f"; the vote of '{retrieval}'" if retrieval else ""
    print(
        f"{policy} policy fitted on the {len(records.ids())} labelled decisions of {file.name} "
        f"({looks}{vote}), saved to {save_policy}"
    )


def _save_policy(
    path: Path,
    records: Any,
    fit: Any,
    seed: int,
    *,
    conformal: ConformalSettings | None = None,
    task: Any = None,
    max_rounds: int = 2,
) -> str:
    """Fit on every row of ``records`` (with ``conformal``: on three quarters of them, the
    conformal rule calibrated on the rest) and save the settings; the path written."""
    from orchestrator.policies.trust_fit import save_trust_policy
    from orchestrator.replay.run import replay_columns

    if conformal is not None:
        return _save_conformal_policy(path, records, fit, seed, conformal, task, max_rounds)
    columns, retrieval = replay_columns(records)
    ids = records.ids()
    fitted = fit(records, columns, ids, retrieval, seed)
    fitted_on = {"file": records.path, "sha256": records.sha256, "rows": len(ids), "seed": seed}
    save_trust_policy(path, fitted, fitted_on=fitted_on)
    return str(path)


# --- conformal prediction sets (--alpha) ---


def _conformal_settings(
    alphas: list[float] | None, mondrian: bool, score: str, tie_break: bool
) -> ConformalSettings | None:
    """The sets asked for, None without --alpha; a usage error for options that need it."""
    from eval.conformal import SCORES
    from orchestrator.replay.conformal import ConformalSettings

    if score not in SCORES:
        raise usage_error(
            f"must be one of {', '.join(SCORES)}, got {score!r}", option="--conformal-score"
        )
    if not alphas:
        if mondrian or score != "lac" or not tie_break:
            raise usage_error("--mondrian, --conformal-score and --no-tie-break need --alpha")
        return None
    return ConformalSettings(
        alphas=tuple(alphas), score=score, mondrian=mondrian, randomized=tie_break
    )


def _conformal_mean(reports: list[dict[str, Any]]) -> dict[str, Any]:
    from orchestrator.replay.conformal import conformal_seeds_mean

    first = reports[0]["conformal"]
    settings = {k: first[k] for k in ("score", "mondrian", "randomized", "calibration")}
    return {**settings, "mean": conformal_seeds_mean(reports)}


def _print_conformal(report: dict[str, Any], name: str) -> None:
    block = report["conformal"]
    levels = block["levels"] if "levels" in block else block["mean"]
    which = "" if "levels" in block else ", mean over seeds"
    rows = []
    for lv in levels:
        per_class = [v for v in lv["coverage_per_class"].values() if v is not None]
        rows.append(
            [
                lv["alpha"],
                lv["target_coverage"],
                lv["coverage"],
                min(per_class) if per_class else None,
                lv["mean_set_size"],
                lv["empty_rate"],
                lv["singleton_rate"],
                lv["singleton_accuracy"],
            ]
        )
    mode = "Mondrian " if block["mondrian"] else ""
    print_table(
        f"Conformal sets of {name} ({mode}{block['score']}{which}): answer on singleton sets",
        [
            "alpha",
            "target",
            "coverage",
            "min class",
            "size",
            "empty",
            "answered",
            "acc answered",
        ],
        rows,
    )


def _calibration_rows(path: Path) -> int:
    from orchestrator.policies.policy_file import read_policy_file

    block = read_policy_file(path).conformal
    return int(block.calibrated_on["rows"]) if block is not None else 0


def _save_conformal_policy(
    path: Path,
    records: Any,
    fit: Any,
    seed: int,
    conformal: ConformalSettings,
    task: Any,
    max_rounds: int,
) -> str:
    from orchestrator.policies.conformal import ConformalRule
    from orchestrator.policies.trust_fit import save_trust_policy
    from orchestrator.replay.run import ReplaySetup, conformal_calibration

    setup = ReplaySetup.of(records.path, records, task)
    fold = conformal_calibration(setup, fit, [], seed, conformal.calibration_fraction, max_rounds)
    sets = conformal.estimator(conformal.alphas[0], seed)
    rule = ConformalRule(
        sets=sets.fit(fold.calibration, fold.calibration_labels), labels=tuple(setup.task.labels)
    )
    fitted_on = {
        "file": records.path,
        "sha256": records.sha256,
        "rows": len(fold.fit_ids),
        "seed": seed,
    }
    block = rule.to_block(
        rows=len(fold.calibration_ids),
        fraction=conformal.calibration_fraction,
        max_rounds=max_rounds,
        seed=seed,
    )
    save_trust_policy(path, fold.policy, fitted_on=fitted_on, conformal=block)
    return str(path)
