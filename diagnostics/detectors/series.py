"""Series out of the long records table, smoothing, windows and persistence."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

RECORD_COLUMNS = ("step", "epoch", "tag", "value", "block", "half", "circulation",
                  "quantity")


def check_records(records: pd.DataFrame) -> pd.DataFrame:
    """The records with plain column types, or ValueError naming missing columns.

    Args:
        records: long format, one row per (step, tag), with the columns of
            ``RECORD_COLUMNS`` (as from ``diagnostics.records.load_records``).
    """
    if not isinstance(records, pd.DataFrame):
        raise TypeError(f"records must be a pandas DataFrame, got "
                        f"{type(records).__name__}")
    missing = [c for c in RECORD_COLUMNS if c not in records.columns]
    if missing:
        raise ValueError(f"records lack the column(s) {missing}; they need "
                         f"{', '.join(RECORD_COLUMNS)}")
    frame = records.loc[:, list(RECORD_COLUMNS)].copy()
    frame["step"] = frame["step"].astype("int64")
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce").astype("float64")
    for column in ("block", "circulation"):
        frame[column] = [None if pd.isna(v) else int(v) for v in frame[column]]
    for column in ("tag", "half", "quantity"):
        frame[column] = [None if pd.isna(v) else str(v) for v in frame[column]]
    return frame


def as_series(rows: pd.DataFrame) -> pd.Series:
    """Values by step, sorted; several values at one step are averaged."""
    if rows.empty:
        return pd.Series(dtype="float64")
    return rows.groupby("step")["value"].mean().sort_index()


def smooth(series: pd.Series, window: int) -> pd.Series:
    """Trailing median over ``window`` recorded steps (fewer at the start)."""
    if window <= 1 or series.empty:
        return series
    return series.rolling(window, min_periods=1).median()


def window_size(n: int, fraction: float, at_least: int) -> int:
    """Steps in the early window: ``fraction`` of ``n``, at least ``at_least``."""
    return max(at_least, math.ceil(n * fraction))


def early(series: pd.Series, fraction: float, at_least: int) -> float:
    """Median of the first window of a series."""
    finite = series[np.isfinite(series.to_numpy())]
    if finite.empty:
        return math.nan
    return float(finite.iloc[:window_size(len(finite), fraction, at_least)].median())


@dataclass(frozen=True)
class Persistence:
    """Where a condition starts to hold persistently.

    Attributes:
        step: first recorded step of the persistent stretch.
        held: recorded steps from ``step`` on at which the condition holds.
        total: recorded steps from ``step`` to the end.
        recorded: recorded steps in the whole series.
        last_step: last recorded step.
    """

    step: int
    held: int
    total: int
    recorded: int
    last_step: int

    def evidence(self) -> dict[str, float]:
        return {"first_step": self.step, "steps_held": self.held,
                "steps_after": self.total, "steps_recorded": self.recorded,
                "last_step": self.last_step}


def persistent(held: pd.Series, steps: int, fraction: float) -> Persistence | None:
    """The first persistent stretch of a boolean series indexed by step.

    The condition holds at ``steps`` consecutive entries starting at ``j`` and
    at no less than ``fraction`` of the entries from ``j`` to the end.
    Missing (NaN) entries count as not holding.
    """
    flags = held.fillna(False).astype(bool).to_numpy()
    n = len(flags)
    if n < steps:
        return None
    # held_from[j] = number of True in flags[j:].
    held_from = np.concatenate([np.cumsum(flags[::-1])[::-1], [0]])
    run = 0
    runs_ending = np.zeros(n, dtype=int)  # length of the run of True ending at i
    for i, flag in enumerate(flags):
        run = run + 1 if flag else 0
        runs_ending[i] = run
    for j in range(n - steps + 1):
        if runs_ending[j + steps - 1] < steps:
            continue
        if held_from[j] >= fraction * (n - j) - 1e-9:
            index = held.index
            return Persistence(int(index[j]), int(held_from[j]), n - j, n,
                               int(index[-1]))
    return None


def median_from(series: pd.Series, step: int) -> float:
    """Median of the finite values at and after ``step``."""
    tail = series[series.index >= step]
    tail = tail[np.isfinite(tail.to_numpy())]
    return float(tail.median()) if not tail.empty else math.nan


def last_finite(series: pd.Series) -> float:
    """The last finite value of a series, or NaN."""
    finite = series[np.isfinite(series.to_numpy())]
    return float(finite.iloc[-1]) if not finite.empty else math.nan


def first_finite(series: pd.Series) -> float:
    """The first finite value of a series, or NaN."""
    finite = series[np.isfinite(series.to_numpy())]
    return float(finite.iloc[0]) if not finite.empty else math.nan
