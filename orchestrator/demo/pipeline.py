"""The demo's pipeline: the agents this machine can run, one graph, one report per image.

Built once (CLIP loaded once, shared by the CLIP agent and the retrieval agent) and used by both
the command line and the web page.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.registry import AgentRegistry, BuildContext
from agents.types import RETRIEVAL_AGENT, Agent
from core.errors import TrustorchError
from core.images import ImageRef
from core.task import Task
from orchestrator.decision import Decision
from orchestrator.demo.availability import Availability, discover_agents
from orchestrator.demo.report import TrustCard, render_report


class NoAgentError(TrustorchError):
    """No agent can run on this machine (the message says what is missing)."""


@dataclass
class DemoPipeline:
    """A compiled graph over the available agents, and what the report shows beside it."""

    task: Task
    graph: Any
    agents: list[Agent]
    availability: Availability
    retriever: Any = None
    trust: dict[str, TrustCard] = field(default_factory=dict)

    @property
    def skipped_lines(self) -> list[str]:
        return [s.line() for s in self.availability.skipped]

    async def diagnose(self, image: ImageRef, *, truth: str | None = None) -> Decision:
        from orchestrator.graph import classify

        return await classify(self.graph, image, truth=truth)

    def report(self, decision: Decision, image_bytes: bytes | None) -> str:
        return render_report(
            decision,
            task=self.task,
            image_bytes=image_bytes,
            trust=self.trust,
            skipped=self.skipped_lines,
        )


def build_pipeline(
    *,
    task: Task,
    clip_model: str | None = None,
    index_dir: Path | None = None,
    trust_file: Path | None = None,
    max_rounds: int = 2,
    environ: Mapping[str, str] | None = None,
    device: str | None = None,
) -> DemoPipeline:
    """Discover the agents, build them (NoAgentError when none can run) and compile the graph."""
    from orchestrator.agent_kinds import RetrievalSettings, agent_registry
    from orchestrator.components import load_profiles
    from orchestrator.graph import build_graph
    from orchestrator.policies.trust import TrustPolicy

    availability, index = discover_agents(
        registry=agent_registry(),
        task=task,
        clip_model=clip_model,
        index_dir=index_dir,
        environ=environ,
        device=device,
    )
    if not availability.available:
        raise NoAgentError(availability.missing_line())
    # the index found above (its model spelled as the CLIP was renamed to) is the one retrieved
    registry = agent_registry(RetrievalSettings(index_dir=str(availability.index_dir)), index=index)
    context = BuildContext(task=task, clip=availability.clip, device=device)
    agents, retriever = build_available_agents(availability, registry, context)
    names = [a.name for a in agents]
    if retriever is not None:
        names.append(RETRIEVAL_AGENT)
    profiles, _ = load_profiles(trust_file, names, task=task)
    policy = TrustPolicy.from_profiles(profiles, retrieval_source=RETRIEVAL_AGENT)
    graph = build_graph(
        task=task, agents=agents, policy=policy, retriever=retriever, max_rounds=max_rounds
    )
    return DemoPipeline(
        task=task,
        graph=graph,
        agents=agents,
        availability=availability,
        retriever=retriever,
        trust=trust_cards(names, profiles),
    )


def build_available_agents(
    availability: Availability, registry: AgentRegistry, context: BuildContext
) -> tuple[list[Agent], Any | None]:
    """The runnable agents and the retriever, built by ``registry`` around the one loaded CLIP
    (``context.clip``)."""
    agents: list[Agent] = []
    retriever = None
    for spec in (s.spec for s in availability.available if s.spec):
        agent = registry.build(spec, context)
        if hasattr(agent, "retrieve"):
            retriever = agent
        else:
            agents.append(agent)
    return agents, retriever


def trust_cards(names: Sequence[str], profiles: Mapping[str, Any]) -> dict[str, TrustCard]:
    """One card per agent: its profile's numbers and reliability diagram, or the default note."""
    cards: dict[str, TrustCard] = {}
    for name in names:
        profile = profiles.get(name)
        if profile is None or getattr(profile, "default", False):
            cards[name] = TrustCard(
                agent=name,
                note="no trust profile: a conservative default is used (fit one with "
                "`trustorch eval trust`)",
            )
            continue
        cards[name] = TrustCard(
            agent=name,
            n=int(profile.n),
            accuracy=float(profile.accuracy),
            ece=None if profile.ece is None else float(profile.ece),
            ocr=None if profile.ocr is None else float(profile.ocr),
            note=f"ECE over {profile.ece_bins} bins; OCR at confidence > {profile.ocr_threshold:g}",
            diagram_png=reliability_png(profile),
        )
    return cards


def _bins_of(profile: Any) -> tuple[list[int], list[float], list[float]] | None:
    """(counts, mean confidence, accuracy) per bin when the profile carries them."""
    raw = getattr(profile, "reliability", None)
    if raw is None:
        return None
    get = raw.get if isinstance(raw, Mapping) else lambda key: getattr(raw, key, None)
    counts, conf, acc = get("counts"), get("mean_confidence"), get("accuracy")
    if not counts or conf is None or acc is None:
        return None
    return [int(c) for c in counts], [float(x) for x in conf], [float(x) for x in acc]


def reliability_png(profile: Any) -> bytes | None:
    """The agent's reliability diagram (``eval.plots``) as PNG bytes, or None when the profile
    holds no per-bin data. Each bin's items are rebuilt at the bin's mean confidence with the
    bin's number of right answers, which redraws the same bars."""
    bins = _bins_of(profile)
    if bins is None:
        return None
    from eval.plots import reliability_diagram

    counts, mean_conf, accuracy = bins
    confidence: list[float] = []
    correct: list[float] = []
    for count, conf, acc in zip(counts, mean_conf, accuracy, strict=True):
        right = round(acc * count) if count else 0
        confidence += [conf] * count
        correct += [1.0] * right + [0.0] * (count - right)
    if not confidence:
        return None
    with tempfile.TemporaryDirectory(prefix="trustorch-plot-") as folder:
        path = reliability_diagram(
            confidence,
            correct,
            Path(folder) / "reliability.png",
            bins=len(counts),
            title=str(profile.agent),
            ece=None if profile.ece is None else float(profile.ece),
        )
        return path.read_bytes()
