"""Local rule errors that fall while the true reconstruction error does not."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..base import Outcome, Rule, RunData, hold, num, pct, register, where
from ..inputs import input_mean_mse, value_after
from ..series import early, last_finite, median_from, smooth


@register
class ProxySatisfied(Rule):
    """A rule's drift falls while the first reconstruction's true error stays.

    Both series are smoothed (trailing median of ``smooth_steps``) and
    compared with their early values (median of the first
    ``window_fraction`` of the record). With facts, the true error is taken
    relative to the error of predicting the batch mean of the block input
    (whose spread changes over training for blocks above the first). The
    condition at a step: drift at most ``proxy_drift_fall`` of its early
    value, and (relative) true error at least ``proxy_true_flat`` of its early
    value or, with facts, no better than ``far_fraction`` times the mean's.
    """

    name = "proxy_satisfied"
    title = "Local errors fall, the true reconstruction error does not"
    severity = "warning"
    reads = ("block{k}/drift/{half}", "block{k}/true_error/c0",
             "facts: input_mean_mse")

    def check(self, data: RunData, out: Outcome) -> None:
        drifts = data.groups("drift")
        if not drifts or not data.has("true_error"):
            missing = "drift" if not drifts else "true_error"
            out.skip("all", data.not_measured(missing) or
                     f"no {missing} tags were recorded")
            return
        for (block, half, _, _), drift in sorted(drifts.items()):
            true = data.series("true_error", block, circulation=0)
            if true.empty:
                out.skip(f"block{block}", data.not_measured(f"block{block}",
                                                            "true_error")
                         or f"no block{block}/true_error/c0 tags were recorded")
                continue
            self._check_half(data, out, block, half, drift, true)

    def _check_half(self, data: RunData, out: Outcome, block: int, half: str,
                    drift: pd.Series, true: pd.Series) -> None:
        th = data.thresholds
        baseline = input_mean_mse(data, block)
        relative = true / baseline if baseline is not None else true
        both = pd.concat([drift, relative], axis=1, keys=["drift", "true"]).dropna()
        both = both[np.isfinite(both.to_numpy()).all(axis=1)]
        if both.empty:
            out.skip(f"block{block}/drift/{half}", "no step has both a finite drift "
                     "and a finite true_error/c0")
            return
        d = smooth(both["drift"], th.smooth_steps)
        t = smooth(both["true"], th.smooth_steps)
        d0 = early(d, th.window_fraction, th.persist_steps)
        t0 = early(t, th.window_fraction, th.persist_steps)
        if not (d0 > th.zero_tolerance and t0 > th.zero_tolerance):
            return
        stays = t >= th.proxy_true_flat * t0
        if baseline is not None:
            stays = stays | (t >= th.far_fraction)
        p = hold(data, out, f"block{block}/drift/{half}",
                 (d <= th.proxy_drift_fall * d0) & stays)
        if p is None:
            return
        true_now = median_from(true, p.step)
        evidence = {"drift_early": d0, "drift_at_step": float(d[p.step]),
                    "drift_last": last_finite(d),
                    "true_error_early": early(smooth(true, th.smooth_steps),
                                              th.window_fraction, th.persist_steps),
                    "true_error_after": true_now, "true_error_last": last_finite(true),
                    "relative_early": t0 if baseline is not None else None,
                    "relative_at_step": float(t[p.step]) if baseline is not None
                    else None,
                    "input_mean_mse": value_after(baseline, p.step),
                    "drift_fall": th.proxy_drift_fall,
                    "true_flat": th.proxy_true_flat, **p.evidence()}
        scale = ("relative to the error of predicting the batch mean"
                 if baseline is not None else "")
        out.found(block=block, half=half, circulation=0, step=p.step,
                  evidence=evidence, message=(
            f"From step {p.step} the drift of {where(block, half)}'s rule had "
            f"fallen to {pct(evidence['drift_at_step'] / d0)} of its early value "
            f"{num(d0)}, while block {block}'s true reconstruction error at "
            f"circulation 0{(' ' + scale) if scale else ''} was still "
            f"{pct(float(t[p.step]) / t0)} of its early value (median "
            f"{num(true_now)} from then on"
            + (f"; predicting the batch mean gives "
               f"{num(evidence['input_mean_mse'])}" if baseline is not None else "")
            + f"; held at {p.held} of {p.total} recorded steps). The rule's error "
            "is measured against a target produced by the same loop, so it can "
            "shrink because the target moved toward the output rather than "
            "because the reconstruction approached the input: the proxy is "
            "satisfied without the block learning to reconstruct."))
