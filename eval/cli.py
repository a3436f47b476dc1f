"""``trustorch eval``: calibration evaluation and trust profiles of recorded predictions."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from core.cli import (
    JsonOption,
    at_least,
    checked_by,
    emit_json,
    number_in,
    one_of,
    output_dir,
    output_file,
    print_table,
    progress_bar,
    stdout_console,
)
from core.errors import InputError
from eval.recorded.records import (
    DEFAULT_TRUTH_COLUMN,
    RecordSet,
    read_records,
    second_looks_as_sources,
)
from eval.retrieval_cli import retrieval
from eval.run_report.cli import report

app = typer.Typer(
    help="Offline evaluation: calibration, trust profiles, retrieval, replay.", no_args_is_help=True
)

FileArg = Annotated[
    Path,
    typer.Argument(
        help="Recorded labelled predictions: wide CSV (<agent>_pred, <agent>_conf) or long "
        "CSV/JSONL (id, agent, truth, pred, confidence[, scores]).",
        show_default=False,
    ),
]
TaskOpt = Annotated[
    str | None,
    typer.Option(
        "--task", help="Task preset (apple-leaf) or task JSON; default: labels from the truth."
    ),
]
TruthOpt = Annotated[str, typer.Option("--truth-column", help="Column holding the true label.")]


def _agent_list(text: str) -> list[str]:
    """The agents of ``--agents a,b``; ValueError when it names none."""
    wanted = [a.strip() for a in text.split(",") if a.strip()]
    if not wanted:
        raise ValueError("names no agent")
    return wanted


def _cv_folds(folds: int) -> None:
    if folds < 0 or folds == 1:
        raise ValueError(f"must be 0 (none) or at least 2, got {folds}")


def _methods() -> tuple[str, ...]:
    from eval.recalibration import METHODS

    return METHODS


AgentsOpt = Annotated[
    str | None,
    typer.Option(
        "--agents",
        help="Comma-separated agents to keep (default: all).",
        callback=checked_by(_agent_list),
    ),
]
BinsOpt = Annotated[
    int, typer.Option("--bins", help="Equal-width bins for ECE/MCE.", callback=at_least(1))
]
OcrOpt = Annotated[
    float,
    typer.Option(
        "--ocr-threshold",
        help="OCR: wrong fraction among confidence > T.",
        callback=number_in(0.0, 1.0),
    ),
]
SeedOpt = Annotated[
    int, typer.Option("--seed", min=0, help="Seed of the bootstrap and the CV folds (>= 0).")
]
BootstrapOpt = Annotated[
    int,
    typer.Option(
        "--bootstrap",
        help="Bootstrap resamples for the 95% intervals (0: none).",
        callback=at_least(0),
    ),
]
MethodOpt = Annotated[
    str,
    typer.Option(
        "--method",
        help="Recalibration: auto, temperature, isotonic, histogram.",
        callback=one_of(_methods),
    ),
]
FoldsOpt = Annotated[
    int,
    typer.Option(
        "--folds",
        help="Cross-validation folds for held-out recalibration (0: none).",
        callback=checked_by(_cv_folds),
    ),
]


def _load(
    file: Path, task: str | None, truth_column: str, agents: str | None
) -> tuple[RecordSet, list[str] | None]:
    task_obj = None
    if task is not None:
        from core.task import load_task

        task_obj = load_task(task)
    wanted = _agent_list(agents) if agents is not None else None
    records = second_looks_as_sources(
        read_records(file, task=task_obj, truth_column=truth_column, agents=wanted)
    )
    for note in records.label_notes:
        print(f"note: {note}", file=sys.stderr)
    if not records.records:
        raise InputError(f"no records for agents {wanted}", path=str(file))
    if len(records.labels) < 2:
        raise InputError(
            f"only one label {list(records.labels)} in the truth column; pass --task to name "
            "the task's labels",
            path=str(file),
        )
    return records, wanted


def _fit(records: RecordSet, *, quiet: bool, **kwargs: Any) -> dict[str, Any]:
    from eval.profile import fit_trust_profile

    profiles = {}
    with progress_bar(disable=quiet or not sys.stderr.isatty()) as bar:
        job = bar.add_task("fitting", total=len(records.agents))
        for agent in records.agents:
            bar.update(job, description=f"fitting {agent}")
            profiles[agent] = fit_trust_profile(
                agent, records.for_agent(agent), records.labels, **kwargs
            )
            bar.advance(job)
    return profiles


def _load_and_fit(
    file: Path,
    task: str | None,
    truth_column: str,
    agents: str | None,
    *,
    quiet: bool,
    bins: int,
    ocr_threshold: float,
    method: str,
    seed: int,
    bootstrap: int,
    folds: int,
) -> tuple[RecordSet, dict[str, Any]]:
    """Read the file and fit one profile per agent (the settings were checked when parsed)."""
    records, _ = _load(file, task, truth_column, agents)
    profiles = _fit(
        records,
        quiet=quiet,
        bins=bins,
        ocr_threshold=ocr_threshold,
        method=method,
        seed=seed,
        bootstrap=bootstrap,
        cv_folds=folds,
        data_sha256=records.sha256,
    )
    return records, profiles


def _ci(profile: Any, key: str) -> str:
    lo_hi = profile.intervals.get(key)
    return f"[{lo_hi[0]:.3f}, {lo_hi[1]:.3f}]" if lo_hi else "-"


def _metric_rows(ps: list[Any]) -> list[list[str]]:
    """Each calibration metric's row, a 95% CI row after the bootstrapped ones' groups."""
    from eval.bootstrap import INTERVAL_KEYS
    from eval.metric_table import metric_groups

    settings = ps[0].settings
    rows: list[list[str]] = []
    for group in metric_groups():
        for m in group:
            rows.append([m.display_label(settings), *[m.display(getattr(p, m.key)) for p in ps]])
        if group[0].key in INTERVAL_KEYS:
            rows.append(["  95% CI", *[_ci(p, group[0].key) for p in ps]])
    return rows


def _summary_rows(profiles: dict[str, Any], labels: tuple[str, ...]) -> list[list[str]]:
    from eval.metric_table import Report, metrics_in, three_decimals

    ps = list(profiles.values())
    return [
        ["n (invalid)", *[f"{p.n} ({p.n_invalid})" for p in ps]],
        ["accuracy", *[three_decimals(p.accuracy) for p in ps]],
        ["  95% CI", *[_ci(p, "accuracy") for p in ps]],
        ["macro precision", *[three_decimals(p.macro_precision) for p in ps]],
        ["macro recall", *[three_decimals(p.macro_recall) for p in ps]],
        ["macro F1", *[three_decimals(p.macro_f1) for p in ps]],
        *[[f"recall {lb}", *[three_decimals(p.per_class_recall[lb]) for p in ps]] for lb in labels],
        *_metric_rows(ps),
        ["recalibration", *[p.recalibration.get("method", "-") for p in ps]],
        *[
            [f"  held-out {m.name}", *[m.display(p.recalibrated.get(m.key)) for p in ps]]
            for m in metrics_in(Report.COMPARED)
        ],
    ]


def _agent_json(p: Any) -> dict[str, Any]:
    body = p.model_dump(mode="json", exclude={"agent", "labels", "recalibration", "default"})
    body["intervals"] = {k: list(v) for k, v in p.intervals.items()}
    body["recalibration_method"] = p.recalibration.get("method")
    return body


@app.command("calibration")
def calibration(
    file: FileArg,
    task: TaskOpt = None,
    truth_column: TruthOpt = DEFAULT_TRUTH_COLUMN,
    agents: AgentsOpt = None,
    bins: BinsOpt = 10,
    ocr_threshold: OcrOpt = 0.5,
    json_out: JsonOption = False,
    plots: Annotated[
        Path | None,
        typer.Option(
            "--plots",
            help="Write <agent>_reliability.png and _confidence.png here.",
            callback=output_dir("a plot"),
        ),
    ] = None,
    seed: SeedOpt = 0,
    bootstrap: BootstrapOpt = 1000,
    method: MethodOpt = "auto",
    folds: FoldsOpt = 5,
) -> None:
    """Calibration of each agent's recorded predictions: accuracy, ECE, MCE, OCR, CCC, Brier.

    Examples:

      trustorch eval calibration case1_zero_shot.csv

      trustorch eval calibration case3_trust_rag.csv --task apple-leaf --agents qwen,gpt,rag

      trustorch eval calibration preds.jsonl --bins 15 --ocr-threshold 0.9 --json --plots out/
    """
    records, profiles = _load_and_fit(
        file,
        task,
        truth_column,
        agents,
        quiet=json_out,
        bins=bins,
        ocr_threshold=ocr_threshold,
        method=method,
        seed=seed,
        bootstrap=bootstrap,
        folds=folds,
    )
    written: list[str] = []
    if plots is not None:
        from eval.plots import agent_plots
        from eval.profile import agent_arrays

        for agent, p in profiles.items():
            _, _, data = agent_arrays(agent, records.for_agent(agent), records.labels)
            if data.n:
                paths = agent_plots(
                    agent, data.confidence, data.correct, plots, bins=bins, ece=p.ece
                )
                written += [str(x) for x in paths]
    if json_out:
        emit_json(
            {
                "file": records.path,
                "sha256": records.sha256,
                "labels": list(records.labels),
                "bins": bins,
                "ocr_threshold": ocr_threshold,
                "seed": seed,
                "bootstrap": bootstrap,
                "interval_level": 0.95,
                "invalid_predictions": records.invalid_predictions,
                "notes": records.notes,
                "agents": {name: _agent_json(p) for name, p in profiles.items()},
                "plots": written,
            }
        )
        return
    console = stdout_console()
    console.print(
        f"{Path(records.path).name}: {len(records.ids())} images, labels {list(records.labels)}; "
        f"ECE/MCE with {bins} equal-width bins, OCR threshold {ocr_threshold:g}, "
        f"95% bootstrap CI ({bootstrap} resamples, seed {seed}), held-out = {folds}-fold CV"
    )
    print_table(
        "Calibration per agent",
        ["metric", *profiles],
        _summary_rows(profiles, records.labels),
        console=console,
    )
    for agent, p in profiles.items():
        cols = [*records.labels, *(["invalid"] if p.confusion_has_invalid else [])]
        print_table(
            f"{agent} confusion (rows: truth, columns: prediction)",
            ["truth \\ pred", *cols],
            [[lb, *row] for lb, row in zip(records.labels, p.confusion, strict=True)],
            console=console,
        )
    for note in records.notes:
        console.print(f"note: {note}")
    for path in written:
        console.print(f"wrote {path}")


MIN_PROFILE_ANSWERS = 30
"""Below this many answers a profile's figures are too uncertain to lean on without saying so."""


def small_sample_warnings(profiles: Mapping[str, Any]) -> list[str]:
    """One line per profile fitted on fewer than ``MIN_PROFILE_ANSWERS`` answers, with its
    accuracy interval when one was measured."""
    lines = []
    for name, p in profiles.items():
        if p.n >= MIN_PROFILE_ANSWERS:
            continue
        low_high = p.intervals.get("accuracy")
        interval = f", 95% interval [{low_high[0]:.2f}, {low_high[1]:.2f}]" if low_high else ""
        lines.append(
            f"'{name}' is measured on {p.n} answers only (accuracy {p.accuracy:.3f}{interval}); "
            f"trust is uncertain below {MIN_PROFILE_ANSWERS}: measure it on more labelled images"
        )
    return lines


@app.command("trust")
def trust(
    file: FileArg,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Trust profile JSON file to write.",
            callback=output_file("the trust profiles"),
        ),
    ],
    task: TaskOpt = None,
    truth_column: TruthOpt = DEFAULT_TRUTH_COLUMN,
    agents: AgentsOpt = None,
    bins: BinsOpt = 10,
    ocr_threshold: OcrOpt = 0.5,
    method: MethodOpt = "auto",
    folds: FoldsOpt = 5,
    seed: SeedOpt = 0,
    bootstrap: BootstrapOpt = 1000,
    json_out: JsonOption = False,
) -> None:
    """Fit each agent's trust profile (metrics + recalibration map) and write them as JSON.

    Examples:

      trustorch eval trust case1_zero_shot.csv --out profiles.json

      trustorch eval trust case3_trust_rag.csv --task apple-leaf --method isotonic --out p.json
    """
    from eval.metric_table import Report, metrics_in
    from eval.profile import save_trust_profiles

    records, profiles = _load_and_fit(
        file,
        task,
        truth_column,
        agents,
        quiet=json_out,
        bins=bins,
        ocr_threshold=ocr_threshold,
        method=method,
        seed=seed,
        bootstrap=bootstrap,
        folds=folds,
    )
    save_trust_profiles(out, profiles)
    brief = metrics_in(Report.BRIEF)
    compared = metrics_in(Report.COMPARED)
    summary = {
        name: {
            "n": p.n,
            "accuracy": p.accuracy,
            **{m.key: getattr(p, m.key) for m in brief},
            "method": p.recalibration.get("method"),
            "recalibrated": p.recalibrated,
        }
        for name, p in profiles.items()
    }
    warnings = small_sample_warnings(profiles)
    if json_out:
        emit_json(
            {"out": str(out), "sha256": records.sha256, "agents": summary, "warnings": warnings}
        )
        return
    for line in warnings:
        typer.echo(f"warning: {line}", err=True)
    print_table(
        f"Trust profiles of {Path(records.path).name} -> {out}",
        [
            "agent",
            "n",
            "accuracy",
            *[m.name for m in brief],
            "map",
            *[f"CV {m.name}" for m in compared],
        ],
        [
            [
                name,
                s["n"],
                s["accuracy"],
                *[s[m.key] for m in brief],
                s["method"],
                *[s["recalibrated"].get(m.key) for m in compared],
            ]
            for name, s in summary.items()
        ],
    )
    stdout_console().print(f"wrote {len(profiles)} profile(s) to {out}")


app.command("retrieval")(retrieval)
app.command("report")(report)
