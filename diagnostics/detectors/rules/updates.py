"""Update ratios ``||update|| / ||weight||`` outside their usual range."""

from __future__ import annotations

import pandas as pd

from ..base import (Outcome, Rule, RunData, hold, num, register, skip_missing_halves,
                    where)
from ..series import Persistence, median_from


@register
class UpdateRatio(Rule):
    """Weight updates persistently too small or too large for their weights.

    Only parameters whose name ends in ``weight`` are read: biases often
    start at or near zero, where the ratio is meaningless. Ratios at or below
    ``zero_tolerance`` belong to the ``frozen_weights`` rule.
    """

    name = "update_ratio"
    title = "Update ratios out of range"
    severity = "warning"
    reads = ("block{k}/update_ratio/{half}/{param}",)

    def check(self, data: RunData, out: Outcome) -> None:
        groups = {k: s for k, s in data.groups("update_ratio/", prefix=True).items()
                  if k[3].endswith("weight")}
        if not groups:
            out.skip("all", data.not_measured("update_ratio") or
                     "no update_ratio tags of weights were recorded")
            return
        th = data.thresholds
        skip_missing_halves(data, out, {(b, h) for b, h, _, _ in groups},
                            "update_ratio")
        found: dict[tuple[int, str], tuple[str, pd.Series, Persistence, bool]] = {}
        for (block, half, _, param), ratios in groups.items():
            moving = ratios > th.zero_tolerance
            for large in (True, False):
                beyond = (ratios > th.update_ratio_high if large
                          else ratios < th.update_ratio_low)
                p = hold(data, out, f"block{block}/update_ratio/{half}/{param}",
                         moving & beyond)
                if p is not None and ((block, half) not in found
                                      or p.step < found[(block, half)][2].step):
                    found[(block, half)] = (param, ratios, p, large)
        for (block, half), (param, ratios, p, large) in found.items():
            median = median_from(ratios, p.step)
            limit = th.update_ratio_high if large else th.update_ratio_low
            evidence = {"update_ratio_median_after": median, "too_large": int(large),
                        "threshold": limit, **p.evidence()}
            meaning = (
                "each step replaces a sizeable part of the weight, so the codes and "
                "reconstructions the rules compare change faster than the rules can "
                "track them; a lower learning rate or a smaller error scale would "
                "be the first thing to vary" if large else
                "the weights barely move, so training is far slower than the "
                "recorded steps suggest; the rule's error or the learning rate is "
                "very small for this weight scale")
            out.found(block=block, half=half, circulation=None, step=p.step,
                      evidence=evidence, message=(
                f"From step {p.step} the update ratio of {param} in "
                f"{where(block, half)} was {'above' if large else 'below'} "
                f"{num(limit)} (median {num(median)}, held at {p.held} of "
                f"{p.total} recorded steps): {meaning}."))
