"""One concurrency limit per endpoint for a whole Ray run, whatever the number of workers.

Each worker process holds its own ``EndpointLimits`` (``agents.openai_compat.limits``); alone,
N workers would let an endpoint see N times its limit. Under ``--engine ray`` the workers'
limits are ``LeasedEndpointLimit``: a call starts only on a *permit* its process holds, and
permits are leased from ``EndpointBudgets`` (``endpoint_budgets``), one named Ray actor of the
run (created by the driver, so it lives and dies with the run) that keeps, for every endpoint:

- the cluster's AIMD window (the rules of ``limits``: start at the maximum, +1/window per
  reply, halved once per burst of 429/503, paused on ``Retry-After``), fed by every worker;
- the permits each worker holds; their sum never exceeds the window, and a worker never has
  more calls in flight than the permits it holds, so the endpoint never sees more calls in
  flight than the cluster's limit;
- a fair share (the window over the workers holding or asking for permits, see
  ``endpoint_budgets._Budget.share``): a worker holding more than its share hands permits back
  as its calls end, so a worker that holds none is never starved by busy ones.

Permits are leased in batches, not per call: a worker keeps the permits it holds for call
after call and talks to the actor only when its callers want more than it holds, and once per
``LEASE_S`` while it holds any (to report replies and overloads, hand back permits it did not
use during that time, and learn its share, the window, and a pause). An overload is reported
at once. A worker that has not reached the actor for ``STALE_S`` (killed, its event loop
stopped between shards) loses its permits to the others; it starts no call on permits older
than half of that.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

from agents.openai_compat.limits import EndpointLimit, LimitState
from orchestrator.engines.endpoint_budgets import LEASE_S, STALE_S, Grant, Report


class LeasedEndpointLimit(EndpointLimit):
    """An ``EndpointLimit`` whose window is the permits this process holds from the run's
    ``EndpointBudgets`` actor (``actor``, a Ray handle), shared with the other workers.

    Calls wait in ``EndpointLimit``'s queue; what changes is how many may start (the permits
    held, while the lease is fresh) and where a call's outcome goes (to the actor, which runs
    the AIMD window for the cluster). ``scale`` multiplies the maximum this process's clients
    bring into the cluster's (the number of workers, when no total was given)."""

    def __init__(self, endpoint: str, *, maximum: int, actor: Any, scale: int = 1) -> None:
        super().__init__(endpoint, maximum=maximum)
        self._actor = actor
        self._scale = scale
        self._worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._held = 0
        self._share = maximum * scale
        self._cluster_limit = maximum * scale
        self._returning = 0
        self._answered = 0
        self._overloads: list[tuple[int, float | None]] = []
        self._idle_low = 0
        self._contact = -math.inf
        self._courier: asyncio.Task[None] | None = None
        self._nudge: asyncio.Event | None = None

    @property
    def limit(self) -> int:
        fresh = time.monotonic() - self._contact < STALE_S / 2
        return self._held if fresh else 0

    def state(self) -> LimitState:
        return LimitState(
            endpoint=self.endpoint,
            limit=self._cluster_limit,
            maximum=self.maximum * self._scale,
            in_flight=self._in_flight,
            peak_in_flight=self._peak,
            decreases=self._window.decreases,
            pauses=self._window.pauses,
        )

    async def acquire(self, deadline: float = math.inf) -> Any:
        self._start_courier()
        if self._in_flight + len(self._waiters) >= self.limit:
            self._poke()
        return await super().acquire(deadline)

    def _count_start(self) -> None:
        super()._count_start()
        self._idle_low = min(self._idle_low, self._held - self._in_flight)

    def _finish(
        self, epoch: int, *, overloaded: bool, answered: bool, pause_s: float | None
    ) -> None:
        self._in_flight -= 1
        if overloaded:
            self._overloads.append((epoch, pause_s))
            if self._window.overloaded(epoch):  # at once here; the cluster's follows the report
                self._share = max(1, self._share // 2)
            if pause_s is not None and pause_s > 0:
                self._pause(pause_s)
            self._poke()
        elif answered:
            self._answered += 1
        if self._held > self._share:
            self._held -= 1
            self._returning += 1
        self._wake()

    def _poke(self) -> None:
        if self._nudge is not None:
            self._nudge.set()

    def _start_courier(self) -> None:
        loop = asyncio.get_running_loop()
        if self._courier is not None and not self._courier.done():
            if self._courier.get_loop() is loop:
                return
            self._courier.cancel()
        self._nudge = asyncio.Event()
        self._courier = loop.create_task(self._carry())

    def _wanted(self) -> int:
        waiting = sum(1 for waiter, _ in self._waiters if not waiter.done())
        return max(0, self._in_flight + waiting - self.limit)

    def _report(self) -> Report:
        unused = self._idle_low if not self._wanted() else 0
        if unused > 0:  # permits no call used since the last message go back
            self._held -= unused
            self._returning += unused
        report = Report(
            maximum=self.maximum * self._scale,
            holding=self._held + self._returning,
            returning=self._returning,
            answered=self._answered,
            overloads=tuple(self._overloads),
        )
        self._returning = self._answered = 0
        self._overloads = []
        self._idle_low = self._held - self._in_flight
        return report

    def _take_grant(self, grant: Grant) -> None:
        # permits handed back while the message was on its way are not in the actor's count yet
        self._held = max(0, grant.held - self._returning)
        self._share = grant.share
        self._cluster_limit = grant.limit
        self._window.decreases = max(self._window.decreases, grant.epoch)
        self._contact = time.monotonic()
        self._idle_low = min(self._idle_low, self._held - self._in_flight)
        if grant.pause_left_s > 0:
            self._pause(grant.pause_left_s)

    async def _carry(self) -> None:
        """Send the actor one message at a time: a lease while callers wait for permits, a
        report every ``LEASE_S`` while permits are held or news is pending; end when idle."""
        assert self._nudge is not None
        nudge = self._nudge
        while True:
            nudge.clear()
            want = self._wanted()
            report = self._report()
            try:
                if want:
                    grant = await self._actor.lease.remote(
                        self.endpoint, self._worker, report, want, LEASE_S
                    )
                else:
                    grant = await self._actor.sync.remote(self.endpoint, self._worker, report)
            except Exception:
                # the actor is restarting (Ray brings it back): the news goes with the next
                # message, whose ``holding`` a restarted actor adopts
                self._returning += report.returning
                self._answered += report.answered
                self._overloads[:0] = report.overloads
                await asyncio.sleep(LEASE_S)
                continue
            self._take_grant(grant)
            self._wake()
            if self._wanted():
                continue
            if self._held == 0 and not self._waiters and not self._pending_news():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(nudge.wait(), timeout=LEASE_S)

    def _pending_news(self) -> bool:
        return bool(self._returning or self._answered or self._overloads)


def cluster_limit_factory(actor_name: str, *, scale: int) -> Callable[..., EndpointLimit]:
    """What ``EndpointLimits(make_limit=...)`` takes in a worker: limits leased from the run's
    actor ``actor_name`` (looked up once, on the first endpoint)."""
    found: list[Any] = []

    def make_limit(endpoint: str, *, maximum: int) -> EndpointLimit:
        if not found:
            import ray

            found.append(ray.get_actor(actor_name))
        return LeasedEndpointLimit(endpoint, maximum=maximum, actor=found[0], scale=scale)

    return make_limit
