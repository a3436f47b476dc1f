"""The AIMD arithmetic shared by a process's endpoint limit and the cluster's
(``agents.openai_compat.window``)."""

from __future__ import annotations

import pytest

from agents.openai_compat.window import AimdWindow


def test_a_burst_of_overloads_from_one_epoch_halves_the_window_once() -> None:
    window = AimdWindow(8)
    epoch = window.decreases
    assert [window.overloaded(epoch) for _ in range(5)] == [True, False, False, False, False]
    assert (window.limit, window.decreases) == (4, 1)
    assert window.overloaded(window.decreases)  # a call started after the decrease
    assert window.limit == 2
    for _ in range(10):
        window.overloaded(window.decreases)
    assert window.limit == 1 and window.size == 1.0  # never below one


def test_replies_grow_the_window_by_one_slot_per_window_of_replies() -> None:
    window = AimdWindow(8)
    window.overloaded(0)
    window.answered(3)
    assert window.size == pytest.approx(4 + 1 / 4 + 1 / (4 + 1 / 4) + 1 / (4.25 + 1 / 4.25))
    assert window.limit == 4
    window.answered(4)
    assert window.limit == 5
    window.answered(1000)
    assert window.size == 8.0  # capped by the maximum


def test_a_new_maximum_is_followed_up_only_before_any_decrease() -> None:
    window = AimdWindow(2)
    window.set_maximum(6)
    assert window.limit == 6
    window.overloaded(0)
    window.set_maximum(10)
    assert window.limit == 3
    window.set_maximum(2)
    assert window.limit == 2 and window.maximum == 2


def test_a_pause_only_counts_when_it_reaches_further() -> None:
    window = AimdWindow(4)
    assert window.pause_until(10.0)
    assert not window.pause_until(5.0)
    assert not window.pause_until(10.0)
    assert window.pause_until(12.5)
    assert (window.paused_until, window.pauses) == (12.5, 2)
