"""The one retry delay: doubling to a cap, jittered below it when asked, reset on success."""

from __future__ import annotations

import pytest

from dra_driver.backoff import Backoff


def test_delays_double_up_to_the_cap_and_start_over_after_a_reset() -> None:
    delays = Backoff(initial=0.5, maximum=3.0)

    first = [delays.next() for _ in range(5)]
    delays.reset()

    assert first == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert delays.failures == 0
    assert delays.next() == 0.5


@pytest.mark.parametrize("attempt", range(6))
def test_jittered_delays_stay_below_the_plain_ones(attempt: int) -> None:
    plain, jittered = (
        Backoff(initial=0.2, maximum=1.0),
        Backoff(initial=0.2, maximum=1.0, jitter=True),
    )
    for _ in range(attempt):
        plain.next()
        jittered.next()

    assert 0 <= jittered.next() <= plain.next()
