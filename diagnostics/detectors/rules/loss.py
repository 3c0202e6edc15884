"""A training loss that stops falling."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..base import Outcome, Rule, RunData, num, pct, register
from ..series import window_size


def loss_series(data: RunData) -> tuple[pd.Series, str]:
    """``train/loss`` by step, else the metrics' ``train_loss`` by epoch-end step."""
    series = data.series("train/loss")
    if not series.empty:
        return series, "train/loss"
    rows = [(m["step"], m["train_loss"]) for m in data.metrics
            if m.get("train_loss") is not None and m.get("step") is not None]
    if not rows:
        return pd.Series(dtype="float64"), ""
    steps, values = zip(*rows)
    return pd.Series(values, index=steps, dtype="float64").sort_index(), "metrics"


@register
class LossPlateau(Rule):
    """The training objective stops falling for the rest of the run.

    The recorded steps are cut into chunks (``window_fraction`` of them, at
    least ``persist_steps`` steps each) and each chunk is summarised by its
    median. The loss has stopped falling at chunk ``j`` when no later chunk's
    median is lower by more than ``loss_min_decrease`` of chunk ``j``'s; it is
    reported when that plateau covers at least ``plateau_fraction`` of the
    recorded steps. A loss that converged also plateaus: the message says
    how to tell the two apart.
    """

    name = "loss_plateau"
    title = "The training loss stops falling"
    severity = "info"
    reads = ("train/loss", "metrics: train_loss")

    def check(self, data: RunData, out: Outcome) -> None:
        th = data.thresholds
        series, source = loss_series(data)
        bad = series[~np.isfinite(series.to_numpy())]
        if not bad.empty:
            out.skip("train/loss", f"the loss was non-finite from step "
                     f"{int(bad.index[0])} on (see the nonfinite rule)")
            return
        size = window_size(len(series), th.window_fraction, th.persist_steps)
        if len(series) < 3 * size:
            out.skip("train/loss", data.not_measured("loss") or
                     f"{len(series)} finite loss values; the plateau test needs at "
                     f"least {3 * size} (three chunks of {size})")
            return
        n = len(series)
        starts = list(range(0, n, size))
        medians = [float(series.iloc[s:s + size].median()) for s in starts]
        for j, start in enumerate(starts[:-1]):
            covered = (n - start) / n
            if covered < th.plateau_fraction:
                break
            level = medians[j]
            best_after = min(medians[j + 1:])
            if best_after >= level - th.loss_min_decrease * abs(level):
                self._report(out, series, source, start, level, best_after, covered,
                             medians[0])
                return

    def _report(self, out: Outcome, series: pd.Series, source: str, start: int,
                level: float, best_after: float, covered: float, first: float
                ) -> None:
        step = int(series.index[start])
        fell = (first - level) / abs(first) if first else math.nan
        evidence = {"loss_first": first, "loss_at_plateau": level,
                    "loss_best_after": best_after,
                    "loss_last": float(series.iloc[-1]), "fell_before": fell,
                    "plateau_share": covered, "first_step": step,
                    "steps_recorded": len(series),
                    "last_step": int(series.index[-1])}
        out.found(block=None, half=None, circulation=None, step=step,
                  evidence=evidence, message=(
            f"The training loss ({source}) stopped falling at step {step}: its "
            f"median was {num(level)} there and never fell noticeably below it "
            f"afterwards (best later median {num(best_after)}) over the last "
            f"{pct(covered)} of the recorded steps; it had fallen by {pct(fell)} "
            f"from {num(first)} before. For recirculation the loss is a sum of "
            "local rule errors whose targets move with the weights, so a flat "
            "loss can mean convergence or a stall where the targets follow the "
            "outputs: compare the true reconstruction error (true_error) and the "
            "probes over the same steps."))
