"""The ``llm`` policy: an orchestrator LLM behind an OpenAI-compatible API.

The decision takes the reference study's two steps (arXiv 2507.10571), with prompts of our own
(``prompts/templates/orchestrator_*.txt``): before the last round the LLM reads the agents'
answers and their measured calibration (accuracy, ECE, OCR, CCC) and either decides or names
agents to look again; on the last round it decides. The agents' answers are quoted as JSON data
between ``<answers>`` markers (angle brackets inside them escaped, so an answer cannot close the
quote), and the prompt says that text inside is not an instruction.

Replies are constrained by a JSON schema, sent in the way the server takes one (the adapter,
``agents.openai_compat``, learns that once per server and model) and priced from its one price
table. A reply that is still not valid is asked for once more, then the policy falls back to a
confidence-weighted vote, says so in the reason and names why in ``Assessment.fallback`` (run
summaries count them): it never raises into the graph.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel

from agents.openai_compat import (
    ChatError,
    EndpointLimits,
    ModelPrice,
    OpenAIChatClient,
    ReplySchema,
    ServerFeatureTable,
)
from agents.prompting import load_template, render_text
from agents.types import Prediction
from core.task import Task
from eval.metric_table import Report, metrics_in
from eval.scores import peaked_label_scores
from orchestrator.decision import Assessment
from orchestrator.policies.common import latest_answers
from rag.evidence import Evidence

REASON_MAX_CHARS = 400
AGENT_REASON_MAX_CHARS = 300
METRIC_NAMES = (("accuracy", "accuracy"), *((m.key, m.name) for m in metrics_in(Report.PROMPT)))


class TrustReply(BaseModel):
    """The first prompt's reply: decide now, or name the agents to ask again."""

    action: Literal["decide", "reevaluate"]
    category: str
    confidence: float
    reevaluate: list[str] = []
    reason: str = ""


class FinalReply(BaseModel):
    """The final prompt's reply."""

    category: str
    confidence: float
    reason: str = ""


def _reply_schema(
    task: Task, agents: Sequence[str], *, final: bool, reason_max_chars: int | None
) -> dict[str, Any]:
    reason: dict[str, Any] = {"type": "string"}
    if reason_max_chars is not None:
        reason["maxLength"] = reason_max_chars
    props: dict[str, Any] = {}
    if not final:
        props["action"] = {"type": "string", "enum": ["decide", "reevaluate"]}
    props["category"] = {"type": "string", "enum": list(task.labels)}
    props["confidence"] = {"type": "number", "minimum": 0, "maximum": 1}
    if not final:
        props["reevaluate"] = {"type": "array", "items": {"type": "string", "enum": list(agents)}}
    props["reason"] = reason
    return {
        "type": "object",
        "properties": props,
        "required": list(props),
        "additionalProperties": False,
    }


def reply_token_budget(reason_max_chars: int, agents: int) -> int:
    """Tokens a schema-valid reply may need: the reason at one token per character (the worst
    case, for servers that do not enforce ``maxLength``), plus the other fields and the agents'
    names (a cut reply is no reply at all, so the budget errs on the large side)."""
    return reason_max_chars + 96 + 16 * agents


def orchestrator_client(
    *,
    model: str,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout_s: float = 120.0,
    max_retries: int = 2,
    prices: Mapping[str, ModelPrice] | None = None,
    servers: ServerFeatureTable | None = None,
    limits: EndpointLimits | None = None,
    max_tokens: int = reply_token_budget(REASON_MAX_CHARS, agents=4),
) -> OpenAIChatClient:
    """The orchestrator LLM's client: replies at temperature 0 with a fixed seed, no
    log-probabilities, ``max_tokens`` sized to the reply schema."""
    return OpenAIChatClient(
        model=model,
        base_url=base_url,
        api_key=api_key,
        timeout_s=timeout_s,
        max_retries=max_retries,
        logprobs=False,
        temperature=0.0,
        max_tokens=max_tokens,
        seed=0,
        prices=prices,
        servers=servers,
        limits=limits,
    )


def _profile_number(profile: Any, name: str) -> float | None:
    value = getattr(profile, name, None)
    return None if value is None else float(value)


def _calibration_text(agents: Sequence[str], profiles: Mapping[str, Any]) -> str:
    lines = []
    for agent in agents:
        profile = profiles.get(agent)
        if profile is None:
            lines.append(f"- {agent}: not evaluated (treat its confidence as unreliable)")
            continue
        parts = [f"n={getattr(profile, 'n', '?')}"]
        for key, label in METRIC_NAMES:
            value = _profile_number(profile, key)
            parts.append(f"{label}={value:.3f}" if value is not None else f"{label}=unknown")
        lines.append(f"- {agent}: " + ", ".join(parts))
    return "\n".join(lines)


def quoted_json(value: Any) -> str:
    """``value`` as one line of JSON with ``<`` and ``>`` escaped, so that text written by a
    model cannot end the ``<answers>`` quote it is placed in."""
    return json.dumps(value, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e")


def _responses_text(predictions: Sequence[Prediction]) -> str:
    lines = []
    for p in predictions:
        body: dict[str, Any] = {"agent": p.agent, "look": p.round + 1}
        if p.ok:
            body |= {
                "category": p.label,
                "confidence": round(p.confidence, 3),
                "reason": p.reason[:AGENT_REASON_MAX_CHARS],
            }
        else:
            body["failed"] = (p.error or "no answer")[:AGENT_REASON_MAX_CHARS]
        lines.append(quoted_json(body))
    return "\n".join(lines) if lines else "(no agent answered)"


def _retrieval_text(evidence: Evidence | None) -> str:
    if evidence is None:
        return "(not retrieved yet)"
    vote = ", ".join(
        f"{label}: {score:.2f}"
        for label, score in sorted(evidence.vote.items(), key=lambda kv: -kv[1])
    )
    return (
        f"{len(evidence.neighbours) or evidence.k} most similar labelled images; "
        f"share of similarity per category: {vote or 'none'}"
    )


class LlmPolicy:
    """The ``llm`` fusion policy (see the module docstring)."""

    name = "llm"
    assess_after_retrieval = False

    def __init__(
        self,
        *,
        client: OpenAIChatClient,
        profiles: Mapping[str, Any],
        trust_template: str = "orchestrator_trust",
        final_template: str = "orchestrator_final",
        reason_max_chars: int = REASON_MAX_CHARS,
        retrieval_source: str | None = None,
    ) -> None:
        self.client = client
        self.retrieval_source = retrieval_source
        self.reason_max_chars = reason_max_chars
        self.profiles = dict(profiles)
        self.trust_template = trust_template
        self.final_template = final_template
        self._trust = load_template(trust_template)
        self._final = load_template(final_template)

    def render(
        self,
        *,
        task: Task,
        predictions: Sequence[Prediction],
        evidence: Evidence | None,
        final: bool,
    ) -> str:
        agents = [p.agent for p in predictions]
        values = {
            "subject": task.subject,
            "labels": ", ".join(task.labels),
            "label_descriptions": "\n".join(f"- {k}: {v}" for k, v in task.descriptions.items()),
            "agents_response": _responses_text(predictions),
            "agents_calibration": _calibration_text(agents, self.profiles),
            "retrieval": _retrieval_text(evidence),
        }
        name = self.final_template if final else self.trust_template
        return render_text(self._final if final else self._trust, values, source=name).strip()

    async def assess(
        self,
        *,
        task: Task,
        predictions: Sequence[Prediction],
        evidence: Evidence | None,
        round: int,
        max_rounds: int,
    ) -> Assessment:
        latest = latest_answers(predictions)
        final = round >= max_rounds - 1
        if not any(p.ok for p in latest) and evidence is None and final:
            return self._fallback(task, latest, evidence, round, final, "no agent answered")
        agents = [p.agent for p in latest]
        prompt = self.render(task=task, predictions=latest, evidence=evidence, final=final)

        schema = ReplySchema(
            name="orchestrator_reply",
            schema=_reply_schema(task, agents, final=final, reason_max_chars=None),
            bounded=_reply_schema(
                task, agents, final=final, reason_max_chars=self.reason_max_chars
            ),
        )
        messages = [{"role": "user", "content": prompt}]
        started = time.perf_counter()
        cost = 0.0
        problems: list[str] = []
        for _attempt in range(2):
            try:
                reply = await self.client.complete_json(
                    messages, schema=schema, model=FinalReply if final else TrustReply
                )
            except ChatError as e:
                problems.append(str(e))
                cost += e.cost_usd
                continue
            cost += reply.completion.cost_usd
            label = task.normalise_label(reply.value.category)
            if label is None:
                problems.append(f"reply names unknown category {reply.value.category!r}")
                continue
            latency = time.perf_counter() - started
            mode = reply.completion.mode or "?"
            return self._from_reply(
                task, agents, reply.value, label, round, final, cost, latency, mode
            )
        assessment = self._fallback(task, latest, evidence, round, final, "; ".join(problems))
        latency = time.perf_counter() - started
        return Assessment(**{**assessment.to_dict(), "cost_usd": cost, "latency_s": latency})

    def _from_reply(
        self,
        task: Task,
        agents: list[str],
        reply: TrustReply | FinalReply,
        label: str,
        round: int,
        final: bool,
        cost: float,
        latency: float,
        mode: str,
    ) -> Assessment:
        confidence = min(1.0, max(0.0, float(reply.confidence)))
        reevaluate: list[str] = []
        if isinstance(reply, TrustReply) and reply.action == "reevaluate":
            reevaluate = [a for a in dict.fromkeys(reply.reevaluate) if a in agents] or agents
        trusted = final or not reevaluate
        if final:
            route = "final decision"
        elif trusted:
            route = "the LLM trusts the agents"
        else:
            route = f"the LLM asks {', '.join(reevaluate)} to re-evaluate"
        return Assessment(
            policy=self.name,
            round=round,
            scores=peaked_label_scores(task.labels, label, confidence),
            label=label,
            confidence=confidence,
            trusted=trusted,
            reevaluate=reevaluate,
            prediction_set=[label],
            reason=f"{route} ({mode}): {reply.reason[: self.reason_max_chars]}",
            cost_usd=cost,
            latency_s=latency,
        )

    def _fallback(
        self,
        task: Task,
        latest: Sequence[Prediction],
        evidence: Evidence | None,
        round: int,
        final: bool,
        why: str,
    ) -> Assessment:
        """Confidence-weighted vote of the agents (and the retrieval vote), said as such.

        With the evidence in, the retriever's own answer (``retrieval_source``) is not counted
        again."""
        totals = dict.fromkeys(task.labels, 0.0)
        for p in latest:
            if evidence is not None and p.agent == self.retrieval_source:
                continue
            if p.ok and p.label in totals:
                totals[p.label] += max(p.confidence, 1e-6)
        if evidence is not None:
            for lab, score in evidence.vote.items():
                if lab in totals:
                    totals[lab] += score
        mass = sum(totals.values())
        reason = f"llm fallback ({why}): confidence-weighted vote"
        if mass <= 0:
            abstention = Assessment.abstention(
                policy=self.name,
                labels=task.labels,
                round=round,
                reason=reason + " has nothing to count: abstain",
                trusted=True,
                confidence=1.0 / len(task.labels),
            )
            return Assessment(**{**abstention.to_dict(), "fallback": why})
        scores = {lab: v / mass for lab, v in totals.items()}
        label = max(scores, key=scores.__getitem__)
        answered = {p.label for p in latest if p.ok}
        trusted = final or len(answered) <= 1
        reevaluate = [] if trusted else [p.agent for p in latest]
        return Assessment(
            policy=self.name,
            round=round,
            scores=scores,
            label=label,
            confidence=scores[label],
            trusted=trusted,
            reevaluate=reevaluate,
            prediction_set=[label],
            reason=reason + ("" if trusted else "; the agents disagree: re-evaluate"),
            fallback=why,
        )
