"""Engines of ``trustorch run``: the local one (this process) and Ray (shards on a cluster)."""

from orchestrator.engines.recipe import RunParts, RunRecipe, build_parts
from orchestrator.engines.settings import ENGINES, EngineSettings, check_engine_name

__all__ = ["ENGINES", "EngineSettings", "RunParts", "RunRecipe", "build_parts", "check_engine_name"]
