"""Reading a VLM's answer: its JSON object (through the adapter's one parser), the label
normalised to the task's labels, and a label distribution from token log-probabilities when
present.

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
from agents.openai_compat import ReplySchema, TokenChoice, extract_json_object
from agents.openai_compat.json_text import snippet
from agents.prompting import label_text
from core.task import Task

_LABEL_KEYS = ("label", "category", "class", "prediction")
_LABEL_VALUE_START = re.compile(r'"(?:label|category|class|prediction)"\s*:\s*"', re.IGNORECASE)


@dataclass(frozen=True)
class ParsedAnswer:
    """A valid answer: a task label, the model's reason and its self-reported confidence."""

    label: str
    reason: str
    confidence: float | None
    raw_label: str


def answer_schema(task: Task) -> ReplySchema:
    """The JSON schema of an answer: the label as an enum of the task's labels first (so its
    token log-probabilities are not conditioned on the reason), a reason, a confidence."""
    schema = {
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
    return ReplySchema(name="answer", schema=schema)


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
    obj = extract_json_object(text, prefer_keys=_LABEL_KEYS)
    fields = {str(k).lower(): v for k, v in obj.items()}
    raw = next((fields[k] for k in _LABEL_KEYS if k in fields), None)
    if not isinstance(raw, str):
        raise AgentError(f"the answer has no label field: {snippet(json.dumps(obj))!r}")
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


def _probability(logprob: float) -> float | None:
    """exp(logprob), or None for a logprob that is no probability (NaN, +inf, > 0 by more
    than rounding)."""
    if not math.isfinite(logprob) and logprob != -math.inf:
        return None
    if logprob > 1e-6:
        return None
    return min(math.exp(logprob), 1.0)


def label_distribution(
    tokens: Sequence[TokenChoice], task: Task, label: str, raw_label: str | None = None
) -> dict[str, float] | None:
    """The distribution over the task's labels at the token where the answer's label starts.

    Each observed token at that position (the chosen one and the top alternatives) goes to the
    label it begins (an ambiguous prefix goes to the answered label when it is among its
    candidates, else is split). The observed probabilities are kept as they are; the mass not
    observed on any label (1 minus their sum) is spread evenly over the labels that got none,
    or over the labels other than the answer when every label got some. A token whose
    logprob is not a probability (NaN, > 0) is ignored. None when the position cannot be found
    or the answered label got no observed probability.
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
        p = _probability(logprob)
        if p is None:
            continue
        if prefix:
            if not token.startswith(prefix):
                continue
            token = token[len(prefix) :]
        matches = _labels_starting_with(token, forms)
        if not matches:
            continue
        if len(matches) == 1:
            mass[matches[0]] += p
        elif label in matches:
            mass[label] += p
        else:
            for m in matches:
                mass[m] += p / len(matches)
    if mass[label] <= 0:
        return None
    observed = sum(mass.values())
    if observed > 1.0:  # rounding in the server's logprobs: no mass is left over
        return {k: v / observed for k, v in mass.items()}
    unseen = [k for k, v in mass.items() if v <= 0] or [k for k in mass if k != label]
    for k in unseen:
        mass[k] += (1.0 - observed) / len(unseen)
    return mass
