"""The run report as one self-contained HTML page: inline CSS and SVG, no script, nothing fetched.

Every string that came from the decisions file (image paths, agent names, labels, reasons,
errors, the run configuration) goes through ``html.escape``: agents' text is untrusted. Each
section and figure has a stable id and ``data-*`` attributes holding the exact numbers shown
(Python's ``repr`` of the float), so tests and scripts read the page without parsing the text.
Rows of the tables of abstentions, wrong answers and failures link to ``#trace-L<line>``, the
decision of that line of the file rendered further down.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from eval.run_report.figures import ImageRow, RowTable, RunFigures
from eval.run_report.markup import NONE, data, esc, num, pct, seconds, trace_id, usd
from eval.run_report.stats import ConfidenceBins, LatencyStats
from eval.run_report.trace import trace


def _stat(label: str, value: str, key: str) -> str:
    return f'<div class="stat" id="stat-{key}"><b>{value}</b><span>{esc(label)}</span></div>'


def headline(f: RunFigures) -> str:
    attrs = data(
        images=f.images,
        answered=f.answered,
        coverage=f.coverage,
        abstained=f.abstained,
        labelled=f.labelled,
        accuracy=f.accuracy,
        accuracy_all=f.accuracy_all,
        ece=f.reliability.ece,
        brier=f.reliability.brier,
        failed_images=f.failed_images,
        agent_failures=f.agent_failures,
        reeval_rate=f.reeval_rate,
        cost_usd=f.cost_usd,
    )
    stats = [
        _stat("images", str(f.images), "images"),
        _stat(f"answered ({f.answered})", pct(f.coverage), "coverage"),
        _stat("abstentions", str(f.abstained), "abstained"),
        _stat("images with a failed agent call", str(f.failed_images), "failed"),
    ]
    if f.labelled_answered:
        stats[2:2] = [
            _stat(f"accuracy on {f.labelled_answered} answered", pct(f.accuracy), "accuracy"),
            _stat(f"ECE ({f.bins} bins) on the answered", num(f.reliability.ece), "ece"),
        ]
    if f.labelled:
        extra = (
            f"<p>{f.labelled} of {f.images} images have a known truth; counting abstentions as "
            f"wrong, accuracy is {pct(f.accuracy_all)} (as <code>trustorch run</code> prints "
            f"it); Brier score on the answered {num(f.reliability.brier)}.</p>"
        )
    else:
        extra = "<p>No image has a known truth: accuracy and the confusion matrix are left out.</p>"
    latency = f.image_latency
    extra += (
        f"<p>Cost {usd(f.cost_usd)} in all; per image latency mean {seconds(latency.mean)}, "
        f"p50 {seconds(latency.percentile(50))}, p95 {seconds(latency.percentile(95))}.</p>"
    )
    return (
        f'<section id="headline"{attrs}><h2>Headline</h2>'
        f'<div class="stats">{"".join(stats)}</div>{extra}</section>'
    )


def _bin_svg(bins: ConfidenceBins, *, reliability: bool) -> str:
    size, pad = 300, 36
    width = size / bins.bins
    most = max(bins.counts) or 1
    shapes = []
    for k in range(bins.bins):
        lo, hi, count = bins.edges[k], bins.edges[k + 1], bins.counts[k]
        x = pad + k * width
        acc, conf = bins.accuracy(k), bins.mean_confidence(k)
        height = size * (acc or 0.0) if reliability else size * count / most
        tip = f"{lo:.1f}-{hi:.1f}: {count} answer(s)"
        if reliability and count:
            tip += f", accuracy {acc:.3f}, mean confidence {conf:.3f}"
        shapes.append(
            f'<rect class="bin"{data(bin=k, count=count, accuracy=acc, confidence=conf)} '
            f'x="{x:.1f}" y="{pad + size - height:.1f}" width="{width:.1f}" '
            f'height="{height:.1f}"><title>{esc(tip)}</title></rect>'
        )
        if reliability and count and conf is not None:
            top, bottom = sorted((size * (acc or 0.0), size * conf))
            shapes.append(
                f'<rect class="gap" x="{x:.1f}" y="{pad + size - bottom:.1f}" '
                f'width="{width:.1f}" height="{bottom - top:.1f}"></rect>'
            )
        shapes.append(
            f'<text class="count" x="{x + width / 2:.1f}" y="{pad + size + 14}">{count}</text>'
        )
    axis = "".join(
        f'<text class="tick" x="{pad + size * t:.1f}" y="{pad + size + 28}">{t:.1f}</text>'
        for t in (0.0, 0.5, 1.0)
    )
    if reliability:
        axis += "".join(
            f'<text class="tick" x="{pad - 14}" y="{pad + size * (1 - t) + 4:.1f}">{t:.1f}</text>'
            for t in (0.0, 0.5, 1.0)
        )
    diagonal = (
        f'<line class="diagonal" x1="{pad}" y1="{pad + size}" x2="{pad + size}" y2="{pad}"></line>'
        if reliability
        else ""
    )
    what = "accuracy per confidence bin" if reliability else "answers per confidence bin"
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size + 2 * pad}" '
        f'height="{size + 2 * pad}" role="img" aria-label="{what}">'
        f'<rect class="frame" x="{pad}" y="{pad}" width="{size}" height="{size}"></rect>'
        f"{''.join(shapes)}{diagonal}{axis}"
        f'<text class="axis" x="{pad + size / 2}" y="{pad - 10}">{what}</text></svg>'
    )


def reliability(f: RunFigures) -> str:
    if f.labelled_answered:
        return (
            f'<section id="reliability"{data(n=f.reliability.n, ece=f.reliability.ece)}>'
            "<h2>Reliability diagram</h2><p>Final decisions on the answered images with a known "
            f"truth: accuracy (blue) against the mean confidence (red gap) in {f.bins} "
            "equal-width bins; numbers under the bars count the answers.</p>"
            f"{_bin_svg(f.reliability, reliability=True)}</section>"
        )
    return (
        f'<section id="confidences"{data(n=f.confidences.n)}><h2>Confidence of the answers</h2>'
        "<p>No truth is known, so no reliability diagram: how confident the answers were.</p>"
        f"{_bin_svg(f.confidences, reliability=False)}</section>"
    )


def confusion(f: RunFigures) -> str:
    if not f.labelled:
        return ""
    labels = f.labels()
    columns: list[str | None] = list(labels)
    if any(pred is None for _, pred in f.confusion):
        columns.append(None)
    most = max(f.confusion.values())
    head = "".join(f"<th>{esc(c) if c is not None else 'abstained'}</th>" for c in columns)
    rows = []
    for truth in labels:
        cells = []
        for pred in columns:
            count = f.confusion.get((truth, pred), 0)
            shade = 0.08 + 0.6 * count / most if count else 0.0
            hue = "27,110,42" if pred == truth else "179,38,30"
            cells.append(
                f'<td class="cell"{data(truth=truth, pred=pred or "", count=count)} '
                f'style="background:rgba({hue},{shade:.2f})">{count}</td>'
            )
        rows.append(f"<tr><th>{esc(truth)}</th>{''.join(cells)}</tr>")
    return (
        '<section id="confusion-matrix"><h2>Confusion matrix</h2>'
        "<p>Rows: true label; columns: the final decision.</p>"
        f'<table id="confusion"><tr><th>truth \\ decision</th>{head}</tr>{"".join(rows)}'
        "</table></section>"
    )


def _latency_cells(latency: LatencyStats) -> str:
    return (
        f"<td>{seconds(latency.mean)}</td><td>{seconds(latency.percentile(50))}</td>"
        f"<td>{seconds(latency.percentile(95))}</td>"
    )


def agents(f: RunFigures) -> str:
    rows = []
    for a in f.agents.values():
        attrs = data(
            agent=a.name,
            calls=a.calls,
            second_looks=a.second_looks,
            failures=a.failures,
            cost_usd=a.cost_usd,
            latency_mean=a.latency.mean,
            latency_p50=a.latency.percentile(50),
            latency_p95=a.latency.percentile(95),
            first_look_accuracy=a.first_look_accuracy,
        )
        rows.append(
            f'<tr class="agent"{attrs}><td>{esc(a.name)}</td><td>{a.calls}</td>'
            f"<td>{a.second_looks}</td><td>{a.changed_answers}</td><td>{a.failures}</td>"
            f"<td>{pct(a.first_look_accuracy)}</td><td>{usd(a.cost_usd)}</td>"
            f"{_latency_cells(a.latency)}</tr>"
        )
    sampled = [s for s in (*(a.latency for a in f.agents.values()), f.image_latency) if not s.exact]
    note = (
        f'<p class="meta">Percentiles of series longer than {sampled[0].cap} values are '
        "estimated from a uniform sample of that many; means are exact.</p>"
        if sampled
        else ""
    )
    policy = (
        f'<p id="policy"{data(assessments=f.assessments, cost_usd=f.policy_cost_usd)}>'
        f"Fusion policy: {f.assessments} verdicts, cost {usd(f.policy_cost_usd)}, latency mean "
        f"{seconds(f.policy_latency.mean)}, p95 {seconds(f.policy_latency.percentile(95))}.</p>"
    )
    return (
        '<section id="agents"><h2>Agents</h2><table><tr><th>agent</th><th>calls</th>'
        "<th>second looks</th><th>changed answer</th><th>failures</th>"
        "<th>first-look accuracy</th><th>cost</th><th>latency mean</th><th>p50</th><th>p95</th>"
        f"</tr>{''.join(rows)}</table>{policy}{note}</section>"
    )


def reevaluation(f: RunFigures) -> str:
    attrs = data(
        rate=f.reeval_rate,
        reevaluated=f.reevaluated,
        changed=f.reeval_changed,
        fixed=f.reeval_fixed if f.labelled else None,
        broke=f.reeval_broke if f.labelled else None,
    )
    body = (
        f"<p>{f.reevaluated} of {f.images} images ({pct(f.reeval_rate)}) were looked at again. "
        f"The final label differs from the verdict before re-evaluation on {f.reeval_changed}.</p>"
    )
    if f.labelled:
        body += (
            f"<p>With a known truth: {f.reeval_fixed} went from wrong (or no label) to right, "
            f"{f.reeval_broke} from right to wrong (or no label).</p>"
        )
    return f'<section id="reevaluation"{attrs}><h2>Re-evaluation</h2>{body}</section>'


def _row(r: ImageRow, *, failures: bool) -> str:
    answer = NONE if r.label is None else f"{esc(r.label)} {pct(r.confidence)}"
    last = (
        f'<td class="reason">{"<br>".join(esc(x) for x in r.failures)}</td>'
        if failures
        else f'<td class="reason">{esc(r.reason)}</td>'
    )
    return (
        f'<tr class="row"{data(line=r.line)}><td><a href="#{trace_id(r.line)}">'
        f"{esc(Path(r.image).name)}</a></td><td>{r.line}</td><td>{esc(r.truth) or NONE}</td>"
        f"<td>{answer}</td><td>{esc(', '.join(r.prediction_set)) or NONE}</td>{last}</tr>"
    )


def row_table(section_id: str, title: str, table: RowTable, *, failures: bool = False) -> str:
    attrs = data(total=table.total, shown=len(table.rows), left_out=table.left_out)
    if not table.total:
        return f'<section id="{section_id}"{attrs}><h2>{esc(title)}</h2><p>None.</p></section>'
    left = (
        f'<p class="meta">The first {len(table.rows)} of {table.total} are listed; '
        f"{table.left_out} left out (raise --max-rows to see more).</p>"
        if table.left_out
        else ""
    )
    last = "failed calls" if failures else "last verdict"
    rows = "".join(_row(r, failures=failures) for r in table.rows)
    return (
        f'<section id="{section_id}"{attrs}><h2>{esc(title)} ({table.total})</h2>{left}'
        "<table><tr><th>image</th><th>line</th><th>truth</th><th>decision</th>"
        f"<th>prediction set</th><th>{last}</th></tr>{rows}</table></section>"
    )


def run_config(f: RunFigures) -> str:
    if not f.run_config:
        return ""
    items = "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(json.dumps(v, ensure_ascii=False))}</td></tr>"
        for k, v in f.run_config.items()
    )
    return f'<section id="run-config"><h2>Run configuration</h2><table>{items}</table></section>'


def render_run_report(figures: RunFigures, *, generated_at: datetime | None = None) -> str:
    """The whole page as an HTML string."""
    when = (generated_at or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    name = Path(figures.path).name
    notes = "".join(f"<li>{esc(x)}</li>" for x in figures.notes)
    traces = "".join(trace(n, d) for n, d in sorted(figures.traces.items()))
    sections: Sequence[str] = (
        headline(figures),
        reliability(figures),
        confusion(figures),
        agents(figures),
        reevaluation(figures),
        row_table("abstentions", "Abstentions", figures.abstentions),
        row_table("wrong", "Wrong answers", figures.wrong),
        row_table("failures", "Images with failed agent calls", figures.failures, failures=True),
        run_config(figures),
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Run report: {esc(name)}</title><style>{CSS}</style></head>"
        f'<body id="top"><header><h1>Run report: {esc(name)}</h1>'
        f'<p class="meta">{esc(figures.path)} · task {esc(figures.task) or NONE} · '
        f"generated {esc(when)}</p>"
        f"{f'<ul id=notes>{notes}</ul>' if notes else ''}</header>{''.join(sections)}"
        f'<section id="traces"><h2>Traces ({len(figures.traces)})</h2>'
        "<p>The decisions the tables above link to, as the file holds them.</p>"
        f"{traces}</section></body></html>\n"
    )


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;
max-width:1150px;padding:16px 24px;color:#1d2b1f;background:#fafbf8}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.15em;margin:.2em 0 .5em;color:#2f5d34}
h3{font-size:1em;margin:.4em 0}h4{font-size:.95em;margin:.8em 0 .3em;color:#445}
section{background:#fff;border:1px solid #dfe5da;border-radius:8px;padding:12px 16px;margin:12px 0}
.meta{color:#667;font-size:.85em}.err{color:#b3261e}
.stats{display:flex;flex-wrap:wrap;gap:12px}.stat{background:#f2f6ef;border-radius:8px;
padding:8px 14px;min-width:120px}.stat b{display:block;font-size:1.5em}.stat span{font-size:.85em}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:4px 8px;
border-bottom:1px solid #eef;vertical-align:top;font-size:.9em}td.reason{color:#444;max-width:420px}
#confusion td{text-align:center}.trace{border-left:4px solid #9bb89f}.trace:target{
border-left-color:#b3261e;background:#fffaf5}.assessment{background:#f5f8f2;border-radius:6px;
padding:6px 10px;margin:6px 0}
svg .frame{fill:#fbfcfa;stroke:#bbb}svg .bin{fill:#4c72b0;stroke:#223}
svg .gap{fill:#dd5555;fill-opacity:.45;stroke:#a00}svg .diagonal{stroke:#888;stroke-dasharray:4 3}
svg text{font-size:10px;text-anchor:middle;fill:#445}
"""
