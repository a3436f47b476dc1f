"""One self-contained HTML report per diagnosed image.

Everything is inline: the image, neighbour thumbnails and reliability diagrams are base64 data
URIs, the CSS sits in one ``<style>`` tag, there is no script and nothing is fetched. Every string
that came from a model, a file or the user goes through ``html.escape``.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agents.types import Prediction
from core.files import write_text_atomically
from core.task import Task
from orchestrator.decision import Assessment, Decision

IMAGE_MAX_PX = 448
NONE = "&ndash;"
MAX_AS_IS_BYTES = 2_000_000
_AS_IS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}
THUMB_MAX_PX = 112


@dataclass(frozen=True)
class TrustCard:
    """What the report shows about one agent's measured trust (from its TrustProfile)."""

    agent: str
    n: int | None = None
    accuracy: float | None = None
    ece: float | None = None
    ocr: float | None = None
    note: str = ""
    diagram_png: bytes | None = None


def esc(value: Any) -> str:
    """HTML-escape anything (quotes too), ``None`` as an empty string."""
    return "" if value is None else html.escape(str(value), quote=True)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def image_data_uri(data: bytes, *, max_px: int = IMAGE_MAX_PX) -> str | None:
    """A data URI of the image: its own bytes when it is a small JPEG/PNG/WebP/GIF, else scaled
    to fit ``max_px`` and re-encoded as JPEG. None when it is no image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            mime = _AS_IS.get(img.format or "")
            if mime and max(img.size) <= max_px and len(data) <= MAX_AS_IS_BYTES:
                return data_uri(data, mime)
            img.thumbnail((max_px, max_px))
            buf = io.BytesIO()
            img.convert("RGB").save(buf, format="JPEG", quality=88)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None
    return data_uri(buf.getvalue(), "image/jpeg")


def local_thumbnail(source: str | None) -> str | None:
    """A thumbnail data URI when ``source`` is a readable local image file, else None."""
    if not source or source.startswith(("http://", "https://")):
        return None
    path = Path(source)
    if not path.is_file():
        return None
    return image_data_uri(path.read_bytes(), max_px=THUMB_MAX_PX)


def _pct(x: float | None) -> str:
    return NONE if x is None else f"{100 * float(x):.1f}%"


def _num(x: float | None, digits: int = 3) -> str:
    return NONE if x is None else f"{float(x):.{digits}f}"


def _bars(scores: Mapping[str, float] | None, labels: Sequence[str]) -> str:
    if not scores:
        return ""
    rows = []
    for label in [*labels, *[k for k in scores if k not in labels]]:
        value = float(scores.get(label, 0.0))
        width = max(0.0, min(100.0, 100 * value))
        rows.append(
            f'<div class="bar"><span class="bl">{esc(label)}</span>'
            f'<span class="bt"><span class="bf" style="width:{width:.1f}%"></span></span>'
            f'<span class="bv">{value:.2f}</span></div>'
        )
    return '<div class="bars">' + "".join(rows) + "</div>"


def _round_title(round_: int) -> str:
    return "Round 0: first look" if round_ == 0 else f"Round {round_}: re-evaluation with evidence"


def _prediction_row(p: Prediction, task: Task) -> str:
    if p.ok:
        answer = (
            f'<b class="label">{esc(p.label)}</b> <span class="conf">{_pct(p.confidence)}</span>'
        )
    else:
        answer = f'<span class="err">failed: {esc(p.error)}</span>'
    extra = []
    if p.reported_confidence is not None:
        extra.append(f"self-reported {_pct(p.reported_confidence)}")
    extra.append(f"{p.latency_s:.2f} s")
    if p.cost_usd:
        extra.append(f"${p.cost_usd:.4f}")
    return (
        f'<tr class="prediction" data-agent="{esc(p.agent)}" data-round="{p.round}" '
        f'data-label="{esc(p.label)}">'
        f"<td>{esc(p.agent)}</td><td>{answer}</td><td>{_bars(p.scores, task.labels)}</td>"
        f'<td class="reason">{esc(p.reason)}</td><td class="meta">{esc(", ".join(extra))}</td></tr>'
    )


def _assessment_block(
    a: Assessment, task: Task, *, again: bool, last: bool, looked_again: Sequence[str]
) -> str:
    verdict = "trusted" if a.trusted else "not trusted"
    label = esc(a.label) if a.label is not None else "abstain"
    weights = "".join(
        f"<tr><td>{esc(name)}</td><td>{_num(w)}</td></tr>" for name, w in a.weights.items()
    )
    weights_table = (
        f'<table class="weights"><tr><th>source</th><th>weight</th></tr>{weights}</table>'
        if weights
        else ""
    )
    # Only the agents that did look again: the policy may name some that cannot (CLIP).
    again_names = [name for name in a.reevaluate if name in looked_again]
    asked = (
        f"<p>Asked to look again: {esc(', '.join(again_names))}</p>"
        if again_names and not last
        else ""
    )
    when = f"round {a.round}, again with the retrieved evidence" if again else f"round {a.round}"
    return (
        f'<div class="assessment" data-round="{a.round}">'
        f"<p><b>{esc(a.policy)}</b> fusion after {when}: <b>{label}</b> "
        f"{_pct(a.confidence)} ({verdict})</p>"
        f'<p class="reason">{esc(a.reason)}</p>{asked}'
        f'<div class="fused">{_bars(a.scores, task.labels)}{weights_table}</div></div>'
    )


def _rounds_section(decision: Decision, task: Task) -> str:
    rounds = sorted(
        {p.round for p in decision.predictions} | {a.round for a in decision.assessments}
    )
    parts = []
    for r in rounds:
        preds = [p for p in decision.predictions if p.round == r]
        rows = "".join(_prediction_row(p, task) for p in preds)
        table = (
            '<table class="answers"><tr><th>agent</th><th>answer</th><th>scores</th>'
            f"<th>reason</th><th></th></tr>{rows}</table>"
            if rows
            else "<p>No agent answered in this round.</p>"
        )
        in_round = [a for a in decision.assessments if a.round == r]
        assessments = "".join(
            _assessment_block(
                a,
                task,
                again=i > 0,
                last=a is decision.assessments[-1],
                looked_again=[p.agent for p in decision.predictions if p.round == a.round + 1],
            )
            for i, a in enumerate(in_round)
        )
        parts.append(
            f'<section class="round" id="round-{r}"><h2>{esc(_round_title(r))}</h2>'
            f"{table}{assessments}</section>"
        )
    return "".join(parts)


def _evidence_section(evidence: Mapping[str, Any] | None, task: Task) -> str:
    if not evidence:
        return ""
    neighbours = evidence.get("neighbours") or []
    cards = []
    for n in neighbours:
        thumb = local_thumbnail(n.get("source"))
        img = f'<img src="{thumb}" alt="{esc(n.get("label"))}">' if thumb else ""
        name = esc(Path(str(n.get("source") or n.get("id") or "")).name)
        cards.append(
            f'<figure class="neighbour" data-label="{esc(n.get("label"))}">{img}'
            f"<figcaption><b>{esc(n.get('label'))}</b> sim {_num(n.get('similarity'))}"
            f"<br><small>{name}</small></figcaption></figure>"
        )
    rule = esc(evidence.get("vote_rule", ""))
    model = esc(evidence.get("model", ""))
    grid = f'<div class="neighbours">{"".join(cards)}</div>' if cards else ""
    return (
        '<section id="evidence"><h2>Retrieved evidence</h2>'
        f"<p>{len(neighbours)} labelled neighbours; vote rule {rule}"
        f"{'; embeddings ' + model if model else ''}.</p>"
        f"{_bars(evidence.get('vote') or {}, task.labels)}{grid}</section>"
    )


def _trust_section(cards: Mapping[str, TrustCard]) -> str:
    if not cards:
        return ""
    rows, diagrams = [], []
    for card in cards.values():
        n = NONE if card.n is None else str(card.n)
        rows.append(
            f"<tr><td>{esc(card.agent)}</td><td>{n}</td><td>{_pct(card.accuracy)}</td>"
            f"<td>{_num(card.ece)}</td><td>{_num(card.ocr)}</td><td>{esc(card.note)}</td></tr>"
        )
        if card.diagram_png:
            diagrams.append(
                f'<figure class="diagram"><img src="{data_uri(card.diagram_png, "image/png")}" '
                f'alt="reliability diagram of {esc(card.agent)}">'
                f"<figcaption>{esc(card.agent)}</figcaption></figure>"
            )
    return (
        '<section id="trust"><h2>Measured trust of each agent</h2>'
        "<table><tr><th>agent</th><th>n</th><th>accuracy</th><th>ECE</th><th>OCR</th><th></th></tr>"
        f'{"".join(rows)}</table><div class="diagrams">{"".join(diagrams)}</div></section>'
    )


def _diagnosis_section(decision: Decision) -> str:
    truth = ""
    if decision.truth is not None:
        mark = "correct" if decision.label == decision.truth else "wrong"
        truth = f'<p class="truth {mark}">True label: <b>{esc(decision.truth)}</b> ({mark})</p>'
    pset = ", ".join(decision.prediction_set)
    if decision.abstained:
        headline = "No diagnosis: the agents could not be trusted enough"
        body = f'<p>Possible: <b class="pset">{esc(pset) or NONE}</b></p>'
    else:
        headline = f'<span class="label" id="final-label">{esc(decision.label)}</span>'
        body = f'<p>Prediction set: <span class="pset">{esc(pset) or NONE}</span></p>'
    cost = f", ${decision.cost_usd:.4f}" if decision.cost_usd else ""
    return (
        f'<section id="diagnosis" data-label="{esc(decision.label)}" '
        f'data-confidence="{decision.confidence:.4f}" '
        f'data-abstained="{str(decision.abstained).lower()}">'
        f'<h2>Diagnosis</h2><p class="headline">{headline}</p>'
        f'<p>Confidence <b id="final-confidence">{_pct(decision.confidence)}</b></p>{body}{truth}'
        f'<p class="meta">policy {esc(decision.policy)}, {decision.rounds_used} round(s), '
        f"{decision.latency_s:.2f} s{esc(cost)}</p></section>"
    )


def _list_section(section_id: str, title: str, lines: Sequence[str]) -> str:
    if not lines:
        return ""
    items = "".join(f"<li>{esc(line)}</li>" for line in lines)
    return f'<section id="{section_id}"><h2>{esc(title)}</h2><ul>{items}</ul></section>'


def render_report(
    decision: Decision,
    *,
    task: Task,
    image_bytes: bytes | None = None,
    trust: Mapping[str, TrustCard] | None = None,
    skipped: Sequence[str] = (),
    generated_at: datetime | None = None,
) -> str:
    """The whole report for one Decision as an HTML string (no external resource)."""
    when = (generated_at or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    uri = image_data_uri(image_bytes) if image_bytes else None
    picture = (
        f'<img id="leaf" src="{uri}" alt="{esc(decision.image)}">'
        if uri
        else '<p class="err">The image is not embedded (not a local, readable file).</p>'
    )
    title = f"{task.title or task.name}: {Path(decision.image).name}"
    body = (
        f"<header><h1>{esc(title)}</h1>"
        f'<p class="meta">{esc(decision.image)} · sha256 {esc(decision.sha256[:16])}… · '
        f"task {esc(decision.task)} · {esc(when)}</p></header>"
        f'<div class="top"><figure class="leaf">{picture}</figure>'
        f"{_diagnosis_section(decision)}</div>"
        f"{_list_section('routing', 'Why the graph went where it went', decision.notes)}"
        f"{_rounds_section(decision, task)}"
        f"{_evidence_section(decision.evidence, task)}"
        f"{_trust_section(trust or {})}"
        f"{_list_section('skipped', 'Agents not run on this machine', skipped)}"
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>{body}</body></html>\n"
    )


def write_report(html_text: str, path: Path) -> Path:
    """Write the report whole (``core.files``)."""
    return write_text_atomically(path, html_text, what="the report")


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;
max-width:1100px;padding:16px 24px;color:#1d2b1f;background:#fafbf8}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.15em;margin:.2em 0 .5em;color:#2f5d34}
section{background:#fff;border:1px solid #dfe5da;border-radius:8px;padding:12px 16px;margin:12px 0}
.meta{color:#667;font-size:.85em}.top{display:flex;gap:16px;align-items:stretch;flex-wrap:wrap}
.leaf{margin:0}.leaf img{max-width:320px;border-radius:8px;border:1px solid #ccd}
#diagnosis{flex:1;min-width:260px;margin:0}
.headline{font-size:1.6em;margin:.2em 0}.headline .label{color:#1b6e2a;font-weight:700}
.truth.correct{color:#1b6e2a}.truth.wrong{color:#b3261e}.err{color:#b3261e}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:4px 8px;
border-bottom:1px solid #eef;vertical-align:top;font-size:.92em}
.answers td.reason,.assessment .reason{color:#444;max-width:380px}
.bars{min-width:180px}.bar{display:flex;align-items:center;gap:6px;font-size:.8em}
.bl{width:72px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.bt{flex:1;background:#eef1ea;height:9px;border-radius:4px;min-width:60px}
.bf{display:block;background:#4f9a5a;height:9px;border-radius:4px}.bv{width:34px;text-align:right}
.assessment{background:#f5f8f2;border-radius:6px;padding:8px 12px;margin-top:10px}
.fused{display:flex;gap:24px;flex-wrap:wrap}.fused .bars{flex:1}.weights{width:auto}
.neighbours,.diagrams{display:flex;flex-wrap:wrap;gap:10px;margin-top:8px}
.neighbour{margin:0;width:120px;font-size:.8em}.neighbour img{width:112px;border-radius:4px}
.diagram{margin:0}.diagram img{width:300px}figcaption{text-align:center}
"""
