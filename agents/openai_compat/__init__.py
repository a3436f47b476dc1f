"""The adapter to OpenAI and OpenAI-compatible chat servers: client, server features, prices,
JSON replies."""

from agents.openai_compat.client import OpenAIChatClient
from agents.openai_compat.errors import ChatError, ReplyFormatError
from agents.openai_compat.json_text import extract_json_object
from agents.openai_compat.modes import (
    MODES,
    ReplySchema,
    ServerFeatures,
    ServerFeatureTable,
    StructuredMode,
)
from agents.openai_compat.pricing import ModelPrice, call_cost_usd, load_price_table, price_for
from agents.openai_compat.results import ChatResult, JsonReply, TokenChoice
from agents.openai_compat.secret import Secret

__all__ = [
    "MODES",
    "ChatError",
    "ChatResult",
    "JsonReply",
    "ModelPrice",
    "OpenAIChatClient",
    "ReplyFormatError",
    "ReplySchema",
    "Secret",
    "ServerFeatureTable",
    "ServerFeatures",
    "StructuredMode",
    "TokenChoice",
    "call_cost_usd",
    "extract_json_object",
    "load_price_table",
    "price_for",
]
