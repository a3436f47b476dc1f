"""The leaf-disease demo: agent discovery, one HTML report per image, a web page."""

from orchestrator.demo.availability import Availability, discover_agents
from orchestrator.demo.pipeline import DemoPipeline, NoAgentError, build_pipeline
from orchestrator.demo.report import TrustCard, render_report, write_report

__all__ = [
    "Availability",
    "DemoPipeline",
    "NoAgentError",
    "TrustCard",
    "build_pipeline",
    "discover_agents",
    "render_report",
    "write_report",
]
