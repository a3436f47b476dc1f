"""Vision agents behind one interface: CLIP zero-shot, OpenAI-compatible VLMs, local VLMs."""

from agents.clip_agent import ClipAgent
from agents.clip_model import ClipModel, load_clip
from agents.errors import AgentError, ModelLoadError
from agents.hf_vlm import HFVLMAgent, load_vlm
from agents.openai_agent import OpenAIAgent
from agents.openai_compat import OpenAIChatClient
from agents.options import OptionType
from agents.registry import (
    AgentKind,
    AgentRegistry,
    AgentSpec,
    BuildContext,
    build_agent,
    default_registry,
    parse_agent_spec,
)
from agents.types import Agent, EvidenceView, Neighbour, Prediction

__all__ = [
    "Agent",
    "AgentError",
    "AgentKind",
    "AgentRegistry",
    "AgentSpec",
    "BuildContext",
    "ClipAgent",
    "ClipModel",
    "EvidenceView",
    "HFVLMAgent",
    "ModelLoadError",
    "Neighbour",
    "OpenAIAgent",
    "OpenAIChatClient",
    "OptionType",
    "Prediction",
    "build_agent",
    "default_registry",
    "load_clip",
    "load_vlm",
    "parse_agent_spec",
]
