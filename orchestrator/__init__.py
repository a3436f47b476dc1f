"""The LangGraph orchestrator: trust-aware fusion, the retrieval loop, the runner and the CLI.

The graph itself (``orchestrator.graph.build_graph``) is imported from its module: it pulls in
LangGraph, which the light commands do not need.
"""

from orchestrator.decision import Assessment, Decision
from orchestrator.policies.base import FusionPolicy

__all__ = ["Assessment", "Decision", "FusionPolicy"]
