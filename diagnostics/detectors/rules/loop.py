"""Whether the loop settles, and where: per-circulation displacements.

The *displacement* of circulation ``i`` is how far it moves the visible
state: ``d_0 = true_error/c0`` (input to first reconstruction) and
``d_i = settle/c{i}`` (reconstruction ``i - 1`` to reconstruction ``i``).
A loop that settles has shrinking displacements.
"""

from __future__ import annotations

import pandas as pd

from ..base import Outcome, Rule, RunData, hold, num, pct, register, where
from ..inputs import input_mean_mse, value_after
from ..series import median_from, smooth


def displacements(data: RunData, block: int) -> dict[int, pd.Series]:
    """``{i: d_i}`` by step, smoothed, for the circulations recorded."""
    th = data.thresholds
    found = {0: data.series("true_error", block, circulation=0)}
    for (b, _, circulation, _), series in data.groups("settle").items():
        if b == block:
            found[circulation] = series
    return {i: smooth(s, th.smooth_steps) for i, s in found.items() if not s.empty}


def _skip_without_settle(data: RunData, out: Outcome) -> bool:
    if data.has("settle") and data.has("true_error"):
        return False
    out.skip("all", data.not_measured("true_error") or
             "no settle or true_error tags were recorded (settle needs at least "
             "two circulations)")
    return True


@register
class UnsettledLoop(Rule):
    """The last circulation moves the visible state as much as the one before."""

    name = "unsettled_loop"
    title = "A loop that does not settle"
    severity = "warning"
    reads = ("block{k}/settle/c{i}", "block{k}/true_error/c0")

    def check(self, data: RunData, out: Outcome) -> None:
        th = data.thresholds
        if _skip_without_settle(data, out):
            return
        for block in data.blocks():
            d = displacements(data, block)
            last = max(d, default=0)
            if last == 0 or last - 1 not in d:
                out.skip(f"block{block}", "fewer than two displacements recorded")
                continue
            before = d[last - 1].reindex(d[last].index)
            ratio = d[last] / before.where(before > th.zero_tolerance)
            p = hold(data, out, f"block{block}/settle/c{last}",
                     ratio >= th.unsettled_ratio)
            if p is None:
                continue
            evidence = {"displacement_before": median_from(before, p.step),
                        "displacement_last": median_from(d[last], p.step),
                        "ratio": median_from(ratio, p.step),
                        "threshold": th.unsettled_ratio, **p.evidence()}
            out.found(block=block, half="dec", circulation=last, step=p.step,
                      evidence=evidence, message=(
                f"From step {p.step}, circulation {last} of block {block} moved "
                f"the reconstruction by {num(evidence['displacement_last'])} "
                f"(MSE), {num(evidence['ratio'])} times the displacement of "
                f"circulation {last - 1} ({num(evidence['displacement_before'])}); "
                f"threshold {num(th.unsettled_ratio)}, held at {p.held} of "
                f"{p.total} recorded steps. Walking the loop again does not bring "
                "the visible state closer to a fixed point: encoder and decoder "
                "together amplify or rotate differences instead of damping them, "
                "so targets and outputs taken from different circulations keep "
                "disagreeing however the weights change."))


@register
class FarFixedPoint(Rule):
    """The loop settles, but its reconstruction is no better than the mean input."""

    name = "far_fixed_point"
    title = "A loop that settles far from the input"
    severity = "warning"
    reads = ("block{k}/settle/c{i}", "block{k}/true_error/c{i}",
             "facts: input_mean_mse")

    def check(self, data: RunData, out: Outcome) -> None:
        th = data.thresholds
        if _skip_without_settle(data, out):
            return
        for block in data.blocks():
            baseline = input_mean_mse(data, block)
            if baseline is None:
                out.skip(f"block{block}", "the error of predicting the batch mean "
                         "is a model fact; no facts were given")
                continue
            d = displacements(data, block)
            last = max(d, default=0)
            if last == 0 or 0 not in d:
                out.skip(f"block{block}", "no settle or true_error/c0 tags for "
                         "this block")
                continue
            true_last = smooth(data.series("true_error", block, circulation=last),
                               th.smooth_steps)
            settled = d[last] <= th.settled_ratio * d[0].reindex(d[last].index)
            far = (true_last / baseline).reindex(d[last].index) >= th.far_fraction
            p = hold(data, out, f"block{block}/settle/c{last}", settled & far)
            if p is None:
                continue
            evidence = {"displacement_first": median_from(d[0], p.step),
                        "displacement_last": median_from(d[last], p.step),
                        "true_error": median_from(true_last, p.step),
                        "input_mean_mse": value_after(baseline, p.step),
                        "settled_ratio": th.settled_ratio,
                        "far_fraction": th.far_fraction, **p.evidence()}
            out.found(block=block, half="dec", circulation=last, step=p.step,
                      evidence=evidence, message=(
                f"From step {p.step} block {block}'s loop had settled (circulation "
                f"{last} moved the reconstruction by "
                f"{num(evidence['displacement_last'])}, under "
                f"{pct(th.settled_ratio)} of the first reconstruction's error "
                f"{num(evidence['displacement_first'])}) at a reconstruction whose "
                f"true error was {num(evidence['true_error'])}, not better than "
                f"{num(th.far_fraction)} times the error of predicting the batch "
                f"mean ({num(evidence['input_mean_mse'])}); held at {p.held} of "
                f"{p.total} recorded steps. {where(block, 'dec').capitalize()} "
                "and encoder agree with each other around a fixed point that does "
                "not depend enough on the input, so rules whose targets and "
                "outputs come from later circulations see small errors while the "
                "block does not reconstruct its input."))
