"""The actor side of the cluster-wide endpoint limits (``cluster_limits``): ``EndpointBudgets``,
one named Ray actor per run, holding each endpoint's AIMD window and the permits leased out of
it, and the messages the workers exchange with it (``Report`` in, ``Grant`` out).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any

from agents.openai_compat.window import AimdWindow

LEASE_S = 0.25
"""How often a worker holding permits reports to the actor, and how long a lease request
waits at the actor before it is sent again with fresh news."""
STALE_S = 5.0
"""Silence after which the actor takes a worker's permits back."""
ACTOR_PREFIX = "trustorch-endpoint-limits-"


@dataclass(frozen=True)
class Report:
    """What a worker tells the actor about one endpoint since its last message."""

    maximum: int
    holding: int
    """Permits the worker held when it sent this (what a restarted actor adopts)."""
    returning: int = 0
    answered: int = 0
    overloads: tuple[tuple[int, float | None], ...] = ()
    """(epoch of the call's permit, pause the server asked for) per overload signal."""


@dataclass(frozen=True)
class Grant:
    """The actor's answer: the permits the worker holds now (new ones included), its fair
    share, and the endpoint's window, decreases and pause."""

    held: int
    share: int
    limit: int
    epoch: int
    pause_left_s: float


@dataclass
class _Budget:
    window: AimdWindow
    held: dict[str, int] = field(default_factory=dict)
    seen: dict[str, float] = field(default_factory=dict)
    waiting: list[str] = field(default_factory=list)
    """Workers that asked for permits and got none yet, in the order they asked (a lease that
    timed out keeps its place: its worker asks again at once)."""
    reclaimed: set[str] = field(default_factory=set)
    peak_leased: int = 0
    leases: int = 0
    messages: int = 0

    @property
    def limit(self) -> int:
        return self.window.limit

    def share(self) -> int:
        """The window over the workers holding or asking for permits: rounded up, unless a
        worker waits holding none; then rounded down (0 when there are more workers than
        permits), so that the others hand theirs back as their calls end."""
        active = {w for w, n in self.held.items() if n > 0} | set(self.waiting)
        n = max(1, len(active))
        if any(self.held.get(w, 0) == 0 for w in self.waiting):
            return self.limit // n
        return math.ceil(self.limit / n)

    def apply(self, worker: str, report: Report) -> None:
        self.messages += 1
        now = time.monotonic()
        self.seen[worker] = now
        if report.maximum != self.window.maximum:
            self.window.set_maximum(report.maximum)
        # a worker not known (this actor restarted) keeps what it holds; one whose permits
        # were taken back holds none
        known = worker in self.held or worker in self.reclaimed
        held = self.held.get(worker, 0) if known else report.holding
        self.held[worker] = max(0, held - report.returning)
        self.window.answered(report.answered)
        for epoch, pause_s in report.overloads:
            self.window.overloaded(epoch)
            if pause_s is not None and pause_s > 0:
                self.window.pause_until(now + pause_s)
        for other, last in list(self.seen.items()):
            if now - last > STALE_S:
                self.held.pop(other, None)
                self.seen.pop(other, None)
                self.reclaimed.add(other)
                if other in self.waiting:
                    self.waiting.remove(other)

    def grantable(self, worker: str, want: int) -> int:
        """Permits ``worker`` may take now: none while paused, nor while a worker holding none
        waits before it (or at all, when ``worker`` holds some)."""
        if time.monotonic() < self.window.paused_until:
            return 0
        mine = self.held.get(worker, 0)
        ahead = self.waiting if mine else self.waiting[: self.waiting.index(worker)]
        if any(self.held.get(w, 0) == 0 for w in ahead if w != worker):
            return 0
        free = self.limit - sum(self.held.values())
        room = max(self.share() - mine, 1 if mine == 0 else 0)
        return max(0, min(want, free, room))

    def grant(self, worker: str) -> Grant:
        return Grant(
            held=self.held.get(worker, 0),
            share=self.share(),
            limit=self.limit,
            epoch=self.window.decreases,
            pause_left_s=max(0.0, self.window.paused_until - time.monotonic()),
        )

    def state(self, endpoint: str) -> dict[str, Any]:
        return {
            "endpoint": endpoint,
            "maximum": self.window.maximum,
            "limit": self.limit,
            "leased": sum(self.held.values()),
            "peak_leased": self.peak_leased,
            "decreases": self.window.decreases,
            "pauses": self.window.pauses,
            "leases": self.leases,
            "messages": self.messages,
        }


class EndpointBudgets:
    """The body of the run's Ray actor (async: a lease may wait while the others run): every
    endpoint's window and the permits leased out of it."""

    def __init__(self) -> None:
        self._budgets: dict[str, _Budget] = {}
        self._changed = asyncio.Condition()

    def _budget(self, endpoint: str, maximum: int) -> _Budget:
        found = self._budgets.get(endpoint)
        if found is None:
            found = self._budgets[endpoint] = _Budget(AimdWindow(maximum))
        return found

    async def sync(self, endpoint: str, worker: str, report: Report) -> Grant:
        """Take ``report`` in; the worker's permits and share now."""
        budget = self._budget(endpoint, report.maximum)
        budget.apply(worker, report)
        if worker in budget.waiting:  # it wants no more permits
            budget.waiting.remove(worker)
        async with self._changed:
            self._changed.notify_all()
        return budget.grant(worker)

    async def lease(
        self, endpoint: str, worker: str, report: Report, want: int, wait_s: float
    ) -> Grant:
        """Take ``report`` in, then grant up to ``want`` permits more (at most the worker's
        share, at least one when it holds none), waiting up to ``wait_s`` for one to be free."""
        budget = self._budget(endpoint, report.maximum)
        budget.apply(worker, report)
        deadline = time.monotonic() + wait_s
        if worker not in budget.waiting:
            budget.waiting.append(worker)
        async with self._changed:
            self._changed.notify_all()  # the others' shares just shrank
            while (n := budget.grantable(worker, want)) < 1:
                left = deadline - time.monotonic()
                if left <= 0 or worker not in budget.waiting:  # timed out, or reclaimed
                    return budget.grant(worker)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=min(left, LEASE_S))
            budget.held[worker] = budget.held.get(worker, 0) + n
            budget.waiting.remove(worker)
            budget.leases += 1
            budget.peak_leased = max(budget.peak_leased, sum(budget.held.values()))
        return budget.grant(worker)

    async def states(self) -> list[dict[str, Any]]:
        """Every endpoint's window and leases (the peak of permits leased at once included)."""
        return [budget.state(endpoint) for endpoint, budget in self._budgets.items()]

    async def cpu_s(self) -> float:
        """CPU seconds of this actor's process so far."""
        return time.process_time()


def start_budgets(run_id: str) -> tuple[str, Any]:
    """The run's ``EndpointBudgets`` actor, started by the driver (its name and handle)."""
    import ray

    name = ACTOR_PREFIX + run_id
    actor = (
        ray.remote(EndpointBudgets)
        .options(name=name, num_cpus=0, max_restarts=-1, max_concurrency=1000)
        .remote()
    )
    return name, actor
