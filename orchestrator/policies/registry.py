"""``make_policy``: a policy from its name (``trust``, ``majority``, ``single:gpt``, ...).

Each entry of ``POLICY_FACTORIES`` builds one policy from the part of the name after ``:``
(or None), the trust profiles and the caller's keyword options. To add a policy, add one entry
(import heavy modules inside the factory function so listing policies stays cheap).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from core.errors import InputError
from eval.profile import TrustProfile
from orchestrator.policies.base import FusionPolicy

PolicyFactory = Callable[[str | None, Mapping[str, TrustProfile], dict[str, Any]], FusionPolicy]


def _trust(arg: str | None, profiles: Mapping[str, TrustProfile], options: dict) -> FusionPolicy:
    from orchestrator.policies.trust import TrustPolicy

    return TrustPolicy.from_profiles(profiles, **options)


def _majority(arg: str | None, profiles: Mapping[str, TrustProfile], options: dict) -> FusionPolicy:
    from orchestrator.policies.baselines import MajorityPolicy

    return MajorityPolicy(**options)


def _max_confidence(
    arg: str | None, profiles: Mapping[str, TrustProfile], options: dict
) -> FusionPolicy:
    from orchestrator.policies.baselines import MaxConfidencePolicy

    return MaxConfidencePolicy(**options)


def _llm(arg: str | None, profiles: Mapping[str, TrustProfile], options: dict) -> FusionPolicy:
    from orchestrator.policies.llm import LlmPolicy

    if options.get("client") is None:
        raise InputError(
            "policy 'llm' needs an orchestrator LLM (trustorch run --policy llm --llm-model ...)"
        )
    return LlmPolicy(profiles=profiles, **options)


def _single(arg: str | None, profiles: Mapping[str, TrustProfile], options: dict) -> FusionPolicy:
    from orchestrator.policies.baselines import SinglePolicy

    if not arg:
        raise InputError("policy 'single' needs a source: single:<agent> (e.g. single:gpt)")
    return SinglePolicy(source=arg, **options)


POLICY_FACTORIES: dict[str, PolicyFactory] = {
    "trust": _trust,
    "llm": _llm,
    "majority": _majority,
    "max-confidence": _max_confidence,
    "single": _single,
}


FITTED_ON_RECORDS = ("select", "best-single", "dawid-skene", "stacking", "second-look")
"""Policies fitted on recorded answers (``trustorch eval replay --policy``), not built from
trust profiles: ``orchestrator.replay.run.policy_fitter`` fits them."""


def policy_names(*, fitted_on_records: bool = False) -> list[str]:
    """The policy names as a user types them (``single:<agent>``), in registry order; with
    ``fitted_on_records``, those of ``FITTED_ON_RECORDS`` first."""
    names = [f"{n}:<agent>" if n == "single" else n for n in POLICY_FACTORIES]
    return [*FITTED_ON_RECORDS, *names] if fitted_on_records else names


def check_policy_name(
    name: str, *, excluded: Sequence[str] = (), fitted_on_records: bool = False
) -> str:
    """``name`` when it names a policy of the registry (``single`` with its source), leaving
    out ``excluded`` kinds (with ``fitted_on_records``, also the policies only a replay of
    recorded answers can fit); InputError listing the policies otherwise. Cheap: builds
    nothing."""
    kind, _, arg = name.partition(":")
    known_kinds = {*POLICY_FACTORIES, *(FITTED_ON_RECORDS if fitted_on_records else ())}
    if kind.strip() not in known_kinds or kind.strip() in excluded:
        known = [
            n
            for n in policy_names(fitted_on_records=fitted_on_records)
            if n.partition(":")[0] not in excluded
        ]
        raise InputError(f"unknown policy {name!r} (choose from {', '.join(known)})")
    if kind.strip() == "single" and not arg.strip():
        raise InputError("policy 'single' needs a source: single:<agent> (e.g. single:gpt)")
    return name


def make_policy(
    name: str,
    profiles: Mapping[str, TrustProfile] | None = None,
    *,
    sources: Sequence[str] | None = None,
    **options: Any,
) -> FusionPolicy:
    """Build the policy ``name`` (``kind`` or ``kind:arg``) with the given profiles/options.

    ``sources`` (the agents and the retriever of the run, when known) are what
    ``single:<source>`` may name: another name is an InputError, not a policy that never answers.
    """
    check_policy_name(name)
    kind, _, arg = name.partition(":")
    factory = POLICY_FACTORIES[kind.strip()]
    if kind.strip() == "single" and sources is not None and arg.strip() not in ("", *sources):
        raise InputError(
            f"policy {name!r}: no source {arg.strip()!r} here (sources: {', '.join(sources)})"
        )
    try:
        return factory(arg.strip() or None, dict(profiles or {}), options)
    except TypeError as e:
        raise InputError(f"policy {name!r}: {e}") from None
