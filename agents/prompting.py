"""Prompt templates: text files under ``prompts/templates/``, rendered with ``string.Template``.

A placeholder is ``$name`` (or ``${name}``); braces (JSON examples) need no escaping, a literal
dollar is ``$$``. A template name may also be a path to a user's own ``.txt`` file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from agents.types import EvidenceView, Prediction
from core.errors import InputError
from core.reading import read_utf8_file
from core.task import Task

TEMPLATE_MAX_BYTES = 1024 * 1024


def template_names() -> list[str]:
    folder = resources.files("prompts") / "templates"
    return sorted(p.name.removesuffix(".txt") for p in folder.iterdir() if p.name.endswith(".txt"))


def load_template(name: str) -> str:
    """The text of template ``name`` (``agent``, ``reevaluate``, ...) or of a ``.txt`` file."""
    path = Path(name)
    if path.suffix == ".txt" and path.exists():
        return read_utf8_file(path, what="prompt template", max_bytes=TEMPLATE_MAX_BYTES)
    resource = resources.files("prompts") / "templates" / f"{name}.txt"
    if not resource.is_file():
        raise InputError(
            f"unknown prompt template '{name}' (templates: {', '.join(template_names())}; "
            "or pass a .txt file)"
        )
    return resource.read_text(encoding="utf-8")


def placeholders(text: str) -> list[str]:
    """The placeholder names of a template text, in order of first use."""
    return list(dict.fromkeys(Template(text).get_identifiers()))


def render_text(text: str, values: Mapping[str, Any], *, source: str = "template") -> str:
    """Fill ``$name`` placeholders; a placeholder without a value is an ``InputError``."""
    template = Template(text)
    if not template.is_valid():
        raise InputError("invalid placeholder (write a literal dollar as $$)", path=source)
    missing = [name for name in placeholders(text) if name not in values]
    if missing:
        raise InputError(f"no value for placeholder(s) {missing}", path=source)
    return template.substitute({k: str(v) for k, v in values.items()})


def render(name: str, **values: Any) -> str:
    """Load template ``name`` and fill it; trailing whitespace is trimmed."""
    return render_text(load_template(name), values, source=f"prompt template '{name}'").strip()


def template_lines(name: str) -> list[str]:
    """The non-empty, non-comment (``#``) lines of a template (CLIP prompt ensembles)."""
    lines = [line.strip() for line in load_template(name).splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def label_text(label: str) -> str:
    """A label as words: ``black-rot`` -> ``black rot``."""
    return re.sub(r"[_\-]+", " ", label).strip()


def task_values(task: Task) -> dict[str, str]:
    """What every agent template may use about the task."""
    return {
        "task_title": task.title or task.name,
        "subject": task.subject,
        "labels": ", ".join(task.labels),
        "label_descriptions": "\n".join(
            f"- {label}: {task.descriptions[label]}" for label in task.labels
        ),
    }


def reevaluation_values(
    task: Task, previous: Prediction | None, evidence: EvidenceView | None
) -> dict[str, str]:
    """What the re-evaluation template may use: the previous answer and the evidence."""
    if previous is not None and previous.ok:
        prev_label = str(previous.label)
        prev_conf = f"{previous.confidence:.2f}"
        prev_reason = previous.reason or "(no reason given)"
    else:
        prev_label, prev_conf = "(none: the first attempt failed)", "-"
        prev_reason = (previous.error or "") if previous is not None else ""
    neighbours: Sequence[Any] = evidence.neighbours if evidence is not None else ()
    lines = [f"{i}. {n.label} (similarity {n.similarity:.3f})" for i, n in enumerate(neighbours, 1)]
    vote: Mapping[str, float] = evidence.vote if evidence is not None else {}
    vote_items = sorted(vote.items(), key=lambda kv: -kv[1])
    vote_text = ", ".join(f"{label} {share:.2f}" for label, share in vote_items if share > 0)
    return {
        **task_values(task),
        "previous_label": prev_label,
        "previous_confidence": prev_conf,
        "previous_reason": prev_reason,
        "neighbour_count": str(len(lines)),
        "neighbours": "\n".join(lines)
        or ("(only their vote is available)" if vote_text else "(no similar images were found)"),
        "vote": vote_text or "(no vote)",
    }


def agent_instruction(
    task: Task,
    *,
    round: int,
    previous: Prediction | None,
    evidence: EvidenceView | None,
) -> tuple[str, bool]:
    """The text an agent is asked, and whether it is a second look: the task's ``reevaluate``
    template (its previous answer and the evidence) after the first round when there is either,
    else its ``agent`` template."""
    if round > 0 and (previous is not None or evidence is not None):
        values = reevaluation_values(task, previous, evidence)
        return render(task.prompts.get("reevaluate", "reevaluate"), **values), True
    return render(task.prompts.get("agent", "agent"), **task_values(task)), False
