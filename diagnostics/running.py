"""Running summaries of recorded scalars: constant memory however long a run."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class RunningStat:
    """Count, mean, variance (Welford), extremes and last value of one tag.

    Non-finite values are counted in ``nonfinite`` and kept out of the rest.
    """

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    last: float = math.nan
    last_step: int = 0
    nonfinite: int = 0

    def update(self, value: float, step: int) -> None:
        self.last, self.last_step = value, step
        if not math.isfinite(value):
            self.nonfinite += 1
            return
        self.count += 1
        delta = value - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (value - self.mean)
        self.min, self.max = min(self.min, value), max(self.max, value)

    @property
    def std(self) -> float:
        """Standard deviation of the finite values (no Bessel correction)."""
        return math.sqrt(self.m2 / self.count) if self.count else math.nan


class RunningStats(dict[str, RunningStat]):
    """One :class:`RunningStat` per tag."""

    def add(self, values: dict[str, float], step: int) -> None:
        """Fold one step's values in."""
        for tag, value in values.items():
            if tag not in self:
                self[tag] = RunningStat()
            self[tag].update(value, step)
