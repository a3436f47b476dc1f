"""The decisions JSONL of ``trustorch run`` read as labelled records.

Every decision with a known truth gives per agent its first look (round 0) under the agent's
name and its LAST second look (the highest round >= 1; earlier re-evaluations are dropped) under
``<agent>@reeval``, the name the trust policy looks its profile up by. The retrieval vote of the
decision's evidence is a first look of the agent that retrieved it (``evidence.retriever``;
``retrieval`` in files written before it was recorded) unless that agent answered itself: the
policy of ``trustorch run`` looks the vote's profile up by that name. Without a task the labels
are those of the preset named in the decisions' ``task``, else the truths and the scores'
labels together.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from agents.types import REEVAL_SUFFIX, RETRIEVAL_AGENT
from core.errors import InputError
from core.task import Task
from eval.recorded.fields import parse_round

DECISION_FIELDS = frozenset({"predictions", "sha256"})


def is_decisions_header(header: Sequence[str]) -> bool:
    """Whether a JSONL file's first object looks like a Decision of ``trustorch run``."""
    return set(header) >= DECISION_FIELDS


def _decision_predictions(
    n: int, decision: dict[str, Any], path: str
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(round, prediction) of one decision line's predictions, validated."""
    preds = decision.get("predictions")
    if preds is None:
        return
    if not isinstance(preds, list):
        raise InputError("must be a list of predictions", path=path, line=n, field="predictions")
    for i, pred in enumerate(preds):
        where = f"predictions[{i}]"
        if not isinstance(pred, dict):
            raise InputError("must be a prediction object", path=path, line=n, field=where)
        yield parse_round(pred.get("round"), path=path, line=n, column=f"{where}.round"), pred


def decision_rows(
    rows: list[tuple[int, dict[str, Any]]], path: str
) -> list[tuple[int, dict[str, Any]]]:
    """Flatten decision lines into long rows: per agent its first look and its last second look."""
    flat: list[tuple[int, dict[str, Any]]] = []
    for n, decision in rows:
        truth = decision.get("truth")
        if not truth:
            continue
        looks = [
            (rnd, str(pred.get("agent", "")), pred)
            for rnd, pred in _decision_predictions(n, decision, path)
        ]
        last: dict[str, int] = {}
        for i, (rnd, agent, _) in enumerate(looks):
            if rnd > 0 and (agent not in last or rnd >= looks[last[agent]][0]):
                last[agent] = i
        evidence = decision.get("evidence")
        evidence = evidence if isinstance(evidence, dict) else {}
        vote = evidence.get("vote")
        source = str(evidence.get("retriever") or RETRIEVAL_AGENT)
        if (
            isinstance(vote, dict)
            and vote
            and not any(agent == source and rnd == 0 for rnd, agent, _ in looks)
        ):
            best = max(vote, key=vote.__getitem__)
            looks.append((0, source, {"label": best, "confidence": vote[best], "scores": vote}))
        for i, (rnd, agent, pred) in enumerate(looks):
            if rnd > 0 and last[agent] != i:
                continue
            flat.append(
                (
                    n,
                    {
                        "id": decision.get("sha256", ""),
                        "image": decision.get("image", ""),
                        "agent": agent if rnd == 0 else f"{agent}{REEVAL_SUFFIX}",
                        "truth": truth,
                        "pred": pred.get("label"),
                        "confidence": pred.get("confidence"),
                        "scores": pred.get("scores"),
                        "reason": pred.get("reason", ""),
                        "round": 0,
                    },
                )
            )
    return flat


def named_preset(rows: list[tuple[int, dict[str, Any]]]) -> Task | None:
    """The task preset every decision line names, when there is exactly one such preset."""
    from core.task import load_task, preset_names

    names = {str(d.get("task") or "") for _, d in rows}
    if len(names) != 1:
        return None
    name = names.pop()
    return load_task(name) if name in preset_names() else None


def score_labels(rows: list[tuple[int, dict[str, Any]]]) -> set[str]:
    """Labels named by the rows' scores (object keys or the study's ``category`` entries)."""
    found: set[str] = set()
    for _, row in rows:
        scores = row.get("scores")
        if isinstance(scores, dict):
            found.update(str(k) for k in scores)
        elif isinstance(scores, list):
            found.update(
                str(x["category"]) for x in scores if isinstance(x, dict) and "category" in x
            )
    return found
