"""Exponential backoff with jitter for reconnects and retries.

Why jitter: several ingest processes that lose the same broker must not retry in
lock-step. The jitter comes from a seeded `numpy.random.Generator` so tests are
reproducible.
"""

from __future__ import annotations

import numpy as np


class Backoff:
    """Delays initial, 2×initial, 4×initial … capped at `maximum`, each scaled by [0.5, 1.0)."""

    def __init__(self, initial_s: float, maximum_s: float, rng: np.random.Generator) -> None:
        if initial_s <= 0 or maximum_s <= 0:
            raise ValueError("backoff delays must be positive")
        self._initial = initial_s
        self._maximum = max(maximum_s, initial_s)
        self._rng = rng
        self._attempt = 0

    @property
    def attempt(self) -> int:
        """Failures since the last `reset()`."""
        return self._attempt

    def next_delay(self) -> float:
        """The delay before the next retry; grows until `reset()`."""
        base = min(self._maximum, self._initial * 2.0 ** min(self._attempt, 60))
        self._attempt += 1
        return base * (0.5 + 0.5 * float(self._rng.random()))

    def reset(self) -> None:
        """Call after a success so the next failure starts from the initial delay again."""
        self._attempt = 0
