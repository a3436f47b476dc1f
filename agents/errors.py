"""Errors of the agents layer: weights that cannot be loaded, an agent that cannot answer."""

from __future__ import annotations

from core.errors import TrustorchError


class ModelLoadError(TrustorchError):
    """Model weights or processor could not be loaded (says what was tried)."""


class AgentError(TrustorchError):
    """An agent could not produce an answer (network, server, parsing)."""
