"""The ``llm`` policy: an orchestrator LLM behind an OpenAI-compatible API.

It uses the reference study's two prompts (``prompts/templates/orchestrator_*.txt``): before the
last round the LLM reads the agents' answers and their measured calibration (accuracy, ECE, OCR,
CCC) and either decides or asks named agents to re-evaluate; on the last round it decides.

Replies are constrained by a JSON schema. Servers differ in how they take one: OpenAI takes
``{"type": "json_schema", ...}``; llama.cpp's server takes ``{"type": "json_object", "schema":
...}`` and rejects the former. ``JsonChat`` detects that once per server and adapts. A reply that
is still not valid is asked for once more, then the policy falls back to a confidence-weighted
vote and says so in the reason: it never raises into the graph.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from agents.prompting import load_template, render_text
from agents.types import Prediction, Task
from orchestrator.decision import Assessment
from rag.evidence import Evidence

StructuredMode = Literal["json_schema", "json_object_schema", "prompt_only"]
MODES: tuple[StructuredMode, ...] = ("json_schema", "json_object_schema", "prompt_only")
REASON_MAX_CHARS = 400
METRIC_NAMES = (("accuracy", "accuracy"), ("ece", "ECE"), ("ocr", "OCR"), ("ccc", "CCC"))


class LlmReplyError(Exception):
    """The LLM gave no usable reply (transport error, no JSON); ``usage`` when it answered."""

    def __init__(self, message: str, *, usage: Any = None) -> None:
        super().__init__(message)
        self.usage = usage


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
    task: Task, agents: Sequence[str], *, final: bool, bounded: bool
) -> dict[str, Any]:
    reason: dict[str, Any] = {"type": "string"}
    if bounded:
        reason["maxLength"] = REASON_MAX_CHARS
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


def _response_format(mode: StructuredMode, name: str, schema: dict[str, Any]) -> dict[str, Any]:
    if mode == "json_schema":
        return {
            "type": "json_schema",
            "json_schema": {"name": name, "schema": schema, "strict": True},
        }
    return {"type": "json_object", "schema": schema}


def parse_json_object(text: str | None) -> dict[str, Any]:
    """The first JSON object in a reply (code fences and surrounding prose tolerated)."""
    if not text:
        raise LlmReplyError("empty reply")
    cleaned = re.sub(r"^```(?:json)?|```$", "", text.strip(), flags=re.IGNORECASE).strip()
    match = re.search(r"\{.*\}", cleaned, re.DOTALL)
    if match is None:
        raise LlmReplyError(f"no JSON object in reply {text[:80]!r}")
    try:
        data = json.loads(match.group())
    except json.JSONDecodeError as e:
        raise LlmReplyError(f"invalid JSON in reply ({e.msg})") from e
    if not isinstance(data, dict):
        raise LlmReplyError("reply is not a JSON object")
    return data


class JsonChat:
    """One chat model on one OpenAI-compatible server, answering JSON that fits a schema.

    ``mode`` fixes how the schema is sent; ``None`` detects it on the first call (the first
    mode the server accepts is kept as ``mode_``).
    """

    def __init__(
        self,
        *,
        client: Any,
        model: str,
        mode: StructuredMode | None = None,
        temperature: float = 0.0,
        max_tokens: int = 320,
        seed: int | None = 0,
    ) -> None:
        self.client = client
        self.model = model
        self.mode = mode
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.seed = seed
        self.mode_: StructuredMode | None = mode
        self._lock = asyncio.Lock()

    async def _create(
        self, mode: StructuredMode, prompt: str, build_schema: Any, *, probing: bool = False
    ) -> Any:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        if self.seed is not None:
            kwargs["seed"] = self.seed
        if mode != "prompt_only":
            schema = build_schema(bounded=mode == "json_object_schema")
            kwargs["response_format"] = _response_format(mode, "orchestrator_reply", schema)
        client = self.client.with_options(max_retries=0) if probing else self.client
        return await client.chat.completions.create(**kwargs)

    async def complete(self, prompt: str, build_schema: Any) -> tuple[dict[str, Any], Any]:
        """The reply as a dict, and the usage block (or None)."""
        import openai

        if self.mode_ is None:
            async with self._lock:
                if self.mode_ is None:
                    return await self._detect(prompt, build_schema)
        try:
            completion = await self._create(self.mode_, prompt, build_schema)
        except openai.OpenAIError as e:
            raise LlmReplyError(f"{type(e).__name__}: {e}") from e
        return self._parsed(completion)

    async def _detect(self, prompt: str, build_schema: Any) -> tuple[dict[str, Any], Any]:
        import openai

        errors: list[str] = []
        for mode in MODES:
            try:
                completion = await self._create(mode, prompt, build_schema, probing=True)
            except openai.APIStatusError as e:
                # llama.cpp's server answers an unknown response_format with a 500 naming it
                if e.status_code in (400, 422) or "response_format" in str(e):
                    errors.append(f"{mode}: HTTP {e.status_code}")
                    continue
                raise LlmReplyError(f"{type(e).__name__}: {e}") from e
            except openai.OpenAIError as e:
                raise LlmReplyError(f"{type(e).__name__}: {e}") from e
            self.mode_ = mode
            return self._parsed(completion)
        raise LlmReplyError(f"the server accepted no response format ({'; '.join(errors)})")

    @staticmethod
    def _parsed(completion: Any) -> tuple[dict[str, Any], Any]:
        usage = getattr(completion, "usage", None)
        choices = getattr(completion, "choices", None) or []
        try:
            if not choices:
                raise LlmReplyError("reply without choices")
            return parse_json_object(choices[0].message.content), usage
        except LlmReplyError as e:
            raise LlmReplyError(str(e), usage=usage) from e


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


def _responses_text(predictions: Sequence[Prediction]) -> str:
    blocks = []
    for p in predictions:
        if not p.ok:
            blocks.append(f"Agent {p.agent} (round {p.round}): failed to answer ({p.error})")
            continue
        body = {"category": p.label, "confidence": round(p.confidence, 3), "reason": p.reason[:300]}
        blocks.append(f"Agent {p.agent} (round {p.round}) response:\n{json.dumps(body)}")
    return "\n\n".join(blocks) if blocks else "(no agent answered)"


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


def _peaked(task: Task, label: str, confidence: float) -> dict[str, float]:
    rest = (1.0 - confidence) / (len(task.labels) - 1)
    return {lab: (confidence if lab == label else rest) for lab in task.labels}


def _latest(predictions: Sequence[Prediction]) -> list[Prediction]:
    by_agent: dict[str, Prediction] = {}
    for p in predictions:
        if p.agent not in by_agent or p.round >= by_agent[p.agent].round:
            by_agent[p.agent] = p
    return list(by_agent.values())


class LlmPolicy:
    """The ``llm`` fusion policy (see the module docstring)."""

    name = "llm"

    def __init__(
        self,
        *,
        chat: JsonChat,
        profiles: Mapping[str, Any],
        usd_per_1m_input: float = 0.0,
        usd_per_1m_output: float = 0.0,
        trust_template: str = "orchestrator_trust",
        final_template: str = "orchestrator_final",
    ) -> None:
        self.chat = chat
        self.profiles = dict(profiles)
        self.usd_per_1m_input = usd_per_1m_input
        self.usd_per_1m_output = usd_per_1m_output
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
        latest = _latest(predictions)
        final = round >= max_rounds - 1
        if not any(p.ok for p in latest) and evidence is None and final:
            return self._fallback(task, latest, evidence, round, final, "no agent answered")
        agents = [p.agent for p in latest]
        prompt = self.render(task=task, predictions=latest, evidence=evidence, final=final)

        def build_schema(*, bounded: bool) -> dict[str, Any]:
            return _reply_schema(task, agents, final=final, bounded=bounded)

        started = time.perf_counter()
        cost = 0.0
        problems: list[str] = []
        for _attempt in range(2):
            try:
                data, usage = await self.chat.complete(prompt, build_schema)
            except LlmReplyError as e:
                problems.append(str(e))
                cost += self._cost(e.usage)
                continue
            cost += self._cost(usage)
            try:
                reply = (FinalReply if final else TrustReply).model_validate(data)
            except ValidationError as e:
                first = e.errors()[0]
                where = ".".join(str(x) for x in first["loc"]) or "reply"
                problems.append(f"reply does not fit the schema ({where}: {first['msg']})")
                continue
            label = task.normalise_label(reply.category)
            if label is None:
                problems.append(f"reply names unknown category {reply.category!r}")
                continue
            latency = time.perf_counter() - started
            return self._from_reply(task, agents, reply, label, round, final, cost, latency)
        assessment = self._fallback(task, latest, evidence, round, final, "; ".join(problems))
        latency = time.perf_counter() - started
        return Assessment(**{**assessment.to_dict(), "cost_usd": cost, "latency_s": latency})

    def _cost(self, usage: Any) -> float:
        if usage is None:
            return 0.0
        prompt_tokens = getattr(usage, "prompt_tokens", 0) or 0
        completion_tokens = getattr(usage, "completion_tokens", 0) or 0
        return (
            prompt_tokens * self.usd_per_1m_input + completion_tokens * self.usd_per_1m_output
        ) / 1e6

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
    ) -> Assessment:
        confidence = min(1.0, max(0.0, float(reply.confidence)))
        reevaluate: list[str] = []
        if isinstance(reply, TrustReply) and reply.action == "reevaluate":
            reevaluate = [a for a in dict.fromkeys(reply.reevaluate) if a in agents] or agents
        trusted = final or not reevaluate
        mode = self.chat.mode_ or "?"
        if final:
            route = "final decision"
        elif trusted:
            route = "the LLM trusts the agents"
        else:
            route = f"the LLM asks {', '.join(reevaluate)} to re-evaluate"
        return Assessment(
            policy=self.name,
            round=round,
            scores=_peaked(task, label, confidence),
            label=label,
            confidence=confidence,
            trusted=trusted,
            reevaluate=reevaluate,
            prediction_set=[label],
            reason=f"{route} ({mode}): {reply.reason[:REASON_MAX_CHARS]}",
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
        """Confidence-weighted vote of the agents (and the retrieval vote), said as such."""
        totals = dict.fromkeys(task.labels, 0.0)
        for p in latest:
            if p.ok and p.label in totals:
                totals[p.label] += max(p.confidence, 1e-6)
        if evidence is not None:
            for lab, score in evidence.vote.items():
                if lab in totals:
                    totals[lab] += score
        mass = sum(totals.values())
        reason = f"llm fallback ({why}): confidence-weighted vote"
        if mass <= 0:
            uniform = 1.0 / len(task.labels)
            return Assessment(
                policy=self.name,
                round=round,
                scores=dict.fromkeys(task.labels, uniform),
                label=None,
                confidence=uniform,
                trusted=True,
                prediction_set=list(task.labels),
                reason=reason + " has nothing to count: abstain",
            )
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
        )
