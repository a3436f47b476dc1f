"""The one way this project reads a JSON object out of a model's text: the whole text, a fenced
block, or the first object inside prose."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from agents.openai_compat.errors import ReplyFormatError
from core.jsonio import DEFAULT_MAX_DEPTH, nesting_depth

_FENCE = re.compile(r"```[A-Za-z0-9_-]*\s*(.*?)```", re.DOTALL)


def snippet(text: str, limit: int = 120) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _objects_in(text: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for block in _FENCE.findall(text):
        try:
            obj = json.loads(block.strip())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            found.append(obj)
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            found.append(obj)
    return found


def extract_json_object(text: str | None, *, prefer_keys: Sequence[str] = ()) -> dict[str, Any]:
    """The reply's JSON object: the whole text when it is one, else the first object found in
    fenced blocks and then in the prose, preferring one with a key of ``prefer_keys`` (any
    case). ``ReplyFormatError`` when there is none."""
    if text is None or not text.strip():
        raise ReplyFormatError("empty answer")
    stripped = text.strip()
    if nesting_depth(stripped) > DEFAULT_MAX_DEPTH:
        raise ReplyFormatError(f"the answer nests JSON deeper than {DEFAULT_MAX_DEPTH} levels")
    try:
        whole = json.loads(stripped)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, dict):
        return whole
    candidates = _objects_in(stripped)
    wanted = {k.lower() for k in prefer_keys}
    preferred = [obj for obj in candidates if any(str(k).lower() in wanted for k in obj)]
    if preferred or candidates:
        return (preferred or candidates)[0]
    raise ReplyFormatError(f"invalid JSON in the answer: {snippet(text)!r}")
