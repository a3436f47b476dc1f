"""Reading a VLM's answer: the JSON object (bare, fenced or inside prose), the label normalised
to the task's labels, and a label distribution from token log-probabilities when present.

Pure functions; a bad answer is an ``AgentError`` whose message says what was wrong.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agents.errors import AgentError
from agents.prompting import label_text
from core.task import Task

_FENCE = re.compile(r"```[A-Za-z0-9_-]*\s*(.*?)```", re.DOTALL)
_LABEL_KEYS = ("label", "category", "class", "prediction")
_LABEL_VALUE_START = re.compile(r'"(?:label|category|class|prediction)"\s*:\s*"', re.IGNORECASE)


@dataclass(frozen=True)
class ParsedAnswer:
    """A valid answer: a task label, the model's reason and its self-reported confidence."""

    label: str
    reason: str
    confidence: float | None
    raw_label: str


@dataclass(frozen=True)
class TokenChoice:
    """One generated token, its log-probability and the top alternatives at its position."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


def answer_schema(task: Task) -> dict[str, Any]:
    """The JSON schema of an answer: the label as an enum of the task's labels first (so its
    token log-probabilities are not conditioned on the reason), a reason, a confidence."""
    return {
        "type": "object",
        "properties": {
            "label": {"type": "string", "enum": list(task.labels)},
            "reason": {"type": "string"},
            "confidence": {
                "type": "number",
                "description": "probability in [0, 1] that the label is right",
            },
        },
        "required": ["label", "reason", "confidence"],
        "additionalProperties": False,
    }


def _snippet(text: str, limit: int = 120) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def extract_json_object(text: str) -> dict[str, Any]:
    """The answer's JSON object: the whole text, a fenced block, or the first object in prose
    (preferring one with a label key)."""
    stripped = text.strip()
    candidates: list[dict[str, Any]] = []
    try:
        whole = json.loads(stripped)
        if isinstance(whole, dict):
            return whole
    except json.JSONDecodeError:
        pass
    for block in _FENCE.findall(stripped):
        try:
            obj = json.loads(block.strip())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            candidates.append(obj)
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", stripped):
        try:
            obj, _ = decoder.raw_decode(stripped, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            candidates.append(obj)
    for obj in candidates:
        if any(k.lower() in _LABEL_KEYS for k in obj):
            return obj
    if candidates:
        return candidates[0]
    raise AgentError(f"invalid JSON in the answer: {_snippet(text)!r}")


def _confidence(value: Any) -> float | None:
    if isinstance(value, str):
        text = value.strip()
        percent = text.endswith("%")
        try:
            number = float(text.rstrip("%").strip())
        except ValueError:
            return None
        value = number / 100 if percent else number
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    if math.isnan(number) or number < 0:
        return None
    if 1.0 < number <= 100.0:
        number /= 100.0
    return min(number, 1.0)


def parse_answer(text: str | None, task: Task) -> ParsedAnswer:
    """Validate a model's text answer against the task; ``AgentError`` says what is wrong."""
    if text is None or not text.strip():
        raise AgentError("empty answer")
    obj = extract_json_object(text)
    fields = {str(k).lower(): v for k, v in obj.items()}
    raw = next((fields[k] for k in _LABEL_KEYS if k in fields), None)
    if not isinstance(raw, str):
        raise AgentError(f"the answer has no label field: {_snippet(json.dumps(obj))!r}")
    label = task.normalise_label(raw)
    if label is None:
        raise AgentError(
            f"answer label {raw!r} is not one of the task's labels ({', '.join(task.labels)})"
        )
    reason = fields.get("reason", fields.get("explanation", ""))
    return ParsedAnswer(
        label=label,
        reason=str(reason) if reason is not None else "",
        confidence=_confidence(fields.get("confidence")),
        raw_label=raw,
    )


def _label_forms(task: Task) -> dict[str, set[str]]:
    forms = {label: {label.lower(), label_text(label).lower()} for label in task.labels}
    for synonym, target in task.synonyms.items():
        forms[target].add(synonym.lower())
    return forms


def _labels_starting_with(fragment: str, forms: Mapping[str, set[str]]) -> list[str]:
    core = fragment.lower().lstrip().rstrip("\"',}. \n")
    if not core:
        return []
    return [label for label, fs in forms.items() if any(f.startswith(core) for f in fs)]


def label_distribution(
    tokens: Sequence[TokenChoice], task: Task, label: str, raw_label: str | None = None
) -> dict[str, float] | None:
    """The distribution over the task's labels at the token where the answer's label starts.

    Each top alternative at that position goes to the label it begins (an ambiguous prefix goes
    to the answered label when it is among its candidates, else is split); the mass is then
    normalised over the labels. None when the position or any label mass cannot be found.
    """
    if not tokens:
        return None
    text = "".join(t.token for t in tokens)
    match = _LABEL_VALUE_START.search(text)
    if match is not None:
        start = match.end()
    else:
        needle = (raw_label or label).lower()
        start = text.lower().find(needle)
        if start < 0:
            return None
    offset = 0
    position = None
    for i, choice in enumerate(tokens):
        if offset <= start < offset + len(choice.token):
            position = i
            break
        offset += len(choice.token)
    if position is None:
        return None
    chosen = tokens[position]
    prefix = text[offset:start]
    alternatives = dict(chosen.top)
    alternatives.setdefault(chosen.token, chosen.logprob)
    forms = _label_forms(task)
    mass = dict.fromkeys(task.labels, 0.0)
    for token, logprob in alternatives.items():
        if prefix:
            if not token.startswith(prefix):
                continue
            token = token[len(prefix) :]
        matches = _labels_starting_with(token, forms)
        if not matches:
            continue
        p = math.exp(logprob)
        if len(matches) == 1:
            mass[matches[0]] += p
        elif label in matches:
            mass[label] += p
        else:
            for m in matches:
                mass[m] += p / len(matches)
    total = sum(mass.values())
    if total <= 0 or mass[label] <= 0:
        return None
    return {k: v / total for k, v in mass.items()}
