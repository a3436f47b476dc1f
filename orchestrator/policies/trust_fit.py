"""Fit the ``trust`` policy on labelled records: profiles, stage weights, trust threshold.

Everything is fitted on the records given (the training rows) and nothing else:
1. one TrustProfile per source: each agent's first look (``qwen``), its re-evaluated answer
   (``qwen@reeval``) and the retrieval vote (``rag``);
2. stage weights by stacking: inner k-fold cross-fitting gives each training row calibrated
   log-likelihood ratios from profiles that did not see it; per stage the weights minimise the
   log-loss of the fused distribution (L2-regularised, in [0, MAX_WEIGHT]);
3. the trust threshold of the ``evidence`` stage: among the out-of-fold fused confidences, the
   cut that maximises the cascade's mean log-likelihood (``criterion="log_loss"``; or its
   accuracy, ``"accuracy"``) when the rows below the cut are re-evaluated, minus
   ``reeval_cost`` per unit of re-evaluation rate, within ``reeval_budget`` (``"budget"``
   spends the whole budget). The cut is placed midway between two observed confidences.

``save_trust_policy`` / ``load_trust_policy_settings``: the fitted settings (weights, thresholds,
...; not the profiles) as a JSON file, for ``trustorch run --policy-file``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents.types import REEVAL_SUFFIX, Prediction
from core.errors import InputError
from core.files import write_text_atomically
from eval.profile import TrustProfile, fit_trust_profile
from eval.recorded.records import Record, RecordSet
from orchestrator.policies.trust import TrustPolicy, evidence_prediction, log_ratio
from rag.evidence import Evidence

MAX_WEIGHT = 5.0
CRITERIA = ("log_loss", "accuracy", "budget")
POLICY_FILE_FORMAT = "trustorch-trust-policy"
POLICY_FILE_VERSION = 1
SETTING_TYPES: dict[str, tuple[type, ...]] = {
    "weights": (dict,),
    "thresholds": (dict,),
    "abstain_below": (int, float),
    "set_coverage": (int, float),
    "default_weight": (int, float),
    "reevaluate": (list, type(None)),
    "agent_model": (str,),
    "keep_first_looks": (bool,),
}


@dataclass(frozen=True)
class SourceColumns:
    """Which recorded agent plays an agent's first look and its re-evaluation."""

    agent: str
    first: str
    reeval: str | None = None


def record_prediction(record: Record, *, retrieval: bool = False) -> Prediction:
    """The Prediction a recorded answer stands for (the retrieval vote as the policy sees it)."""
    if retrieval and record.scores:
        return evidence_prediction(Evidence(neighbours=(), vote=record.scores), record.agent)
    return record.to_prediction()


def profile_sources(
    columns: Sequence[SourceColumns], retrieval: str | None
) -> dict[str, tuple[str, bool]]:
    """Profile key -> (recorded agent, is the retrieval vote)."""
    out: dict[str, tuple[str, bool]] = {}
    for c in columns:
        out[c.agent] = (c.first, False)
        if c.reeval:
            out[f"{c.agent}{REEVAL_SUFFIX}"] = (c.reeval, False)
    if retrieval:
        out[retrieval] = (retrieval, True)
    return out


def records_by_agent(records: RecordSet, ids: set[str]) -> dict[str, dict[str, Record]]:
    """Per recorded agent, its round-0 records of the rows ``ids``, by row id."""
    out: dict[str, dict[str, Record]] = {}
    for r in records.records:
        if r.id in ids and r.round == 0:
            out.setdefault(r.agent, {})[r.id] = r
    return out


def fit_profiles(
    records: RecordSet,
    columns: Sequence[SourceColumns],
    ids: Sequence[str],
    *,
    retrieval: str | None = "rag",
    seed: int = 0,
) -> dict[str, TrustProfile]:
    """One profile per source key, fitted on the rows ``ids`` only."""
    rows = records_by_agent(records, set(ids))
    out: dict[str, TrustProfile] = {}
    for key, (agent, _) in profile_sources(columns, retrieval).items():
        recs = [rows.get(agent, {}).get(i) for i in ids]
        present = [r for r in recs if r is not None]
        if not present:
            raise InputError(f"no records of '{agent}' among the training rows", path=records.path)
        out[key] = fit_trust_profile(
            key, present, records.labels, bootstrap=0, cv_folds=0, seed=seed
        )
    return out


def source_ratios(
    profiles: Mapping[str, TrustProfile],
    sources: Mapping[str, tuple[str, bool]],
    rows: Mapping[str, Mapping[str, Record]],
    ids: Sequence[str],
    labels: Sequence[str],
    agent_model: str,
) -> dict[str, np.ndarray]:
    """Per source key, [len(ids), K] log-likelihood ratios (0 where the answer failed)."""
    out: dict[str, np.ndarray] = {}
    for key, (agent, is_vote) in sources.items():
        mat = np.zeros((len(ids), len(labels)))
        for i, rid in enumerate(ids):
            rec = rows.get(agent, {}).get(rid)
            if rec is None:
                continue
            pred = record_prediction(rec, retrieval=is_vote)
            if pred.ok:
                ratio = log_ratio(profiles[key], pred, agent_model=agent_model)
                mat[i] = [ratio[y] for y in labels]
        out[key] = mat
    return out


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def fit_weights(ratios: Sequence[np.ndarray], truth: np.ndarray, *, l2: float = 1e-3) -> np.ndarray:
    """Weights minimising the log-loss of softmax(sum_s w_s * ratio_s), in [0, MAX_WEIGHT]."""
    from scipy.optimize import minimize

    stack = np.stack(ratios)
    rows = np.arange(truth.size)

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = np.tensordot(w, stack, axes=1)
        logp = _log_softmax(z)
        p = np.exp(logp)
        value = -logp[rows, truth].mean() + l2 * float(w @ w)
        onehot = np.zeros_like(p)
        onehot[rows, truth] = 1.0
        grad = np.einsum("snk,nk->s", stack, p - onehot) / truth.size + 2 * l2 * w
        return float(value), grad

    result = minimize(
        loss, np.ones(len(ratios)), jac=True, bounds=[(0.0, MAX_WEIGHT)] * len(ratios)
    )
    return np.asarray(result.x, dtype=float)


def fuse_matrix(ratios: Sequence[np.ndarray], weights: np.ndarray) -> np.ndarray:
    return np.exp(_log_softmax(np.tensordot(weights, np.stack(ratios), axes=1)))


def choose_threshold(
    first: np.ndarray,
    second: np.ndarray,
    truth: np.ndarray,
    *,
    budget: float,
    cost: float,
    criterion: str = "log_loss",
) -> tuple[float, dict[str, float]]:
    """The trust threshold on ``first``'s confidence for the cascade first -> second."""
    if criterion not in CRITERIA:
        raise InputError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    conf = first.max(axis=1)
    candidates = np.unique(np.concatenate([conf, [0.0]]))
    rows = np.arange(truth.size)
    best: tuple[tuple[float, float], float, dict[str, float]] | None = None
    for cut in candidates:
        again = conf < cut
        rate = float(again.mean())
        if rate > budget:
            break
        probs = np.where(again[:, None], second, first)
        acc = float((probs.argmax(axis=1) == truth).mean())
        ll = float(np.log(np.clip(probs[rows, truth], 1e-12, 1.0)).mean())
        key = {
            "accuracy": (round(acc - cost * rate, 12), ll),
            "log_loss": (round(ll - cost * rate, 12), acc),
            "budget": (rate, 0.0),
        }[criterion]
        if best is None or key > best[0]:
            below = conf[conf < cut]
            threshold = float((cut + below.max()) / 2) if below.size else float(cut)
            best = (key, threshold, {"accuracy": acc, "reeval_rate": rate, "log_lik": ll})
    assert best is not None
    return best[1], best[2]


def fit_trust_policy(
    records: RecordSet,
    columns: Sequence[SourceColumns],
    *,
    ids: Sequence[str] | None = None,
    retrieval: str | None = "rag",
    inner_folds: int = 5,
    seed: int = 0,
    reeval_budget: float = 0.25,
    reeval_cost: float = 0.02,
    agent_model: str = "confusion",
    criterion: str = "log_loss",
    keep_first_looks: bool = False,
    trust_threshold: float | None = None,
    **options: Any,
) -> TrustPolicy:
    """A TrustPolicy fitted on the rows ``ids`` (all rows by default) of ``records``.

    ``trust_threshold`` replaces the fitted threshold by a fixed one (a risk tolerance: re-evaluate
    when the calibrated fused confidence is below it); the weights are fitted all the same.
    """
    from sklearn.model_selection import StratifiedKFold

    ids = list(ids) if ids is not None else records.ids()
    labels = list(records.labels)
    sources = profile_sources(columns, retrieval)
    rows = records_by_agent(records, set(ids))
    truth_of = {r.id: r.truth for r in records.records}
    truth = np.array([labels.index(truth_of[i]) for i in ids])
    profiles = fit_profiles(records, columns, ids, retrieval=retrieval, seed=seed)

    oof = {key: np.zeros((len(ids), len(labels))) for key in sources}
    counts = np.bincount(truth, minlength=len(labels))
    folds = max(2, min(inner_folds, int(counts[counts > 0].min())))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, held in splitter.split(np.zeros(len(ids)), truth):
        inner = fit_profiles(
            records, columns, [ids[i] for i in train], retrieval=retrieval, seed=seed
        )
        part = source_ratios(inner, sources, rows, [ids[i] for i in held], labels, agent_model)
        for key in sources:
            oof[key][held] = part[key]

    first_keys = [c.agent for c in columns]
    stage_keys = {"first": first_keys}
    if retrieval:
        stage_keys["evidence"] = [*first_keys, retrieval]
    reeval_keys = [f"{c.agent}{REEVAL_SUFFIX}" for c in columns if c.reeval]
    kept = first_keys if keep_first_looks else [c.agent for c in columns if not c.reeval]
    stage_keys["reeval"] = [*kept, *reeval_keys, *([retrieval] if retrieval else [])]
    weights: dict[str, dict[str, float]] = {}
    fused: dict[str, np.ndarray] = {}
    for stage, keys in stage_keys.items():
        w = fit_weights([oof[k] for k in keys], truth)
        weights[stage] = {k: float(v) for k, v in zip(keys, w, strict=True)}
        fused[stage] = fuse_matrix([oof[k] for k in keys], w)
    base = "evidence" if retrieval else "first"
    threshold, summary = choose_threshold(
        fused[base],
        fused["reeval"],
        truth,
        budget=reeval_budget,
        cost=reeval_cost,
        criterion=criterion,
    )
    if trust_threshold is not None:
        threshold = trust_threshold
    thresholds: dict[str, float | None] = {"evidence": threshold, "reeval": threshold}
    thresholds["first"] = None if retrieval else threshold
    policy = TrustPolicy(
        profiles=profiles,
        weights=weights,
        thresholds=thresholds,
        retrieval_source=retrieval,
        agent_model=agent_model,
        keep_first_looks=keep_first_looks,
        **options,
    )
    policy.fit_summary_ = {
        "n": len(ids),
        "inner_folds": folds,
        "oof_cascade": summary,
        "ids": list(ids),
    }
    return policy


def save_trust_policy(
    path: str | Path, policy: TrustPolicy, *, fitted_on: Mapping[str, Any]
) -> None:
    """Write the policy's fitted settings (``TrustPolicy.to_dict``) and what they were fitted on."""
    payload = {
        "format": POLICY_FILE_FORMAT,
        "version": POLICY_FILE_VERSION,
        "fitted_on": dict(fitted_on),
        "policy": policy.to_dict(),
    }
    write_text_atomically(path, json.dumps(payload, indent=2) + "\n", what="the policy file")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def load_trust_policy_settings(path: str | Path) -> dict[str, Any]:
    """The keyword settings of ``TrustPolicy`` saved by ``save_trust_policy`` (without
    ``retrieval_source``: the run names its own retriever); InputError naming the file if bad."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("no such policy file", path=str(p)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read the policy file ({e})", path=str(p)) from None
    except json.JSONDecodeError as e:
        raise InputError(f"invalid JSON ({e.msg})", path=str(p), line=e.lineno) from None
    if not isinstance(data, dict) or data.get("format") != POLICY_FILE_FORMAT:
        raise InputError(
            f"not a trust policy file (expected format {POLICY_FILE_FORMAT!r}; "
            "write one with trustorch eval replay --save-policy)",
            path=str(p),
        )
    raw = data.get("policy")
    if not isinstance(raw, dict):
        raise InputError("'policy' must be an object of settings", path=str(p))
    settings: dict[str, Any] = {}
    for key, types in SETTING_TYPES.items():
        if key not in raw:
            continue
        value = raw[key]
        if not isinstance(value, types):
            raise InputError(f"'policy.{key}' has the wrong type", path=str(p))
        settings[key] = value
    for stage, weights in settings.get("weights", {}).items():
        if not isinstance(weights, dict) or not all(_number(w) for w in weights.values()):
            raise InputError(f"'policy.weights.{stage}' must map sources to numbers", path=str(p))
    for stage, cut in settings.get("thresholds", {}).items():
        if cut is not None and not _number(cut):
            raise InputError(f"'policy.thresholds.{stage}' must be a number or null", path=str(p))
    return settings
