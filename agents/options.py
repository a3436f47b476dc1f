"""Agent options: the type each option accepts, and ``[scope.]key=value`` items from a CLI.

A kind declares its options as ``OptionType``s; values from the command line (JSON or text) and
from Python are coerced to them, and a bad one is a one-line ``InputError`` naming the spec.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.errors import InputError
from core.jsonio import parse_json

TORCH_DTYPES = ("float32", "float16", "bfloat16", "float64")


@dataclass(frozen=True)
class OptionType:
    """What one agent option accepts; ``coerce`` turns a CLI or Python value into it.

    ``kind``: int, float, bool, str, strs (one text or a list of texts), mapping, dtype.
    A ``secret`` (an API key) is never shown in an error nor recorded."""

    kind: str
    minimum: float | None = None
    exclusive: bool = False
    maximum: float | None = None
    optional: bool = False
    choices: tuple[str, ...] = ()
    secret: bool = False

    def describe(self) -> str:
        text = {
            "int": "an integer",
            "float": "a number",
            "bool": "true or false",
            "str": "a text",
            "strs": "a text or a list of texts",
            "mapping": "a mapping",
            "dtype": "a torch dtype",
        }[self.kind]
        if self.minimum is not None:
            text += f" {'>' if self.exclusive else '>='} {self.minimum:g}"
        if self.maximum is not None:
            text += f" {'and ' if self.minimum is not None else ''}<= {self.maximum:g}"
        if self.choices:
            text += f" (one of {', '.join(self.choices)})"
        return text + (" or none" if self.optional else "")

    def coerce(self, value: Any) -> Any:
        """The value as this type, or ``ValueError``."""
        if self.optional and (value is None or str(value).strip().lower() in ("none", "null")):
            return None
        out = _COERCE[self.kind](value)
        if self.minimum is not None and (
            out < self.minimum or (self.exclusive and out == self.minimum)
        ):
            raise ValueError(value)
        if self.maximum is not None and out > self.maximum:
            raise ValueError(value)
        if self.choices and str(out).lower() not in self.choices:
            raise ValueError(value)
        return str(out).lower() if self.choices and isinstance(out, str) else out


def _as_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(value)
        return int(value)
    return int(value) if isinstance(value, int) else int(str(value).strip())


def _as_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(value)
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(value)
    return out


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise ValueError(value)


def _as_str(value: Any) -> Any:
    if isinstance(value, (str, os.PathLike)):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ValueError(value)


def _as_strs(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(value)


def _as_mapping(value: Any) -> Mapping[str, Any]:
    if isinstance(value, Mapping):
        return value
    raise ValueError(value)


def _as_dtype(value: Any) -> Any:
    if isinstance(value, str):
        if value.strip().lower() not in TORCH_DTYPES:
            raise ValueError(value)
        return value.strip().lower()
    if type(value).__module__ == "torch" and type(value).__name__ == "dtype":
        return value
    raise ValueError(value)


_COERCE: dict[str, Callable[[Any], Any]] = {
    "int": _as_int,
    "float": _as_float,
    "bool": _as_bool,
    "str": _as_str,
    "strs": _as_strs,
    "mapping": _as_mapping,
    "dtype": _as_dtype,
}


def coerce_options(
    types: Mapping[str, OptionType], options: Mapping[str, Any], spec: str
) -> dict[str, Any]:
    """``options`` checked against ``types`` and coerced to them (InputError naming ``spec``)."""
    unknown = sorted(set(options) - set(types))
    if unknown:
        raise InputError(f"agent spec {spec!r}: unknown option(s) {unknown}")
    checked: dict[str, Any] = {}
    for key, value in options.items():
        try:
            checked[key] = types[key].coerce(value)
        except (ValueError, TypeError):
            shown = "<secret>" if types[key].secret else repr(value)
            raise InputError(
                f"agent spec {spec!r}: option {key}={shown} must be {types[key].describe()}"
            ) from None
    return checked


@dataclass(frozen=True)
class OptionItem:
    """One ``[scope.]key=value`` from the command line; ``scope`` is an agent kind or name
    (None: every agent whose kind takes ``key``)."""

    key: str
    value: Any
    scope: str | None = None


def parse_option_items(items: Sequence[str] | None, *, flag: str = "--option") -> list[OptionItem]:
    """``["timeout_s=30", "clip.batch_size=8"]`` -> items; values are JSON or else text."""
    out: list[OptionItem] = []
    for item in items or []:
        left, sep, raw = item.partition("=")
        scope, _, key = left.strip().rpartition(".")
        if not sep or not key.strip():
            raise InputError(f"{flag} must be [kind or name.]key=value, got {item!r}")
        try:
            value: Any = parse_json(raw)
        except InputError:
            value = raw
        out.append(OptionItem(key.strip().replace("-", "_"), value, scope.strip() or None))
    return out
