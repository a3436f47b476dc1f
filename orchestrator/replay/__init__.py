"""Replay: recorded answers played back through the real graph (agents, retriever, k-fold run)."""

from orchestrator.replay.agent import ReplayAgent, recorded_images
from orchestrator.replay.retriever import RecordedRetriever

__all__ = ["RecordedRetriever", "ReplayAgent", "recorded_images"]
