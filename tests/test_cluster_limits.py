"""The cluster-wide endpoint limit of ``--engine ray`` (``orchestrator.engines.cluster_limits``)
without a cluster: the ``EndpointBudgets`` actor's body (``endpoint_budgets``) runs in this
process behind a stand-in for a Ray actor handle (``InProcessHandle``, a FAKE of
``handle.method.remote(...)``), and several ``LeasedEndpointLimit`` play the workers. The same
classes run on a real cluster in test_ray_engine's
``test_workers_share_one_endpoint_limit_across_the_cluster``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from orchestrator.engines import endpoint_budgets
from orchestrator.engines.cluster_limits import LeasedEndpointLimit
from orchestrator.engines.endpoint_budgets import EndpointBudgets, Report

ENDPOINT = "http://127.0.0.1:9/v1"


class InProcessHandle:
    """FAKE Ray actor handle: ``handle.method.remote(*args)`` runs the actor's coroutine as a
    task of this event loop (a round trip without the network), counting the messages."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor
        self.messages = 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.actor, name)
        handle = self

        class Remote:
            @staticmethod
            def remote(*args: Any) -> Any:
                handle.messages += 1
                return asyncio.ensure_future(method(*args))

        return Remote


async def _calls(limit: LeasedEndpointLimit, n: int, seen: dict[str, int], **outcome: Any) -> None:
    async def one() -> None:
        slot = await limit.acquire()
        seen["now"] += 1
        seen["max"] = max(seen["max"], seen["now"])
        await asyncio.sleep(0.01)
        seen["now"] -= 1
        slot.release(**outcome)

    await asyncio.gather(*(one() for _ in range(n)))


def test_workers_never_exceed_the_cluster_limit_and_share_it():
    async def scenario() -> tuple[dict[str, int], list[dict[str, Any]], int]:
        handle = InProcessHandle(EndpointBudgets())
        workers = [LeasedEndpointLimit(ENDPOINT, maximum=5, actor=handle) for _ in range(3)]
        seen = {"now": 0, "max": 0}
        await asyncio.gather(*(_calls(w, 40, seen) for w in workers))
        return seen, await handle.actor.states(), handle.messages

    seen, (state,), messages = asyncio.run(scenario())
    assert seen["max"] == 5  # the cluster's 5, not 3 x 5
    assert state["peak_leased"] <= 5 and state["maximum"] == 5
    assert messages < 120 / 2  # leases of several permits, not a message per call


def test_an_overload_seen_by_one_worker_shrinks_every_workers_share():
    async def scenario() -> tuple[int, int, int]:
        budgets = EndpointBudgets()
        handle = InProcessHandle(budgets)
        quiet = LeasedEndpointLimit(ENDPOINT, maximum=8, actor=handle)
        loud = LeasedEndpointLimit(ENDPOINT, maximum=8, actor=handle)
        seen = {"now": 0, "max": 0}
        await asyncio.gather(_calls(quiet, 8, seen), _calls(loud, 8, seen))
        await asyncio.sleep(2 * endpoint_budgets.LEASE_S)
        await asyncio.gather(_calls(loud, 4, seen, overloaded=True, pause_s=0.05))
        await asyncio.sleep(2 * endpoint_budgets.LEASE_S)  # the reports reach the actor
        await _calls(quiet, 1, seen)
        (state,) = await budgets.states()
        return state["limit"], state["decreases"], quiet.state().limit

    limit, decreases, seen_by_quiet = asyncio.run(scenario())
    assert decreases == 1  # one burst of 429s, one decrease
    assert limit == 4 and seen_by_quiet == 4


def test_the_permits_of_a_silent_worker_go_to_the_others(monkeypatch):
    monkeypatch.setattr(endpoint_budgets, "STALE_S", 0.2)

    async def scenario() -> tuple[int, int]:
        budgets = EndpointBudgets()
        first = await budgets.lease(ENDPOINT, "dead", Report(maximum=2, holding=0), 2, 0.1)
        await asyncio.sleep(0.3)  # "dead" says nothing more
        second = await budgets.lease(ENDPOINT, "alive", Report(maximum=2, holding=0), 2, 1.0)
        # the silent worker comes back: it holds nothing any more
        back = await budgets.sync(ENDPOINT, "dead", Report(maximum=2, holding=2))
        return first.held + second.held, back.held

    granted, back = asyncio.run(scenario())
    assert granted == 4 and back == 0


def test_a_busy_worker_hands_its_permit_to_one_that_holds_none():
    async def scenario() -> list[str]:
        handle = InProcessHandle(EndpointBudgets())
        order: list[str] = []

        async def calls(name: str, limit: LeasedEndpointLimit, n: int) -> None:
            for _ in range(n):  # one call after another, never idle
                slot = await limit.acquire()
                order.append(name)
                await asyncio.sleep(0.03)
                slot.release()

        first = LeasedEndpointLimit(ENDPOINT, maximum=1, actor=handle)
        second = LeasedEndpointLimit(ENDPOINT, maximum=1, actor=handle)
        await asyncio.gather(calls("a", first, 16), calls("b", second, 16))
        return order

    order = asyncio.run(scenario())
    # one permit for two workers: "b" starts long before "a" has made all its calls
    assert order.index("b") < 12 and order.count("a") == order.count("b") == 16
