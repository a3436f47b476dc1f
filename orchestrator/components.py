"""Build what a run needs from command-line strings: agents, trust profiles, the policy.

Agents come from the registry of ``orchestrator.agent_kinds.agent_registry`` (the agents layer's
kinds plus ``retrieval``, ``replay:`` and ``py:``); any spec may start with ``<name>=`` to name the
agent (``q=replay:case3.csv#qwen``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agents.openai_compat.limits import EndpointLimits
from agents.openai_compat.modes import ServerFeatureTable
from agents.registry import AgentSpec, BuildContext
from agents.types import REEVAL_SUFFIX, Agent
from core.errors import InputError
from core.task import Task
from orchestrator.agent_kinds import RetrievalSettings, agent_registry

if TYPE_CHECKING:
    from orchestrator.policies.policy_file import FittedPolicyFile

LLM_POLICY = "llm"


@dataclass(frozen=True)
class LlmSettings:
    """The orchestrator LLM of the ``llm`` policy (any OpenAI-compatible server)."""

    model: str | None = None
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 120.0
    price_file: str | None = None


@dataclass
class BuiltAgents:
    agents: list[Agent]
    retriever: Any = None
    notes: list[str] = field(default_factory=list)


def shared_clip_model(parsed: Sequence[AgentSpec], settings: RetrievalSettings) -> str | None:
    """The CLIP the agents share: ``--clip-model``, else the first ``clip:<model>`` (retrieval
    embeds with it too), else None (the default model)."""
    if settings.clip_model is not None:
        return settings.clip_model
    targets = [s.target for s in parsed if s.kind == "clip" and s.target]
    return targets[0] if targets else None


def build_agents(
    specs: Sequence[str | AgentSpec],
    *,
    task: Task,
    retrieval: RetrievalSettings | None = None,
    want_retriever: bool = False,
    options: Sequence[Mapping[str, Any]] | None = None,
    servers: ServerFeatureTable | None = None,
    limits: EndpointLimits | None = None,
    load_clip: Callable[[str | None], Any] | None = None,
) -> BuiltAgents:
    """Agents in spec order, ``options[i]`` going to the i-th (checked by its kind), sharing one
    CLIP model (and, for OpenAI-compatible agents, the tables ``servers`` and ``limits``); the
    retrieval agent (or, with ``want_retriever``, a new one over the index) doubles as the
    graph's retriever. ``load_clip`` gives the shared CLIP from its name (default
    ``agents.clip_model.load_clip``; ``--engine ray``: the run's CLIP actor)."""
    if not specs:
        raise InputError("give at least one --agent (e.g. --agent clip)")
    settings = retrieval or RetrievalSettings()
    registry = agent_registry(settings)
    parsed = [s if isinstance(s, AgentSpec) else registry.parse(s) for s in specs]
    settings = dataclasses.replace(settings, clip_model=shared_clip_model(parsed, settings))
    shared: list[Any] = []

    def clip() -> Any:
        if not shared:
            from agents.clip_model import load_clip as load_here

            shared.append((load_clip or load_here)(settings.clip_model))
        return shared[0]

    context = BuildContext(
        task=task,
        clip=clip,
        clip_model=settings.clip_model,
        servers=servers if servers is not None else ServerFeatureTable(),
        limits=limits if limits is not None else EndpointLimits(),
    )
    chosen = list(options) if options is not None else [{} for _ in parsed]
    agents = [registry.build(s, context, o) for s, o in zip(parsed, chosen, strict=True)]
    retriever = next((a for a in agents if hasattr(a, "retrieve")), None)
    if retriever is None and want_retriever:
        retriever = registry.build("retrieval", context)
    return BuiltAgents(agents=agents, retriever=retriever)


def _check_profile(profile: Any, key: str, task: Task, path: str | Path | None) -> None:
    """InputError unless ``profile`` is on the task's labels with a k x (>= k) confusion."""
    k = len(task.labels)
    where = str(path) if path is not None else None
    if tuple(profile.labels) != tuple(task.labels):
        raise InputError(
            f"trust profile of agent '{key}' is for labels {list(profile.labels)}, "
            f"not the task's {list(task.labels)} (fit it on this task: trustorch eval trust)",
            path=where,
        )
    confusion = profile.confusion
    if len(confusion) != k or any(len(row) < k for row in confusion):
        shape = f"{len(confusion)} x {[len(row) for row in confusion]}"
        raise InputError(
            f"trust profile of agent '{key}' has a confusion matrix of {shape}, "
            f"not {k} rows of at least {k} columns",
            path=where,
        )


def load_profiles(
    path: str | Path | None,
    agents: Sequence[str],
    *,
    task: Task,
    loaded: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Trust profiles of ``agents`` (and their ``<agent>@reeval`` second-look profiles) from
    ``path`` (or ``loaded``, the profiles already read from it); an agent without one gets the
    conservative default, and a note says so. A profile on other labels than the task's is an
    InputError."""
    from agents.types import REEVAL_SUFFIX
    from eval.profile import default_trust_profile, load_trust_profiles
    from orchestrator.replay.agent import INITIAL_SUFFIX

    if loaded is None:
        loaded = load_trust_profiles(path) if path is not None else {}
    loaded = dict(loaded)
    profiles: dict[str, Any] = {}
    notes: list[str] = []
    for name in agents:
        first = f"{name}{INITIAL_SUFFIX}"
        if first in loaded and name in loaded and f"{name}{REEVAL_SUFFIX}" not in loaded:
            # Profiles fitted on a study-style file (X_initial = first look, X = second look),
            # the convention replay agents read: file them under the names the policy uses.
            loaded[f"{name}{REEVAL_SUFFIX}"], loaded[name] = loaded[name], loaded[first]
            notes.append(f"profiles '{first}' and '{name}' read as {name}'s first and second look")
        second = f"{name}{REEVAL_SUFFIX}"
        if second in loaded:
            _check_profile(loaded[second], second, task, path)
            profiles[second] = loaded[second]
        if name in loaded:
            _check_profile(loaded[name], name, task, path)
            profiles[name] = loaded[name]
            continue
        profiles[name] = default_trust_profile(name, task.labels)
        where = f"in {path}" if path is not None else "(no --trust file)"
        notes.append(
            f"agent '{name}' has no trust profile {where}: using the conservative default "
            "(chance accuracy, confidence shrunk toward 1/k)"
        )
    return profiles, notes


def _check_llm_settings(settings: LlmSettings) -> tuple[str, str | None]:
    """The model and API key of the ``llm`` policy; an InputError says what is missing."""
    if not settings.model:
        raise InputError(
            "the llm policy needs --llm-model (the orchestrator model, e.g. o3-mini, or the "
            "model name your OpenAI-compatible server serves)"
        )
    key = os.environ.get(settings.api_key_env)
    if not key and not (settings.base_url or os.environ.get("OPENAI_BASE_URL")):
        raise InputError(
            f"the llm policy needs an API key: set {settings.api_key_env}, or pass "
            "--llm-base-url for a local OpenAI-compatible server (llama.cpp, vLLM, Ollama)"
        )
    return settings.model, key


def build_policy(
    name: str,
    *,
    task: Task,
    profiles: Mapping[str, Any],
    llm: LlmSettings | None = None,
    retrieval_source: str | None = None,
    sources: Sequence[str] | None = None,
    fitted: FittedPolicyFile | None = None,
    servers: ServerFeatureTable | None = None,
    limits: EndpointLimits | None = None,
) -> Any:
    """The fusion policy ``name`` from ``orchestrator.policies`` (for ``llm``, with its client).

    ``retrieval_source`` names the retriever's agent (None: no retriever): every policy then
    counts its vote once (as evidence), not a second time as that agent's answer. ``sources``
    (the agents and the retriever) are what ``single:<source>`` may name. ``fitted``: a saved
    policy file (``--policy-file``), for the trust policy only: the family its ``selection``
    chose decides (the trust policy with the file's settings, or the fitted best single
    source, Dawid-Skene or stacking). ``servers``: the table the run's agents were built with,
    so the ``llm`` policy's client uses what they learnt about a shared server; ``limits``:
    their endpoint limits, so it shares a server's concurrency with them."""
    if fitted is not None and name != "trust":
        raise InputError(
            f"--policy-file holds trust policy settings: use --policy trust, not {name!r}"
        )
    if fitted is not None and fitted.chosen != "trust":
        return _fitted_family_policy(fitted, task, retrieval_source, sources)
    from orchestrator.policies import make_policy

    trust_settings = fitted.trust_settings if fitted is not None else None
    options: dict[str, Any] = {"retrieval_source": retrieval_source}
    if name == LLM_POLICY:
        from agents.openai_compat import load_price_table
        from orchestrator.policies.llm import orchestrator_client

        settings = llm or LlmSettings()
        model, key = _check_llm_settings(settings)
        options["client"] = orchestrator_client(
            model=model,
            base_url=settings.base_url,
            api_key=key,
            timeout_s=settings.timeout_s,
            prices=load_price_table(settings.price_file),
            servers=servers,
            limits=limits,
        )
    else:
        check_policy_sources(trust_settings or {}, sources)
        options.update(trust_settings or {})
    return make_policy(name, profiles, sources=sources, **options)


def _fitted_family_policy(
    fitted: FittedPolicyFile,
    task: Task,
    retrieval_source: str | None,
    sources: Sequence[str] | None,
) -> Any:
    """The family a policy file's selection chose, as fitted, reading this run's sources."""
    from orchestrator.policies.families import BestSingle, FamilyPolicy, family_from_dict

    assert fitted.selection is not None
    chosen = fitted.chosen
    params = fitted.selection.get("family")
    if not isinstance(params, Mapping):
        raise InputError(
            f"field 'selection.family': the chosen family {chosen!r} has no fitted parameters",
            path=fitted.path,
        )
    fitted_labels = fitted.selection.get("labels")
    if fitted_labels is not None and list(fitted_labels) != list(task.labels):
        raise InputError(
            f"field 'selection.labels': the {chosen} policy was fitted on labels "
            f"{list(fitted_labels)}, this run's task has {list(task.labels)}",
            path=fitted.path,
        )
    try:
        family = family_from_dict(chosen, params, len(task.labels))
    except InputError as e:
        raise InputError(f"field 'selection.family': {e.message}", path=fitted.path) from None
    read = [family.source_] if isinstance(family, BestSingle) else list(family.sources_)
    missing = [s for s in read if sources is not None and s not in sources]
    if missing:
        names = ", ".join(f"'{m}'" for m in missing)
        raise InputError(
            f"--policy-file's {chosen} reads source(s) {names} that this run does not have (it "
            f"has {', '.join(sources or []) or 'none'}): add them with -a NAME=SPEC, or fit the "
            "policy on the sources you run",
            path=fitted.path,
        )
    return FamilyPolicy(family, labels=task.labels, retrieval_source=retrieval_source)


def check_policy_sources(settings: Mapping[str, Any], sources: Sequence[str] | None) -> None:
    """Refuse fitted trust settings that weigh a source this run does not have (a retriever
    left out, an agent renamed): the policy would wait for answers that never come and send
    every image to a second look."""
    if sources is None:
        return
    weighed = {
        name.split(REEVAL_SUFFIX)[0]
        for stage in (settings.get("weights") or {}).values()
        for name in stage
    }
    missing = sorted(weighed - set(sources))
    if missing:
        names = ", ".join(f"'{m}'" for m in missing)
        raise InputError(
            f"--policy-file weighs source(s) {names} that this run does not have (it has "
            f"{', '.join(sources) or 'none'}): add them with -a NAME=SPEC (a retriever with "
            "-a NAME=retrieval and --index-dir), or fit the policy on the sources you run"
        )
