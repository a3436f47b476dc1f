"""One registry of agent kinds: each kind's spec syntax, option types and builder, registered once.

A spec is ``[name=]kind[:target]`` (``gpt=openai:gpt-4o``), parsed once into an ``AgentSpec``.
``default_registry()`` holds this layer's kinds (clip, openai, hf-vlm); callers with more kinds
(the orchestrator's ``replay:``, ``retrieval`` and ``py:``) extend it with ``with_kinds``, which
returns a new registry: there is no shared mutable one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from agents.clip_model import ClipModel
from agents.openai_compat.limits import EndpointLimits
from agents.openai_compat.modes import ServerFeatureTable
from agents.options import OptionItem, OptionType, coerce_options
from agents.types import Agent
from core.errors import InputError
from core.redact import redact_url
from core.task import Task

_NAME_PREFIX = re.compile(r"^([A-Za-z0-9_.\-]+)=(.+)$")

ClipSource = ClipModel | Callable[[], ClipModel] | None


@dataclass(frozen=True)
class AgentSpec:
    """A parsed spec: ``kind`` (clip, openai, hf-vlm, or a caller's own), ``target`` (model or
    folder, "" when none) and an optional agent ``name``."""

    kind: str
    target: str
    name: str | None = None
    text: str = ""


def parse_agent_spec(spec: str) -> AgentSpec:
    """Split ``[name=]kind[:target]``; the kind is checked by ``AgentRegistry.parse``."""
    text = spec.strip()
    if not text:
        raise InputError("empty agent spec (e.g. clip, openai:gpt-4o, hf-vlm:<folder>)")
    name = None
    named = _NAME_PREFIX.match(text)
    if named and ":" not in named.group(1):
        name, text = named.group(1), named.group(2).strip()
    kind, _, target = text.partition(":")
    return AgentSpec(kind=kind.strip().lower(), target=target.strip(), name=name, text=spec)


@dataclass(frozen=True)
class BuildContext:
    """What every builder may use: the task, the device, the CLIP the agents share (``clip``: a
    loaded model, or a function that loads it on first need; ``clip_model``: what to load when
    neither is given), what OpenAI-compatible servers were found to accept (``servers``) and how
    many calls each may have in flight (``limits``, shared by the agents built with it)."""

    task: Task
    clip: ClipSource = None
    clip_model: str | None = None
    device: str | None = None
    servers: ServerFeatureTable = field(default_factory=ServerFeatureTable)
    limits: EndpointLimits = field(default_factory=EndpointLimits)

    def shared_clip(self) -> ClipModel:
        from agents.clip_model import load_clip

        if isinstance(self.clip, ClipModel):
            return self.clip
        if self.clip is not None:
            return self.clip()
        return load_clip(self.clip_model, device=self.device)


@dataclass(frozen=True)
class AgentStatus:
    """Whether this machine can run an agent kind without downloading anything: the spec it runs
    as, or (``spec`` None) why not; ``name`` is the kind's."""

    name: str
    detail: str
    spec: str | None = None

    @property
    def available(self) -> bool:
        return self.spec is not None

    def line(self) -> str:
        verb = "runs" if self.available else "skipped"
        return f"{self.name} {verb}: {self.detail}"


Builder = Callable[[AgentSpec, dict[str, Any], BuildContext], Agent]
Probe = Callable[[Mapping[str, str]], AgentStatus | None]


@dataclass(frozen=True)
class AgentKind:
    """One kind of agent. ``target``: whether the spec names a model after the colon (``hint``
    says how when it is missing); ``options``: the option types ``build`` accepts, checked and
    coerced before it is called; ``probe``: reads the environment and says whether (and as
    which spec) the kind can run here without a download, None when it is not set up at all."""

    name: str
    syntax: str
    build: Builder
    target: Literal["none", "optional", "required"] = "required"
    hint: str = ""
    options: Mapping[str, OptionType] = field(default_factory=dict)
    probe: Probe | None = None


@dataclass(frozen=True)
class AgentRegistry:
    """The known agent kinds, in the order they were registered."""

    kinds: tuple[AgentKind, ...] = ()
    elsewhere: str = ""
    """Kinds that other commands add (said when a spec names an unknown kind)."""

    def __post_init__(self) -> None:
        names = [k.name for k in self.kinds]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"agent kind(s) registered twice: {twice}")

    def with_kinds(self, *kinds: AgentKind) -> AgentRegistry:
        """A new registry with ``kinds`` added after these."""
        return AgentRegistry((*self.kinds, *kinds))

    def kind(self, name: str) -> AgentKind | None:
        return next((k for k in self.kinds if k.name == name), None)

    def syntaxes(self) -> str:
        return ", ".join(k.syntax for k in self.kinds)

    def parse(self, spec: str) -> AgentSpec:
        """``spec`` parsed, its kind known and its target given where the kind needs one."""
        parsed = parse_agent_spec(spec)
        kind = self._known(parsed)
        if kind.target == "required" and not parsed.target:
            raise InputError(f"agent spec {spec!r}: {kind.hint or 'give ' + kind.syntax}")
        if kind.target == "none" and parsed.target:
            raise InputError(f"agent spec {spec!r}: {kind.name} takes no ':' part")
        return parsed

    def check_options(self, spec: AgentSpec, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` coerced to the option types of ``spec``'s kind (InputError when not)."""
        kind = self._known(spec)
        return coerce_options(kind.options, options, spec.text)

    def recorded_options(self, spec: AgentSpec, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` without the secret ones (API keys) and with URL credentials masked, for a
        run's recorded configuration."""
        types = self._known(spec).options
        return {
            k: redact_url(v) if isinstance(v, str) and "://" in v else v
            for k, v in options.items()
            if not (k in types and types[k].secret)
        }

    def assign_options(
        self, specs: Sequence[AgentSpec], items: Sequence[OptionItem], *, flag: str = "--option"
    ) -> list[dict[str, Any]]:
        """Each spec's options from command-line ``items``, checked: an unscoped item goes to
        every agent whose kind takes its key, ``kind.key`` or ``name.key`` only to those agents.
        A key no agent takes, or a scope that is neither a kind nor a name of the run, is an
        InputError."""
        chosen: list[dict[str, Any]] = [{} for _ in specs]
        unused: list[str] = []
        for item in items:
            scoped = [
                i
                for i, s in enumerate(specs)
                if item.scope is None or item.scope in (s.kind, s.name)
            ]
            if not scoped:
                raise InputError(
                    f"{flag} {item.scope}.{item.key}: no agent of kind or name {item.scope!r} "
                    f"in this run ({', '.join(s.text for s in specs)})"
                )
            takers = [i for i in scoped if item.key in self._known(specs[i]).options]
            if not takers:
                unused.append(item.key if item.scope is None else f"{item.scope}.{item.key}")
            for i in takers:
                chosen[i][item.key] = item.value
        if unused:
            raise InputError(f"no agent takes option(s) {sorted(unused)}")
        return [self.check_options(s, o) for s, o in zip(specs, chosen, strict=True)]

    def build(
        self, spec: AgentSpec | str, context: BuildContext, options: Mapping[str, Any] | None = None
    ) -> Agent:
        """The agent of ``spec`` (parsed here when a string), its ``options`` checked first."""
        parsed = self.parse(spec) if isinstance(spec, str) else spec
        checked = self.check_options(parsed, options or {})
        return self._known(parsed).build(parsed, checked, context)

    def probe(self, environ: Mapping[str, str]) -> list[AgentStatus]:
        """What each kind with a probe says about this machine (kinds not set up are left out)."""
        found = (k.probe(environ) for k in self.kinds if k.probe is not None)
        return [status for status in found if status is not None]

    def _known(self, spec: AgentSpec) -> AgentKind:
        kind = self.kind(spec.kind)
        if kind is None:
            where = f" in {spec.text!r}" if spec.text else ""
            more = f"; {self.elsewhere}" if self.elsewhere else ""
            raise InputError(
                f"unknown agent kind {spec.kind!r}{where} (valid: {self.syntaxes()}{more})"
            )
        return kind


def default_registry() -> AgentRegistry:
    """The kinds of this layer: clip, openai, hf-vlm."""
    from agents.kinds import CLIP_KIND, HF_VLM_KIND, OPENAI_KIND

    return AgentRegistry(
        (CLIP_KIND, OPENAI_KIND, HF_VLM_KIND),
        elsewhere="trustorch run also takes retrieval, replay:<file>#<agent> and "
        "py:<module or file.py>:<callable>",
    )


def build_agent(
    spec: str,
    *,
    task: Task,
    clip: ClipSource = None,
    clip_model: str | None = None,
    device: str | None = None,
    **options: Any,
) -> Agent:
    """One agent of the default registry. ``clip`` is the shared loaded CLIP (or a function that
    loads it on first need); ``options`` go to the agent (and, for ``openai``, to its client)."""
    context = BuildContext(task=task, clip=clip, clip_model=clip_model, device=device)
    return default_registry().build(spec, context, options)
