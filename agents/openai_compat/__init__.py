"""The adapter to OpenAI and OpenAI-compatible chat servers: client, server features, endpoint
concurrency limits, prices, JSON replies."""

from agents.openai_compat.client import OpenAIChatClient
from agents.openai_compat.errors import ChatError, ReplyFormatError
from agents.openai_compat.json_text import extract_json_object
from agents.openai_compat.limits import EndpointLimit, EndpointLimits, LimitState, endpoint_key
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
    "EndpointLimit",
    "EndpointLimits",
    "JsonReply",
    "LimitState",
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
    "endpoint_key",
    "extract_json_object",
    "load_price_table",
    "price_for",
]
