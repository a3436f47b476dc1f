"""One decision of the file rendered as its trace: every round's answers and verdicts, the
evidence and the graph's notes, under the anchor ``#trace-L<line>``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from eval.run_report.markup import NONE, data, esc, num, pct, seconds, trace_id, usd


def _scores(scores: Any) -> str:
    if not isinstance(scores, Mapping) or not scores:
        return ""
    return ", ".join(f"{esc(k)} {num(v, 2)}" for k, v in scores.items())


def _trace_round(d: Mapping[str, Any], r: int) -> str:
    rows = []
    for p in (p for p in d["predictions"] if p["round"] == r):
        if p["label"] is None:
            answer = f'<span class="err">failed: {esc(p["error"]) or "no answer"}</span>'
        else:
            answer = f"<b>{esc(p['label'])}</b> {num(p.get('confidence'))}"
        rows.append(
            f'<tr class="prediction"{data(agent=p["agent"], round=r)}><td>{esc(p["agent"])}</td>'
            f"<td>{answer}</td><td>{_scores(p.get('scores'))}</td>"
            f'<td class="reason">{esc(p.get("reason"))}</td>'
            f"<td>{seconds(p['latency_s'])}, {usd(p['cost_usd'])}</td></tr>"
        )
    table = (
        "<table><tr><th>agent</th><th>answer</th><th>scores</th><th>reason</th><th></th></tr>"
        f"{''.join(rows)}</table>"
        if rows
        else ""
    )
    verdicts = "".join(
        f'<p class="assessment"{data(round=r)}><b>{esc(a.get("policy"))}</b>: '
        f"{esc(a['label']) if a['label'] is not None else 'abstain'} {num(a.get('confidence'))}"
        f" ({'trusted' if a.get('trusted') else 'not trusted'}). {esc(a['reason'])}"
        + (
            f" Asked again: {esc(', '.join(map(str, a['reevaluate'])))}."
            if isinstance(a.get("reevaluate"), list) and a["reevaluate"]
            else ""
        )
        + "</p>"
        for a in d["assessments"]
        if a["round"] == r
    )
    title = "first look" if r == 0 else "re-evaluation"
    return f"<h4>Round {r}: {title}</h4>{table}{verdicts}"


def _trace_evidence(evidence: Any) -> str:
    if not isinstance(evidence, Mapping):
        return ""
    neighbours = evidence.get("neighbours")
    items = "".join(
        f"<li>{esc(n.get('label'))} (similarity {num(n.get('similarity'))}) "
        f"{esc(Path(str(n.get('source') or n.get('id') or '')).name)}</li>"
        for n in (neighbours if isinstance(neighbours, list) else [])
        if isinstance(n, Mapping)
    )
    return (
        f"<h4>Retrieved evidence</h4><p>vote: {_scores(evidence.get('vote')) or NONE}</p>"
        f"<ul>{items}</ul>"
    )


def trace(line: int, d: Mapping[str, Any]) -> str:
    rounds = sorted({p["round"] for p in d["predictions"]} | {a["round"] for a in d["assessments"]})
    label = "abstained" if d["label"] is None else f"{esc(d['label'])} {pct(d['confidence'])}"
    notes = d.get("notes")
    notes_html = (
        '<ul class="notes">' + "".join(f"<li>{esc(x)}</li>" for x in notes) + "</ul>"
        if isinstance(notes, list) and notes
        else ""
    )
    return (
        f'<section class="trace" id="{trace_id(line)}"{data(line=line, label=d["label"])}>'
        f"<h3>{esc(Path(d['image']).name)}: {label}</h3>"
        f'<p class="meta">line {line} · {esc(d["image"])} · sha256 {esc(d["sha256"][:16])} · '
        f"truth {esc(d['truth']) or NONE} · {d['rounds_used']} round(s) · "
        f"{seconds(d['latency_s'])} · {usd(d['cost_usd'])}</p>{notes_html}"
        f"{''.join(_trace_round(d, r) for r in rounds)}{_trace_evidence(d.get('evidence'))}"
        '<p><a href="#top">back to the top</a></p></section>'
    )
