"""Token prices of chat models (USD per million tokens) and the cost of one call.

The table is data: ``DEFAULT_PRICES`` below, overridden or extended by a JSON file of the form
``{"model": {"input": 2.5, "output": 10.0}, ...}``. A model matches its exact name first, then
the longest known prefix (``gpt-4o-2024-08-06`` -> ``gpt-4o``); an unknown model (a local
server) costs 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from core.errors import InputError
from core.jsonio import read_json_file


@dataclass(frozen=True)
class ModelPrice:
    """USD per million input (prompt) and output (completion) tokens."""

    input: float
    output: float


DEFAULT_PRICES: dict[str, ModelPrice] = {
    "gpt-4o": ModelPrice(2.50, 10.00),
    "gpt-4o-mini": ModelPrice(0.15, 0.60),
    "gpt-4.1": ModelPrice(2.00, 8.00),
    "gpt-4.1-mini": ModelPrice(0.40, 1.60),
    "gpt-4.1-nano": ModelPrice(0.10, 0.40),
    "gpt-5": ModelPrice(1.25, 10.00),
    "gpt-5-mini": ModelPrice(0.25, 2.00),
    "gpt-5-nano": ModelPrice(0.05, 0.40),
    "o3-mini": ModelPrice(1.10, 4.40),
    "o4-mini": ModelPrice(1.10, 4.40),
}


def load_price_table(
    path: str | Path | None = None, *, base: Mapping[str, ModelPrice] | None = None
) -> dict[str, ModelPrice]:
    """``base`` (the defaults) updated with the entries of a JSON price file, if given."""
    table = dict(DEFAULT_PRICES if base is None else base)
    if path is None:
        return table
    source = str(path)
    data = read_json_file(path, what="price file")
    if not isinstance(data, dict):
        raise InputError('expected an object {"model": {"input": ..., "output": ...}}', path=source)
    for model, entry in data.items():
        try:
            price = ModelPrice(input=float(entry["input"]), output=float(entry["output"]))
        except (TypeError, KeyError, ValueError):
            raise InputError(
                'expected {"input": <USD per 1M tokens>, "output": <USD per 1M tokens>}',
                path=source,
                field=str(model),
            ) from None
        if price.input < 0 or price.output < 0:
            raise InputError("prices must be >= 0", path=source, field=str(model))
        table[str(model)] = price
    return table


def price_for(model: str, prices: Mapping[str, ModelPrice]) -> ModelPrice | None:
    """The price of ``model``: exact name, else the longest known prefix, else None."""
    if model in prices:
        return prices[model]
    prefixes = [name for name in prices if model.startswith(name)]
    return prices[max(prefixes, key=len)] if prefixes else None


def call_cost_usd(
    model: str, prompt_tokens: int, completion_tokens: int, prices: Mapping[str, ModelPrice]
) -> float:
    """USD cost of one call from its token usage (0.0 for a model without a price)."""
    price = price_for(model, prices)
    if price is None:
        return 0.0
    return (prompt_tokens * price.input + completion_tokens * price.output) / 1_000_000
