"""Capped, jittered backoff: the schedule the agent's retry loops follow."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.backoff import Backoff


def test_the_ceiling_doubles_from_one_second_to_the_five_minute_cap() -> None:
    backoff = Backoff(1.0, 300.0, rand=lambda: 0.0)
    delays = [backoff.next_delay() for _ in range(12)]
    assert delays == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]


def test_jitter_takes_off_at_most_half() -> None:
    backoff = Backoff(1.0, 300.0, rand=lambda: 1.0)
    assert [backoff.next_delay() for _ in range(3)] == [0.5, 1.0, 2.0]


def test_a_success_starts_the_schedule_again() -> None:
    backoff = Backoff(1.0, 300.0, rand=lambda: 0.0)
    for _ in range(20):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() == 1.0


def test_many_failures_stay_finite_and_capped() -> None:
    backoff = Backoff(1.0, 300.0, rand=lambda: 0.0)
    backoff.failures = 10_000
    assert backoff.next_delay() == 300.0


@given(failures=st.integers(0, 200), draw=st.floats(0.0, 1.0))
def test_every_delay_is_within_half_and_all_of_its_ceiling(failures: int, draw: float) -> None:
    backoff = Backoff(1.0, 300.0, rand=lambda: draw)
    backoff.failures = failures
    ceiling = backoff.ceiling()
    delay = backoff.next_delay()
    assert ceiling / 2 <= delay <= ceiling <= 300.0


def test_real_jitter_spreads_a_fleet() -> None:
    delays = {Backoff(1.0, 300.0).next_delay() for _ in range(50)}
    assert len(delays) > 40


@pytest.mark.parametrize("arguments", [(0.0, 1.0), (2.0, 1.0)])
def test_nonsense_bounds_are_refused(arguments: tuple[float, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(*arguments)
