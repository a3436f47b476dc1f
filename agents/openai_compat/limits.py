"""How many calls may be in flight at once to one OpenAI-compatible server, and how that number
adapts to what the server says.

Concurrency belongs to the endpoint, not to the client object: every client given the same
``EndpointLimits`` table and the same server (its normalised base URL, credentials masked)
shares one ``EndpointLimit``. That limit is a window in the AIMD style of TCP:

- it starts at the endpoint's maximum and never leaves ``[1, maximum]``;
- each reply that is not an overload signal adds ``1 / window`` (about one slot more per
  window's worth of answers: additive increase);
- an overload signal halves it (multiplicative decrease): HTTP 429 or 503, or a connection
  that could not even be opened in time (a full accept queue). Only a call started after the
  last decrease can decrease it again, so a burst of 429s from calls that were all in flight
  together counts as one signal, not as one per call;
- a ``Retry-After`` on an overload reply pauses the whole endpoint: no call to it starts before
  the time the server asked for (capped by the caller's ``max_pause_s``); calls already in
  flight go on.

Other failures (a read timeout, a refused connection, a 400) say nothing about load and leave
the window alone.

The endpoint's maximum is ``concurrency`` when the table was given one, else the sum of what
each client registered on it brings: its own ``max_concurrency`` when it has one, else
``per_client`` (a run passes its ``-j``: every image in flight may have each of its agents'
calls in flight).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from agents.openai_compat.http1 import ConnectionPools
from agents.openai_compat.modes import OPENAI_API_URL
from agents.openai_compat.window import AimdWindow
from core.errors import InputError
from core.redact import redact_url

DEFAULT_PER_CLIENT = 4
"""What one client brings to its endpoint's maximum when nothing else is said (the old
per-client default: a lone client keeps four calls in flight)."""
_DEFAULT_PORTS = {"http": 80, "https": 443}


def endpoint_key(base_url: str | None) -> str:
    """The endpoint a base URL names, as shown and keyed: scheme and host in lower case, the
    default port and trailing slashes dropped, credentials masked (None: OpenAI's API)."""
    url = redact_url((base_url or OPENAI_API_URL).strip())
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return url.rstrip("/")
    if not parts.scheme or not parts.hostname:
        return url.rstrip("/")
    userinfo, at, _ = parts.netloc.rpartition("@")
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != _DEFAULT_PORTS.get(parts.scheme.lower()):
        host = f"{host}:{port}"
    netloc = f"{userinfo}{at}{host}"
    return urlunsplit((parts.scheme.lower(), netloc, parts.path.rstrip("/"), parts.query, ""))


class PausedPastDeadline(Exception):
    """The endpoint is paused (``Retry-After``) until after the caller's deadline."""


@dataclass(frozen=True)
class LimitState:
    """What an endpoint's limit is now, and what it went through."""

    endpoint: str
    limit: int
    maximum: int
    in_flight: int
    peak_in_flight: int
    decreases: int
    pauses: int


class Slot:
    """One call's place in an endpoint's window; ``release`` it exactly once (further calls do
    nothing), saying how the call went."""

    def __init__(self, limit: EndpointLimit, epoch: int) -> None:
        self._limit = limit
        self._epoch = epoch
        self._released = False

    def release(
        self, *, overloaded: bool = False, answered: bool = True, pause_s: float | None = None
    ) -> None:
        """``overloaded``: the server said it is over its load (``pause_s``: for how long it
        asked to be left alone); ``answered``: a reply came back (grows the window when not an
        overload). Neither: a failure that says nothing about load."""
        if self._released:
            return
        self._released = True
        self._limit._finish(self._epoch, overloaded=overloaded, answered=answered, pause_s=pause_s)


class EndpointLimit:
    """The adaptive concurrency limit of one endpoint (see the module docstring). Callers use
    ``acquire`` and ``Slot.release``; ``state`` says where it stands."""

    def __init__(self, endpoint: str, *, maximum: int) -> None:
        if maximum < 1:
            raise InputError(f"the concurrency of {endpoint} must be at least 1, got {maximum}")
        self.endpoint = endpoint
        self._window = AimdWindow(maximum)
        self._in_flight = 0
        self._peak = 0
        self._waiters: deque[tuple[asyncio.Future[None], float]] = deque()

    @property
    def maximum(self) -> int:
        return self._window.maximum

    @property
    def limit(self) -> int:
        """Calls that may be in flight now (the window, whole)."""
        return self._window.limit

    def state(self) -> LimitState:
        return LimitState(
            endpoint=self.endpoint,
            limit=self.limit,
            maximum=self.maximum,
            in_flight=self._in_flight,
            peak_in_flight=self._peak,
            decreases=self._window.decreases,
            pauses=self._window.pauses,
        )

    def set_maximum(self, maximum: int) -> None:
        """A new maximum (before calls start: a new client joined); the window follows it up."""
        if maximum < 1:
            raise InputError(f"the concurrency of {self.endpoint} must be at least 1")
        self._window.set_maximum(maximum)

    async def acquire(self, deadline: float = math.inf) -> Slot:
        """A slot, once the endpoint is not paused and its window has room; callers wait in
        the order they came. ``PausedPastDeadline`` at once (or as soon as a pause starts)
        when the endpoint is paused until after ``deadline`` (event-loop time). Cancelled
        while waiting: no slot is kept."""
        loop = asyncio.get_running_loop()
        if self._window.paused_until >= deadline:
            raise PausedPastDeadline(self.endpoint)
        if not self._waiters and self._can_start(loop):
            return self._take()
        waiter: asyncio.Future[None] = loop.create_future()
        entry = (waiter, deadline)
        self._waiters.append(entry)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # granted just as the caller was cancelled: hand the slot on
                self._in_flight -= 1
                self._wake()
            else:
                self._discard(entry)
            raise
        return Slot(self, self._window.decreases)

    def _can_start(self, loop: asyncio.AbstractEventLoop) -> bool:
        return self._in_flight < self.limit and loop.time() >= self._window.paused_until

    def _take(self) -> Slot:
        self._count_start()
        return Slot(self, self._window.decreases)

    def _count_start(self) -> None:
        self._in_flight += 1
        self._peak = max(self._peak, self._in_flight)

    def _discard(self, entry: tuple[asyncio.Future[None], float]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(entry)

    def _finish(
        self, epoch: int, *, overloaded: bool, answered: bool, pause_s: float | None
    ) -> None:
        self._in_flight -= 1
        if overloaded:
            self._window.overloaded(epoch)
            if pause_s is not None and pause_s > 0:
                self._pause(pause_s)
        elif answered:
            self._window.answered()
        self._wake()

    def _pause(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        if self._window.pause_until(until):
            loop.call_at(until, self._wake)
            for waiter, deadline in list(self._waiters):
                if deadline <= until and not waiter.done():
                    self._waiters.remove((waiter, deadline))
                    waiter.set_exception(PausedPastDeadline(self.endpoint))

    def _wake(self) -> None:
        """Hand free slots to the callers waiting longest (their futures' loops still open)."""
        while self._waiters:
            waiter, _ = self._waiters[0]
            loop = waiter.get_loop()
            if waiter.done() or loop.is_closed():
                self._waiters.popleft()
                continue
            if not self._can_start(loop):
                return
            self._waiters.popleft()
            self._count_start()
            waiter.set_result(None)


class EndpointLimits:
    """The concurrency limits of a run's endpoints, one per normalised base URL, shared by the
    clients given this table (a run's agents and its ``llm`` policy), and the keep-alive
    connections of their direct transports (``connections``).

    ``concurrency``: every endpoint's maximum (None: the sum of what its clients bring);
    ``per_client``: what a client without a ``max_concurrency`` of its own brings;
    ``make_limit``: what builds an endpoint's limit from its key and maximum (default
    ``EndpointLimit``, this process's own; ``--engine ray`` gives one whose window is shared by
    the cluster's workers, ``orchestrator.engines.cluster_limits``)."""

    def __init__(
        self,
        *,
        concurrency: int | None = None,
        per_client: int = DEFAULT_PER_CLIENT,
        make_limit: Callable[..., EndpointLimit] | None = None,
    ):
        if concurrency is not None and concurrency < 1:
            raise InputError(f"the endpoint concurrency must be at least 1, got {concurrency}")
        if per_client < 1:
            raise InputError(f"per_client must be at least 1, got {per_client}")
        self.concurrency = concurrency
        self.per_client = per_client
        self._make_limit = make_limit or EndpointLimit
        self.connections = ConnectionPools()
        self._limits: dict[str, EndpointLimit] = {}
        self._brought: dict[str, int] = {}

    def register(self, base_url: str | None, own_cap: int | None = None) -> EndpointLimit:
        """The limit of ``base_url``'s endpoint, for one more client (``own_cap``: its own
        ``max_concurrency``), the endpoint's maximum raised by what it brings."""
        key = endpoint_key(base_url)
        self._brought[key] = self._brought.get(key, 0) + (own_cap or self.per_client)
        maximum = self.concurrency or self._brought[key]
        found = self._limits.get(key)
        if found is None:
            found = self._limits[key] = self._make_limit(key, maximum=maximum)
        else:
            found.set_maximum(maximum)
        return found

    def get(self, base_url: str | None) -> EndpointLimit | None:
        """The limit of ``base_url``'s endpoint, if a client registered on it."""
        return self._limits.get(endpoint_key(base_url))

    def states(self) -> list[LimitState]:
        """Every endpoint's state, in the order they were first registered."""
        return [limit.state() for limit in self._limits.values()]
