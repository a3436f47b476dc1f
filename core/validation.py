"""Field types shared by the schemas of the product's files (trust profiles, policy files,
tasks), and the one-line description of a pydantic ``ValidationError``.

The number types are strict: a string, a boolean or (for counts) a float is refused, not
coerced. Probabilities and finite numbers refuse NaN and infinities, which Python's JSON parser
accepts (``NaN``, ``Infinity``) but no strict JSON reader does.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field, Strict, ValidationError
from pydantic_core import ErrorDetails


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def _probability(value: float) -> float:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError("must be a finite number in [0, 1]")
    return value


def _positive(value: float) -> float:
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError("must be a finite number > 0")
    return value


def _non_negative(value: float) -> float:
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError("must be a finite number >= 0")
    return value


def _name(value: str) -> str:
    if not value.strip():
        raise ValueError("must be a non-empty string")
    return value


FiniteFloat = Annotated[float, Strict(), AfterValidator(_finite)]
"""A finite number (an int is accepted)."""
Probability = Annotated[
    float,
    Strict(),
    AfterValidator(_probability),
    Field(json_schema_extra={"minimum": 0, "maximum": 1}),
]
"""A finite number in [0, 1]."""
PositiveFloat = Annotated[
    float, Strict(), AfterValidator(_positive), Field(json_schema_extra={"exclusiveMinimum": 0})
]
NonNegativeFloat = Annotated[
    float, Strict(), AfterValidator(_non_negative), Field(json_schema_extra={"minimum": 0})
]
Count = Annotated[int, Strict(), Field(ge=0)]
"""A whole number >= 0 (not a float, not a boolean)."""
PositiveCount = Annotated[int, Strict(), Field(ge=1)]
Name = Annotated[str, Strict(), AfterValidator(_name), Field(json_schema_extra={"minLength": 1})]
"""A string with something in it besides spaces (an agent, a label, a source)."""


def check_strictly_increasing(values: Sequence[float], what: str) -> None:
    """ValueError naming ``what`` when ``values`` do not strictly increase."""
    for i in range(1, len(values)):
        if not values[i] > values[i - 1]:
            raise ValueError(
                f"{what} must be strictly increasing ({what}[{i - 1}] = {values[i - 1]!r}, "
                f"{what}[{i}] = {values[i]!r})"
            )


_MESSAGES = {
    "missing": "is missing",
    "extra_forbidden": "is not a known field",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "union_tag_not_found": "must name its kind (the tagged field is missing)",
}


def _got(value: Any) -> str:
    if isinstance(value, dict | list | tuple):
        return f", got {type(value).__name__ if not isinstance(value, dict) else 'an object'}"
    text = repr(value)
    return f", got {text if len(text) <= 40 else text[:37] + '...'}"


def error_message(error: ErrorDetails) -> str:
    """Our wording of one pydantic error (a ``ValidationError.errors()`` entry)."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "value_error":
        value = error.get("input")
        scalar = not isinstance(value, dict | list | tuple | BaseModel)
        return str(ctx.get("error", error["msg"])) + (_got(value) if scalar else "")
    if kind == "literal_error":
        return f"must be {ctx.get('expected')}{_got(error.get('input'))}"
    if kind == "union_tag_invalid":
        return f"must be one of {ctx.get('expected_tags')}{_got(ctx.get('tag'))}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        sign = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<="}
        bound = next(iter(ctx.values()), "?")
        return f"must be {sign.get(kind, '<')} {bound}{_got(error.get('input'))}"
    if kind in ("too_short", "too_long"):
        return f"must have {'at least' if kind == 'too_short' else 'at most'} " + (
            f"{ctx.get('min_length', ctx.get('max_length'))} item(s)"
        )
    if kind in _MESSAGES:
        got = "" if kind in ("missing", "extra_forbidden") else _got(error.get("input"))
        return _MESSAGES[kind] + got
    msg = str(error["msg"])
    return msg[:1].lower() + msg[1:]


def field_path(loc: Sequence[Any]) -> str:
    """``('a', 'b', 3, 'c')`` as ``a.b[3].c``."""
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def first_error(error: ValidationError, *, tagged: Collection[str] = ()) -> tuple[list[Any], str]:
    """(location, message) of the first error of ``error``: the location as pydantic gives it,
    less the tag it adds after a field holding a tagged union (one of ``tagged``), and the
    message in our wording; a bad key of a mapping is named in the message, the location
    being the mapping."""
    first = error.errors()[0]
    loc = list(first["loc"])
    kept: list[Any] = []
    for i, item in enumerate(loc):
        if i > 0 and loc[i - 1] in tagged and isinstance(item, str):
            continue
        kept.append(item)
    message = error_message(first)
    if len(kept) >= 2 and kept[-1] == "[key]":  # a bad key of a mapping: name it
        message = f"key {kept[-2]!r} {message.removesuffix(_got(kept[-2]))}"
        kept = kept[:-2]
    return kept, message
