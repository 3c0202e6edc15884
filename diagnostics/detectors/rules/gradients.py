"""Exploding and vanishing gradient norms, per block half."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from ..base import (Outcome, Rule, RunData, hold, num, register, skip_missing_halves,
                    where)
from ..series import Persistence, first_finite, median_from

Condition = Callable[[pd.Series, float], pd.Series]


def per_half(data: RunData, out: Outcome, condition: Condition
             ) -> dict[tuple[int, str], tuple[str, pd.Series, Persistence, float]]:
    """The earliest persistent parameter of each (block, half).

    Returns:
        ``{(block, half): (parameter, grad norms, persistence, first value)}``.
    """
    th = data.thresholds
    found: dict[tuple[int, str], tuple[str, pd.Series, Persistence, float]] = {}
    groups = data.groups("grad_norm/", prefix=True)
    skip_missing_halves(data, out, {(b, h) for b, h, _, _ in groups}, "grad_norm")
    for (block, half, _, param), norms in groups.items():
        first = first_finite(norms[norms > th.zero_tolerance])
        p = hold(data, out, f"block{block}/grad_norm/{half}/{param}",
                 condition(norms, first))
        if p is None:
            continue
        if (block, half) not in found or p.step < found[(block, half)][2].step:
            found[(block, half)] = (param, norms, p, first)
    return found


def skip_without_grads(data: RunData, out: Outcome) -> bool:
    """Report not-checked when no gradient norm was recorded; True if so."""
    if data.has_prefix("grad_norm/"):
        return False
    out.skip("all", data.not_measured("grad_norm") or
             "no grad_norm tags were recorded")
    return True


@register
class ExplodingGradient(Rule):
    """A gradient norm above a limit, or grown far beyond its first value."""

    name = "exploding_gradient"
    title = "Gradient norms that explode"
    severity = "error"
    reads = ("block{k}/grad_norm/{half}/{param}",)

    def check(self, data: RunData, out: Outcome) -> None:
        if skip_without_grads(data, out):
            return
        th = data.thresholds

        def exploding(norms: pd.Series, first: float) -> pd.Series:
            finite = np.isfinite(norms)
            grown = norms / first > th.explode_growth if first > 0 else False
            return finite & ((norms > th.explode_grad_norm) | grown)

        found = per_half(data, out, exploding)
        for (block, half), (param, norms, p, first) in found.items():
            peak = float(norms[np.isfinite(norms)].max())
            evidence = {"grad_norm_first": first, "grad_norm_max": peak,
                        "grad_norm_median_after": median_from(norms, p.step),
                        "threshold": th.explode_grad_norm,
                        "growth_threshold": th.explode_growth, **p.evidence()}
            out.found(block=block, half=half, circulation=None, step=p.step,
                      evidence=evidence, message=(
                f"From step {p.step} the gradient norm of {param} in "
                f"{where(block, half)} stayed above {num(th.explode_grad_norm)} or "
                f"above {num(th.explode_growth)} times its first recorded value "
                f"{num(first)} (held at {p.held} of {p.total} recorded steps, "
                f"peak {num(peak)}). Each half's gradient is its local rule's error "
                "times its presynaptic activity; it grows when the error or the "
                "activity grows, for instance when reconstructions feed back "
                "around the loop with a gain above one, or when a rule's target "
                "moves away from its output as fast as the output follows it."))


@register
class VanishingGradient(Rule):
    """A non-zero gradient norm below a floor, or shrunk far below its start."""

    name = "vanishing_gradient"
    title = "Gradient norms that vanish"
    severity = "warning"
    reads = ("block{k}/grad_norm/{half}/{param}",)

    def check(self, data: RunData, out: Outcome) -> None:
        if skip_without_grads(data, out):
            return
        th = data.thresholds

        def vanishing(norms: pd.Series, first: float) -> pd.Series:
            small = norms < th.vanish_grad_norm
            if first > 0:
                small = small | (norms / first <= th.vanish_decay)
            return (norms > th.zero_tolerance) & small

        found = per_half(data, out, vanishing)
        for (block, half), (param, norms, p, first) in found.items():
            evidence = {"grad_norm_first": first,
                        "grad_norm_median_after": median_from(norms, p.step),
                        "threshold": th.vanish_grad_norm,
                        "decay_threshold": th.vanish_decay, **p.evidence()}
            out.found(block=block, half=half, circulation=None, step=p.step,
                      evidence=evidence, message=(
                f"From step {p.step} the gradient norm of {param} in "
                f"{where(block, half)} was below {num(th.vanish_grad_norm)} or "
                f"below {num(th.vanish_decay)} of its first recorded value "
                f"{num(first)} (median {num(evidence['grad_norm_median_after'])}, "
                f"held at {p.held} of {p.total} recorded steps). The local rule "
                "still sends an error but it is too small to move the weights: "
                "either the rule's output already equals its target (the target "
                "may be too easy, e.g. a later circulation that the loop already "
                "reproduces) or the error is multiplied by a derivative near zero "
                "(saturated units)."))
