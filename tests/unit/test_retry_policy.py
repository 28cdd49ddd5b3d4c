from __future__ import annotations

import random

import pytest

from service.worker.retry_policy import backoff_delay


class Extremes(random.Random):
    """A random source that always answers the lowest or the highest value."""

    def __init__(self, high: bool) -> None:
        super().__init__()
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


def test_the_delay_is_never_zero_even_when_jitter_picks_nothing() -> None:
    for base in (0.001, 0.4, 1, 60):
        assert backoff_delay(1, base, cap=3600, rng=Extremes(high=False)) >= 1


def test_the_delay_grows_exponentially_until_the_cap() -> None:
    low = [backoff_delay(n, 60, cap=600, rng=Extremes(high=False)) for n in range(1, 7)]
    high = [backoff_delay(n, 60, cap=600, rng=Extremes(high=True)) for n in range(1, 7)]

    assert low == [30, 60, 120, 240, 300, 300]
    assert high == [60, 120, 240, 480, 600, 600]


def test_jitter_spreads_retries_within_the_step() -> None:
    rng = random.Random(7)
    delays = {backoff_delay(4, 60, cap=3600, rng=rng) for _ in range(200)}

    assert min(delays) >= 240
    assert max(delays) <= 480
    assert len(delays) > 50


def test_attempts_count_from_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        backoff_delay(0, 1, 1)


def test_an_attempt_count_from_a_hostile_header_gets_the_cap_at_once() -> None:
    """The count comes from a message's headers: 2 ** (count - 1) was taken before the cap, an
    OverflowError past 1,024 attempts, 13 s of CPU and 846 MB at 2 ** 31."""
    for attempt in (1_025, 10**6):
        assert 300 <= backoff_delay(attempt, 60.0, 600.0, random.Random(attempt)) <= 600
