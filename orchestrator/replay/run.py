"""The offline replay benchmark: the real graph over recorded answers, k-fold.

Rows are split into stratified folds. For each fold, the policy (its trust profiles and every
other fitted parameter) is fitted on the other folds only, then the compiled graph runs over the
held-out rows with ``ReplayAgent``s (first look = ``<agent>_initial_*``, re-evaluation =
``<agent>_*``, played only when the policy asks) and a ``RecordedRetriever`` (``rag_*``).

Metrics over all held-out decisions: ``accuracy``, ``macro_f1``, the calibration metrics of
``Report.BRIEF`` (``ece`` with ``bins`` equal-width bins, recorded as ``ece_bins``; an abstention
counts as wrong with its confidence), ``reeval_rate`` (fraction of images
sent to re-evaluation), ``vlm_calls_per_image`` (agent calls; retrieval is not one). The same
keys for every recorded source alone and for the study's recorded orchestrator are under
``baselines`` (fixed answers: no fitting involved).

Engines (``engine``): the folds are decided by the graph itself (``graph``; also whenever every
decision's trace is asked for, ``on_decision``) or, by default, without it
(``orchestrator.replay.arrays``: ``arrays`` for the trust policy, ``direct`` for the
baselines), with the same decisions and so the same figures; a policy without an array path
(``llm``) always takes the graph.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents.types import REEVAL_SUFFIX, RETRIEVAL_AGENT
from core.errors import InputError
from core.images import LabelledImage
from core.jsonio import parse_json
from core.task import Task
from eval.folds import held_out_rows, stratified_folds
from eval.metric_table import Report, calibration_metrics
from eval.metrics import DEFAULT_BINS, classification_metrics
from eval.recorded.decisions import is_decisions_header
from eval.recorded.records import RecordSet, read_records, second_looks_as_sources
from orchestrator.decision import Decision
from orchestrator.policies.base import FusionPolicy
from orchestrator.policies.families import ARRAY_FAMILIES, fit_family_policy
from orchestrator.policies.registry import make_policy
from orchestrator.policies.select import SelectPolicy
from orchestrator.policies.trust import TrustPolicy
from orchestrator.policies.trust_sources import SourceColumns, SourceProfiles
from orchestrator.replay.agent import INITIAL_SUFFIX, ReplayAgent, recorded_images
from orchestrator.replay.arrays import RowDecision, decide_rows, engine_for
from orchestrator.replay.conformal import (
    ConformalFold,
    ConformalSettings,
    conformal_fold,
    conformal_report,
)
from orchestrator.replay.retriever import RecordedRetriever

ORCHESTRATOR_SOURCE = "orchestrator"
REEVAL_FLAG_COLUMN = "orchestrator_requested_reeval"

ENGINE_CHOICES = ("auto", "graph")

FitPolicy = Callable[[RecordSet, Sequence[SourceColumns], Sequence[str], "str | None", int], Any]


def replay_columns(
    records: RecordSet, *, retrieval: str = "rag"
) -> tuple[list[SourceColumns], str | None]:
    """The agents to replay and the retrieval source of a record set.

    ``X`` with ``X_initial`` columns is an agent that can re-evaluate; so is ``X`` with
    ``X@reeval`` records (a decisions file of ``trustorch run``, whose retrieval vote is the
    first look of the agent that retrieved it: ``rag``, else ``retrieval``). ``X_initial``
    without ``X`` columns, and any other source (not the retrieval vote, not the study's
    orchestrator), is an agent with a first look only.
    """
    found = records.agents
    if retrieval not in found and RETRIEVAL_AGENT in found:
        retrieval = RETRIEVAL_AGENT
    columns: list[SourceColumns] = []
    for agent in found:
        if agent in (retrieval, ORCHESTRATOR_SOURCE) or agent.endswith(REEVAL_SUFFIX):
            continue
        if f"{agent}{REEVAL_SUFFIX}" in found:
            columns.append(
                SourceColumns(agent=agent, first=agent, reeval=f"{agent}{REEVAL_SUFFIX}")
            )
            continue
        if agent.endswith(INITIAL_SUFFIX):
            base = agent.removesuffix(INITIAL_SUFFIX)
            if base and base not in found:
                columns.append(SourceColumns(agent=base, first=agent))
            continue
        initial = f"{agent}{INITIAL_SUFFIX}"
        if initial in found:
            columns.append(SourceColumns(agent=agent, first=initial, reeval=agent))
        else:
            columns.append(SourceColumns(agent=agent, first=agent))
    if not columns:
        raise InputError("no agent to replay in the file", path=records.path)
    return columns, (retrieval if retrieval in found else None)


def is_decisions_file(path: str | Path) -> bool:
    """Whether ``path`` is a decisions JSONL of ``trustorch run`` (its first object)."""
    p = Path(path)
    if p.suffix.lower() not in {".jsonl", ".ndjson"} or not p.is_file():
        return False
    with p.open(encoding="utf-8-sig", errors="replace") as fh:
        first = next((line for line in fh if line.strip()), "")
    try:
        record = parse_json(first)
    except InputError:
        return False
    return isinstance(record, dict) and is_decisions_header(list(record))


def refuse_decisions_file(path: str | Path) -> None:
    """InputError when ``path`` is a decisions JSONL of ``trustorch run``: replay needs the
    recorded first looks and second looks of every agent on every row (a wide/long file); a
    decisions file can only fit a policy (``--save-policy``)."""
    if is_decisions_file(path):
        raise InputError(
            "this is a decisions file of trustorch run: it can fit a policy (--save-policy "
            "FILE), but a replay needs every agent's answers on every row (a wide/long file, "
            "e.g. study:case3)",
            path=str(path),
        )


def replay_folds(images: Sequence[LabelledImage], folds: int, seed: int) -> list[list[int]]:
    """Held-out row indices of each fold (``eval.folds.stratified_folds`` by true label).

    A class with fewer rows than folds is missing from some folds, so some training folds
    hold none of it: the policies are fitted all the same (a rare class is common in field
    data), and only more folds than the largest class has rows is refused.
    """
    truth = [li.truth for li in images]
    counts = {t: truth.count(t) for t in set(truth)}
    if folds < 2 or folds > max(counts.values()):
        raise InputError(
            f"--folds must be in [2, {max(counts.values())}] (the largest class's row count), "
            f"got {folds}"
        )
    return [held.tolist() for held in held_out_rows(stratified_folds(truth, folds, seed))]


def policy_fitter(name: str, **options: Any) -> FitPolicy:
    """How the benchmark fits policy ``name`` on training rows (trust and select: the whole
    policy; stacking and dawid-skene: their family; others: their profiles only)."""

    def fit(
        records: RecordSet,
        columns: Sequence[SourceColumns],
        train_ids: Sequence[str],
        retrieval: str | None,
        seed: int,
    ) -> FusionPolicy:
        if name == "trust":
            policy = TrustPolicy(retrieval_source=retrieval, seed=seed, **options)
            return policy.fit(records, columns, ids=train_ids)
        if name == "select":
            chooser = SelectPolicy(retrieval_source=retrieval, seed=seed, **options)
            return chooser.fit(records, columns, ids=train_ids)
        if name in ARRAY_FAMILIES:
            return fit_family_policy(name, records, columns, train_ids, retrieval)
        sources = SourceProfiles(columns=columns, retrieval=retrieval, seed=seed)
        profiles = sources.fit(records, train_ids).profiles_
        names = [c.agent for c in columns] + ([retrieval] if retrieval else [])
        return make_policy(name, profiles, sources=names, retrieval_source=retrieval, **options)

    return fit


def decision_metrics(
    decisions: Sequence[RowDecision], labels: Sequence[str], *, agents: int, bins: int
) -> dict[str, Any]:
    truth = [labels.index(str(d.truth)) for d in decisions]
    pred = [labels.index(d.label) if d.label is not None else -1 for d in decisions]
    conf = [d.confidence for d in decisions]
    calls = sum(d.calls for d in decisions)
    out = _scores(truth, pred, conf, len(labels), bins)
    out["reeval_rate"] = sum(d.reevaluated for d in decisions) / len(decisions)
    out["vlm_calls_per_image"] = calls / len(decisions)
    out["abstained"] = sum(d.abstained for d in decisions)
    out["agents"] = agents
    return out


def _scores(
    truth: Sequence[int], pred: Sequence[int], conf: Sequence[float], k: int, bins: int
) -> dict[str, Any]:
    m = classification_metrics(np.array(truth), np.array(pred), k)
    correct = (np.array(truth) == np.array(pred)).astype(float)
    return {
        "n": len(truth),
        "accuracy": m.accuracy,
        "macro_f1": m.macro_f1,
        **calibration_metrics(
            np.array(conf, dtype=float), correct, bins=bins, report=Report.BRIEF
        ).values_with_settings(),
    }


def _reeval_flags(path: str) -> dict[str, bool] | None:
    p = Path(path)
    if p.suffix.lower() != ".csv":
        return None
    with p.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        if REEVAL_FLAG_COLUMN not in (reader.fieldnames or []):
            return None
        id_col = "id" if "id" in (reader.fieldnames or []) else "image"
        return {
            str(row[id_col]).strip(): str(row[REEVAL_FLAG_COLUMN]).strip().lower()
            in ("true", "1", "yes")
            for row in reader
        }


def recorded_baselines(
    records: RecordSet, columns: Sequence[SourceColumns], retrieval: str | None, *, bins: int
) -> dict[str, dict[str, Any]]:
    """Each recorded source alone, and the study's orchestrator, on every row (a row a source
    has no answer on counts as a miss, as an empty answer does)."""
    labels = list(records.labels)
    reeval_sources = {c.reeval for c in columns if c.reeval}
    truth_of = {r.id: r.truth for r in records.records}
    out: dict[str, dict[str, Any]] = {}
    for agent in records.agents:
        answered = {r.id: r for r in records.records if r.agent == agent and r.round == 0}
        recs = list(answered.values())
        rows = [answered.get(i) for i in truth_of]
        truth = [labels.index(t) for t in truth_of.values()]
        pred = [labels.index(r.pred) if r is not None and r.pred else -1 for r in rows]
        confidence = [r.confidence if r is not None else 0.0 for r in rows]
        entry = _scores(truth, pred, confidence, len(labels), bins)
        if agent == retrieval:
            entry.update(reeval_rate=0.0, vlm_calls_per_image=0.0)
        elif agent == ORCHESTRATOR_SOURCE:
            flags = _reeval_flags(records.path)
            rate = sum(flags.get(r.id, False) for r in recs) / len(recs) if flags else None
            n_agents = len(columns)
            entry.update(
                reeval_rate=rate,
                vlm_calls_per_image=n_agents + (rate or 0.0) * sum(1 for c in columns if c.reeval),
            )
        elif agent in reeval_sources:
            entry.update(reeval_rate=1.0, vlm_calls_per_image=2.0)
        else:
            entry.update(reeval_rate=0.0, vlm_calls_per_image=1.0)
        out[agent] = entry
    return out


def fitted_details(policy: FusionPolicy) -> dict[str, Any]:
    """What a fold's report says of its fitted policy: the select policy's choice and inner-CV
    scores, and the trust policy's thresholds and weights (the chosen one's, for select)."""
    out: dict[str, Any] = {}
    if isinstance(policy, SelectPolicy):
        out["selection"] = policy.selection()
        policy = policy.policy_
    if isinstance(policy, TrustPolicy):
        out["thresholds"] = dict(policy.thresholds_)
        out["weights"] = policy.weights_
    return out


def _ids_digest(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]


async def _run_fold(
    graph: Any, images: Sequence[LabelledImage], concurrency: int, tick: Callable[[], None]
) -> list[Decision]:
    from orchestrator.graph import classify

    gate = asyncio.Semaphore(concurrency)

    async def one(li: LabelledImage) -> Decision:
        async with gate:
            decision = await classify(graph, li.image, truth=li.truth)
        tick()
        return decision

    return list(await asyncio.gather(*(one(li) for li in images)))


@dataclass(frozen=True)
class ReplaySetup:
    """A recorded file ready to replay: its records and task, the agents and the retriever
    that play them back, and one ``LabelledImage`` per row."""

    records: RecordSet
    task: Task
    columns: list[SourceColumns]
    retrieval: str | None
    images: list[LabelledImage]
    agents: list[ReplayAgent]
    retriever: RecordedRetriever | None

    @classmethod
    def of(cls, path: str | Path, records: RecordSet, task: Task | None = None) -> ReplaySetup:
        columns, retrieval = replay_columns(records)
        agents = [ReplayAgent.from_records(records, c.agent) for c in columns]
        for agent, c in zip(agents, columns, strict=True):
            agent.can_reevaluate = c.reeval is not None
        retriever = RecordedRetriever.from_records(records, source=retrieval) if retrieval else None
        return cls(
            records=records,
            task=task_for(records, task),
            columns=columns,
            retrieval=retrieval,
            images=recorded_images(path, records=records),
            agents=agents,
            retriever=retriever,
        )


def decide_fold(
    setup: ReplaySetup,
    policy: FusionPolicy,
    images: Sequence[LabelledImage],
    *,
    max_rounds: int,
    engine: str = "auto",
    concurrency: int = 64,
    on_image: Callable[[], None] | None = None,
    on_decision: Callable[[Decision], None] | None = None,
) -> tuple[str, list[RowDecision]]:
    """The engine used and the decisions of a fitted ``policy`` on ``images``: without the
    graph when the policy has an array path, unless ``engine="graph"`` or ``on_decision``
    (every decision's trace) is asked for."""
    used = "graph" if engine == "graph" or on_decision is not None else engine_for(policy)
    if used != "graph":
        return used, decide_rows(
            policy,
            task=setup.task,
            agents=setup.agents,
            retriever=setup.retriever,
            images=images,
            max_rounds=max_rounds,
            on_image=on_image,
        )
    from orchestrator.graph import build_graph

    graph = build_graph(
        task=setup.task,
        agents=setup.agents,
        policy=policy,
        retriever=setup.retriever,
        max_rounds=max_rounds,
    )
    decisions = asyncio.run(_run_fold(graph, images, concurrency, on_image or _nop))
    if on_decision is not None:
        for decision in decisions:
            on_decision(decision)
    return used, [RowDecision.of(d, setup.task.labels) for d in decisions]


def task_for(records: RecordSet, task: Task | None) -> Task:
    if task is not None:
        return task
    labels = tuple(records.labels)
    return Task(name=Path(records.path).stem, labels=labels, descriptions={y: y for y in labels})


def run_replay(
    path: str | Path,
    *,
    folds: int = 5,
    seed: int = 0,
    policy: str = "trust",
    max_rounds: int = 2,
    task: Task | None = None,
    bins: int = DEFAULT_BINS,
    concurrency: int = 64,
    fit_policy: FitPolicy | None = None,
    on_image: Callable[[], None] | None = None,
    engine: str = "auto",
    on_decision: Callable[[Decision], None] | None = None,
    records: RecordSet | None = None,
    conformal: ConformalSettings | None = None,
) -> dict[str, Any]:
    """Run the replay benchmark on one recorded file (see the module docstring).

    ``engine="graph"`` runs every row through the graph; ``on_decision`` is given each
    held-out row's whole ``Decision`` (graph only). ``records`` is ``path`` already read.
    ``conformal`` adds prediction sets at its miscoverage levels (``conformal`` in the report;
    ``orchestrator.replay.conformal``).
    """
    if engine not in ENGINE_CHOICES:
        raise InputError(f"engine must be one of {ENGINE_CHOICES}, got {engine!r}")
    refuse_decisions_file(path)
    records = second_looks_as_sources(
        records if records is not None else read_records(path, task=task)
    )
    setup = ReplaySetup.of(path, records, task)
    columns, retrieval, images = setup.columns, setup.retrieval, setup.images
    fit = fit_policy or policy_fitter(policy)
    decisions: list[RowDecision] = []
    details: list[dict[str, Any]] = []
    used: list[str] = []
    conformal_folds: list[ConformalFold] = []
    for k, held in enumerate(replay_folds(images, folds, seed)):
        held_set = set(held)
        train_ids = [li.extra["id"] for i, li in enumerate(images) if i not in held_set]
        held_images = [images[i] for i in held]
        fitted = fit(records, columns, train_ids, retrieval, seed)
        fold_engine, fold_decisions = decide_fold(
            setup,
            fitted,
            held_images,
            max_rounds=max_rounds,
            engine=engine,
            concurrency=concurrency,
            on_image=on_image,
            on_decision=on_decision,
        )
        used.append(fold_engine)
        decisions.extend(fold_decisions)
        detail: dict[str, Any] = {
            "fold": k,
            "n_train": len(train_ids),
            "n_held_out": len(held_images),
            "train_ids_sha256": _ids_digest(train_ids),
            "held_out_ids_sha256": _ids_digest([li.extra["id"] for li in held_images]),
            "reevaluated": sum(d.reevaluated for d in fold_decisions),
        }
        detail.update(fitted_details(fitted))
        details.append(detail)
        if conformal is not None:
            conformal_folds.append(
                conformal_calibration(
                    setup, fit, held, seed, conformal.calibration_fraction, max_rounds
                )
            )
    labels = list(records.labels)
    report = decision_metrics(decisions, labels, agents=len(setup.agents), bins=bins)
    if conformal is not None:
        report["conformal"] = conformal_report(
            conformal_folds, setup.task.labels, conformal, seed=seed
        )
    return {
        "file": str(path),
        "sha256": records.sha256,
        "policy": getattr(fitted, "name", policy),
        "folds": folds,
        "seed": seed,
        "max_rounds": max_rounds,
        "engine": "+".join(dict.fromkeys(used)),
        **report,
        "agents_replayed": {c.agent: {"first": c.first, "reeval": c.reeval} for c in columns},
        "retrieval": retrieval,
        "baselines": recorded_baselines(records, columns, retrieval, bins=bins),
        "fold_baselines": fold_baselines(
            setup, folds=folds, seed=seed, max_rounds=max_rounds, bins=bins
        ),
        **selection_summary(details),
        "fold_details": details,
        "errors": [
            {"id": d.image, "truth": d.truth, "label": d.label, "confidence": d.confidence}
            for d in decisions
            if d.label != d.truth
        ],
    }


FOLD_BASELINES = ("majority", "best-single", "dawid-skene", "stacking")
"""The baselines ``run_replay`` fits and decides on the policy's own folds."""


def fold_baselines(
    setup: ReplaySetup,
    *,
    folds: int,
    seed: int,
    max_rounds: int,
    bins: int,
    names: Sequence[str] = FOLD_BASELINES,
) -> dict[str, dict[str, Any]]:
    """Each baseline of ``names`` fitted on the training folds of the split ``seed`` and
    scored on its held-out rows, as the policy is: the report's keys per baseline."""
    records, images = setup.records, setup.images
    held_folds = replay_folds(images, folds, seed)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        fit = policy_fitter(name)
        decisions: list[RowDecision] = []
        for held in held_folds:
            held_set = set(held)
            train_ids = [li.extra["id"] for i, li in enumerate(images) if i not in held_set]
            fitted = fit(records, setup.columns, train_ids, setup.retrieval, seed)
            _, fold_decisions = decide_fold(
                setup, fitted, [images[i] for i in held], max_rounds=max_rounds
            )
            decisions.extend(fold_decisions)
        out[name] = decision_metrics(
            decisions, list(records.labels), agents=len(setup.agents), bins=bins
        )
    return out


def selection_summary(details: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The select policy's choice per fold (``families_chosen``), when the policy is select."""
    chosen = [d["selection"]["chosen"] for d in details if "selection" in d]
    return {"families_chosen": chosen} if chosen else {}


def _nop() -> None:
    return None


def conformal_calibration(
    setup: ReplaySetup,
    fit: FitPolicy,
    held: Sequence[int],
    seed: int,
    fraction: float,
    max_rounds: int,
) -> ConformalFold:
    """The conformal calibration of the fold that holds out ``held``, on its training rows only
    (``orchestrator.replay.conformal``; ``held`` empty: on every row)."""
    images, held_set = setup.images, set(held)

    def fit_on(ids: Sequence[str]) -> FusionPolicy:
        return fit(setup.records, setup.columns, ids, setup.retrieval, seed)

    def decide(policy: FusionPolicy, rows: Sequence[int]) -> list[RowDecision]:
        return decide_fold(setup, policy, [images[i] for i in rows], max_rounds=max_rounds)[1]

    return conformal_fold(
        ids=[li.extra["id"] for li in images],
        truth=[str(li.truth) for li in images],
        labels=setup.task.labels,
        train_rows=[i for i in range(len(images)) if i not in held_set],
        test_rows=held,
        fit_on=fit_on,
        decide=decide,
        fraction=fraction,
        seed=seed,
    )
