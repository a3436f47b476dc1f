"""What a run needs to build its graph in any process: the recipe (plain, picklable settings
read from the command line) and the parts built from it (task, agents, policy).

The local engine builds the parts once in the CLI's process; the Ray engine sends the recipe to
each worker, which builds them once and runs every shard it gets with them. Paths in a recipe
(trust file, policy file, index folder, ``py:`` agent files) must be readable where the parts are
built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.agent_kinds import RetrievalSettings, agent_registry
from orchestrator.components import LlmSettings


@dataclass(frozen=True)
class RunRecipe:
    """The settings that build a run's agents, policy and graph (``run_config`` is what
    ``--resume`` checks, computed once by the driver)."""

    specs: tuple[str, ...]
    agent_options: tuple[str, ...]
    task_name: str
    run_config: dict[str, Any]
    trust: Path | None = None
    policy_name: str = "trust"
    policy_file: Path | None = None
    alpha: float | None = None
    max_rounds: int = 2
    agent_timeout: float | None = None
    retrieval: RetrievalSettings = field(default_factory=RetrievalSettings)
    want_retriever: bool = False
    llm: LlmSettings = field(default_factory=LlmSettings)
    concurrency: int = 4
    """Images in flight in one process (``-j``)."""
    endpoint_concurrency: int | None = None
    """Calls in flight to one server (``--endpoint-concurrency``; default: ``concurrency`` times
    the agents on that server, per process). With ``cluster_limits``: the cluster's total."""
    cluster_limits: str | None = None
    """The Ray actor that shares each server's limit among the workers
    (``engines.cluster_limits``); None: every process keeps its own."""
    clip_actor: str | None = None
    """The Ray actor that runs the shared CLIP for every worker (``engines.clip_actor``); None:
    each process loads its own."""
    workers: int = 1
    """Processes that build this recipe at once: the default limit of a server shared by the
    cluster is that many times one process's."""


@dataclass
class RunParts:
    """The built parts of a run; ``graph(saver)`` wires them with a checkpointer."""

    recipe: RunRecipe
    task: Any
    agents: list[Any]
    retriever: Any
    policy: Any
    profiles: dict[str, Any]
    uses_profiles: bool
    notes: list[str]

    def graph(self, checkpointer: Any) -> Any:
        from orchestrator.graph import build_graph

        return build_graph(
            task=self.task,
            agents=self.agents,
            policy=self.policy,
            retriever=self.retriever,
            max_rounds=self.recipe.max_rounds,
            agent_timeout_s=self.recipe.agent_timeout,
            checkpointer=checkpointer,
            configuration=self.recipe.run_config,
        )

    def agents_without_profile(self) -> list[str]:
        return sorted(
            name
            for name, profile in self.profiles.items()
            if self.uses_profiles and getattr(profile, "default", False)
        )


def shared_clip_needed(recipe: RunRecipe) -> tuple[bool, str | None]:
    """Whether an agent of ``recipe`` uses the run's shared CLIP (a bare ``clip``, ``retrieval``;
    ``clip:<model>`` loads its own), and which model that is (None: the default)."""
    from orchestrator.components import shared_clip_model

    registry = agent_registry(recipe.retrieval)
    parsed = [registry.parse(spec) for spec in recipe.specs]
    model = shared_clip_model(parsed, recipe.retrieval)
    uses = recipe.want_retriever or any(
        s.kind == "retrieval" or (s.kind == "clip" and not s.target) for s in parsed
    )
    return uses, model


def calls_servers(recipe: RunRecipe) -> bool:
    """Whether ``recipe`` calls OpenAI-compatible servers (an ``openai`` agent, the ``llm``
    policy): the runs whose endpoint limits the cluster shares."""
    registry = agent_registry(recipe.retrieval)
    kinds = {registry.parse(spec).kind for spec in recipe.specs}
    return "openai" in kinds or recipe.policy_name == "llm"


def build_parts(recipe: RunRecipe, *, trust_profiles: Any = None, fitted: Any = None) -> RunParts:
    """Agents (through the registry), trust profiles and the policy of ``recipe``; the trust
    profiles and the fitted policy file may be given already loaded."""
    from agents.openai_compat import EndpointLimits, ServerFeatureTable
    from agents.options import parse_option_items
    from core.task import load_task
    from eval.profile import load_trust_profiles
    from orchestrator.components import build_agents, build_policy, load_profiles

    task = load_task(recipe.task_name)
    if trust_profiles is None and recipe.trust is not None:
        trust_profiles = load_trust_profiles(recipe.trust)
    if fitted is None and recipe.policy_file is not None:
        from orchestrator.policies.policy_file import load_fitted_policy

        fitted = load_fitted_policy(recipe.policy_file)
    registry = agent_registry(recipe.retrieval)
    parsed = [registry.parse(spec) for spec in recipe.specs]
    items = parse_option_items(list(recipe.agent_options), flag="--agent-option")
    options = registry.assign_options(parsed, items, flag="--agent-option")
    servers = ServerFeatureTable()
    # -j images in flight, each with every agent's call in flight: what a server must take.
    make_limit = None
    if recipe.cluster_limits is not None:
        from orchestrator.engines.cluster_limits import cluster_limit_factory

        scale = 1 if recipe.endpoint_concurrency is not None else recipe.workers
        make_limit = cluster_limit_factory(recipe.cluster_limits, scale=scale)
    limits = EndpointLimits(
        concurrency=recipe.endpoint_concurrency,
        per_client=recipe.concurrency,
        make_limit=make_limit,
    )
    load_clip = None
    if recipe.clip_actor is not None:
        from orchestrator.engines.clip_actor import remote_clip_loader

        load_clip = remote_clip_loader(recipe.clip_actor)
    built = build_agents(
        parsed,
        task=task,
        retrieval=recipe.retrieval,
        want_retriever=recipe.want_retriever,
        options=options,
        servers=servers,
        limits=limits,
        load_clip=load_clip,
    )
    sources = [a.name for a in built.agents]
    retrieval_name = getattr(built.retriever, "name", None)
    if retrieval_name and retrieval_name not in sources:
        sources.append(retrieval_name)
    profiles, profile_notes = load_profiles(recipe.trust, sources, task=task, loaded=trust_profiles)
    uses_profiles = fitted is None or fitted.chosen == "trust"
    notes: list[str] = []
    if uses_profiles:
        notes += profile_notes
    elif recipe.trust is not None:
        notes.append(f"the policy file chose {fitted.chosen}: the trust profiles are not used")
    policy = build_policy(
        recipe.policy_name,
        task=task,
        profiles=profiles,
        llm=recipe.llm,
        retrieval_source=retrieval_name,
        sources=sources,
        fitted=fitted,
        servers=servers,
        limits=limits,
    )
    if recipe.alpha is not None and recipe.policy_file is not None:
        from orchestrator.policies.conformal import ConformalPolicy, load_conformal_rule

        policy = ConformalPolicy(
            policy, load_conformal_rule(recipe.policy_file, alpha=recipe.alpha)
        )
    return RunParts(
        recipe=recipe,
        task=task,
        agents=built.agents,
        retriever=built.retriever,
        policy=policy,
        profiles=profiles,
        uses_profiles=uses_profiles,
        notes=notes,
    )
