"""The LangGraph orchestrator: trust-aware fusion, the retrieval loop, the runner and the CLI.

The graph itself (``orchestrator.graph.build_graph``) is imported from its module: it pulls in
LangGraph, which the light commands do not need. The names below are imported when first used,
so that ``trustorch --help`` (``orchestrator.cli``) imports none of the layers beneath.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.decision import Assessment, Decision
    from orchestrator.policies.base import FusionPolicy

_EXPORTS = {
    "Assessment": "orchestrator.decision",
    "Decision": "orchestrator.decision",
    "FusionPolicy": "orchestrator.policies.base",
}

__all__ = ["Assessment", "Decision", "FusionPolicy"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
