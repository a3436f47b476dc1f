"""Errors of the retrieval layer."""

from __future__ import annotations

from core.errors import TrustorchError


class StoreError(TrustorchError):
    """The vector store refused an operation (model or dimension mismatch, server down)."""
