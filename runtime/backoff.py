"""Capped exponential backoff with jitter: how long a retrying loop waits next.

Pure: computes delays and never sleeps. "Full jitter" (a uniform draw below the
capped exponential) keeps a fleet of agents that lost the platform together from
coming back together.
"""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["Backoff"]


class Backoff:
    """Delays of `initial * factor**n`, capped at `maximum`, each drawn with jitter."""

    def __init__(
        self,
        initial_seconds: float = 1.0,
        maximum_seconds: float = 300.0,
        *,
        factor: float = 2.0,
        jitter: float = 0.5,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not 0 < initial_seconds <= maximum_seconds:
            raise ValueError("need 0 < initial_seconds <= maximum_seconds")
        if factor < 1 or not 0 <= jitter <= 1:
            raise ValueError("need factor >= 1 and 0 <= jitter <= 1")
        self.initial_seconds = initial_seconds
        self.maximum_seconds = maximum_seconds
        self.factor = factor
        #: The share of each delay that is random: 0.5 waits between half and all of it.
        self.jitter = jitter
        self._rand = rand
        self.failures = 0

    def ceiling(self) -> float:
        """Return the un-jittered delay for the next retry."""
        exponent = min(self.failures, 64)  # far past any cap; keeps the float finite
        return min(self.maximum_seconds, self.initial_seconds * self.factor**exponent)

    def next_delay(self) -> float:
        """Return how long to wait before the next retry, and count one more failure."""
        ceiling = self.ceiling()
        self.failures += 1
        return ceiling * (1 - self.jitter * self._rand())

    def reset(self) -> None:
        """Start again from `initial_seconds` (after a success)."""
        self.failures = 0
