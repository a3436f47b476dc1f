"""``trustorch eval report``: one self-contained HTML page that pictures a run."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from core.cli import JsonOption, emit_json, progress_bar
from core.errors import InputError
from core.files import write_text_atomically
from eval.run_report.figures import DEFAULT_MAX_ROWS, RunFigures, read_run


def figures_json(f: RunFigures, out: Path) -> dict[str, Any]:
    """The headline figures as one JSON object (what ``--json`` prints)."""
    return {
        "file": f.path,
        "out": str(out),
        "images": f.images,
        "answered": f.answered,
        "coverage": f.coverage,
        "abstained": f.abstained,
        "labelled": f.labelled,
        "accuracy": f.accuracy,
        "accuracy_all": f.accuracy_all,
        "ece": f.reliability.ece,
        "ece_bins": f.bins,
        "brier": f.reliability.brier,
        "failed_images": f.failed_images,
        "agent_failures": f.agent_failures,
        "reeval_rate": f.reeval_rate,
        "reeval_changed": f.reeval_changed,
        "cost_usd": f.cost_usd,
        "agents": {
            a.name: {
                "calls": a.calls,
                "failures": a.failures,
                "cost_usd": a.cost_usd,
                "latency_mean_s": a.latency.mean,
                "latency_p50_s": a.latency.percentile(50),
                "latency_p95_s": a.latency.percentile(95),
            }
            for a in f.agents.values()
        },
        "notes": f.notes,
    }


def report(
    results: Annotated[
        Path,
        typer.Argument(
            help="The decisions JSONL that trustorch run wrote (--out).", show_default=False
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write.")],
    max_rows: Annotated[
        int,
        typer.Option(
            "--max-rows", min=1, help="Rows at most in each table of abstentions, errors, failures."
        ),
    ] = DEFAULT_MAX_ROWS,
    bins: Annotated[
        int, typer.Option("--bins", min=1, help="Equal-width bins of the ECE and the diagram.")
    ] = 10,
    json_out: JsonOption = False,
) -> None:
    """One self-contained HTML page picturing a run (trustorch run's --out).

    Coverage and accuracy, reliability diagram, confusion matrix, cost and latency per agent,
    re-evaluation, and the abstentions, wrong answers and failures linked to their traces.
    Needs no network and no script to view.

    Examples:

      trustorch eval report results.jsonl -o report.html

      trustorch eval report results.jsonl -o report.html --max-rows 100 --bins 15 --json
    """
    from eval.run_report.page import render_run_report

    if out.is_dir():
        raise InputError("--out is a folder; give an .html file", path=str(out))
    size = results.stat().st_size if results.is_file() else 0
    with progress_bar(disable=json_out or not sys.stderr.isatty() or size < 8_000_000) as bar:
        job = bar.add_task("reading", total=size)
        figures = read_run(
            results, max_rows=max_rows, bins=bins, on_progress=lambda n: bar.advance(job, n)
        )
    write_text_atomically(out, render_run_report(figures), what="the report")
    if json_out:
        emit_json(figures_json(figures, out))
        return
    for note in figures.notes:
        typer.echo(f"note: {note}", err=True)
    accuracy = "" if figures.accuracy is None else f", accuracy {figures.accuracy:.3f} on them"
    typer.echo(f"{figures.images} decisions, {figures.answered} answered{accuracy}; wrote {out}")
