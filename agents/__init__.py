"""Vision agents behind one interface, and the shared types every other folder builds on."""

from agents.clip_agent import ClipAgent
from agents.clip_model import ClipModel, load_clip
from agents.errors import (
    AgentError,
    InputError,
    ModelLoadError,
    NotFittedError,
    StoreError,
    TrustorchError,
)
from agents.hf_vlm import HFVLMAgent, load_vlm
from agents.images import open_image
from agents.openai_agent import OpenAIAgent
from agents.openai_client import OpenAIChatClient
from agents.records import Record, RecordSet, read_records
from agents.replay import ReplayAgent
from agents.spec import AgentSpec, build_agent, parse_agent_spec
from agents.tasks import load_task, preset_names
from agents.types import Agent, EvidenceView, ImageRef, LabelledImage, Neighbour, Prediction, Task

__all__ = [
    "Agent",
    "AgentError",
    "AgentSpec",
    "ClipAgent",
    "ClipModel",
    "EvidenceView",
    "HFVLMAgent",
    "ImageRef",
    "InputError",
    "LabelledImage",
    "ModelLoadError",
    "Neighbour",
    "NotFittedError",
    "OpenAIAgent",
    "OpenAIChatClient",
    "Prediction",
    "Record",
    "RecordSet",
    "ReplayAgent",
    "StoreError",
    "Task",
    "TrustorchError",
    "build_agent",
    "load_clip",
    "load_task",
    "load_vlm",
    "open_image",
    "parse_agent_spec",
    "preset_names",
    "read_records",
]
