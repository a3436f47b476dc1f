"""The AIMD window of one endpoint: the arithmetic shared by a process's own limit
(``limits.EndpointLimit``) and the cluster's (``orchestrator.engines.endpoint_budgets``).

It holds no clock and no callers: whoever owns it says what happened (replies, overload
signals with the decrease epoch their call started in, pauses as absolute times on the owner's
clock) and reads back how many calls may be in flight.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class AimdWindow:
    """How many calls may be in flight at once, in ``[1, maximum]``; it starts at the maximum.

    ``decreases`` is also the epoch a call records when it starts: an overload signal from a
    call that started before the last decrease does not decrease again (a burst of 429s from
    calls in flight together counts once)."""

    maximum: int
    size: float = field(init=False)
    decreases: int = 0
    pauses: int = 0
    paused_until: float = 0.0

    def __post_init__(self) -> None:
        self.size = float(self.maximum)

    @property
    def limit(self) -> int:
        """The window, whole."""
        return max(1, min(self.maximum, int(self.size)))

    def answered(self, replies: int = 1) -> None:
        """Additive increase: about one slot more per window's worth of replies."""
        for _ in range(replies):
            self.size = min(float(self.maximum), self.size + 1.0 / self.size)

    def overloaded(self, epoch: int) -> bool:
        """Multiplicative decrease, once per epoch; True when this signal halved the window."""
        if epoch != self.decreases:
            return False
        self.size = max(1.0, self.size / 2)
        self.decreases += 1
        return True

    def pause_until(self, until: float) -> bool:
        """Start no call before ``until``; True when that extends the pause already set."""
        if until <= self.paused_until:
            return False
        self.paused_until = until
        self.pauses += 1
        return True

    def set_maximum(self, maximum: int) -> None:
        """A new maximum: the window follows it up while nothing has decreased it yet, and is
        capped by it always."""
        grew = maximum > self.maximum
        self.maximum = maximum
        if grew and self.decreases == 0:
            self.size = float(maximum)
        self.size = min(self.size, float(maximum))
