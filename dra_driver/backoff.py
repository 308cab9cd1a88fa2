"""The project's one retry delay: exponential, capped, optionally jittered, resettable.

Watches that fail, claim-status writes that fail and backend processes that exit
all wait longer after each failure in a row and start over after a success. The
sequences come from the ``backoff`` library's generators; this wrapper adds what
they lack for a loop that is not a decorated call: resetting after a success, and
knowing how many failures came in a row.
"""

from __future__ import annotations

from collections.abc import Iterator

import backoff as library


class Backoff:
    """Delays of ``initial * 2**n`` seconds up to ``maximum``; full jitter if asked."""

    def __init__(self, *, initial: float, maximum: float, jitter: bool = False) -> None:
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self.failures = 0
        self._delays = self._sequence()

    def next(self) -> float:
        """The delay before the next attempt, one failure further along."""
        self.failures += 1
        delay = next(self._delays)
        return library.full_jitter(delay) if self.jitter else delay

    def reset(self) -> None:
        """Start over after a success."""
        self.failures = 0
        self._delays = self._sequence()

    def _sequence(self) -> Iterator[float]:
        delays = library.expo(base=2, factor=self.initial, max_value=self.maximum)
        next(delays)  # the generator yields once before its first delay
        return delays
