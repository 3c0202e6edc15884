"""A local update that is not a descent direction for the true error."""

from __future__ import annotations

from ..base import (Outcome, Rule, RunData, hold, num, register, skip_missing_halves,
                    where)
from ..series import last_finite, median_from, smooth


@register
class DescentMisaligned(Rule):
    """``align/{half}`` at or below ``align_max`` persistently (smoothed)."""

    name = "descent_misaligned"
    title = "Local updates that do not descend the true error"
    severity = "warning"
    reads = ("block{k}/align/{half}", "block{k}/align/weights (context)")

    def check(self, data: RunData, out: Outcome) -> None:
        th = data.thresholds
        groups = data.groups("align")
        if not groups:
            out.skip("all", data.not_measured("align") or
                     data.not_measured("descent") or
                     "no block{k}/align/{half} tags were recorded")
            return
        skip_missing_halves(data, out, {(b, h) for b, h, _, _ in groups}, "align")
        for (block, half, _, _), cosine in sorted(groups.items()):
            smoothed = smooth(cosine, th.smooth_steps)
            p = hold(data, out, f"block{block}/align/{half}", smoothed <= th.align_max)
            if p is None:
                continue
            weights = last_finite(data.series("align/weights", block))
            evidence = {"align_median_after": median_from(cosine, p.step),
                        "align_last": last_finite(cosine),
                        "weight_alignment_last": weights,
                        "threshold": th.align_max, **p.evidence()}
            out.found(block=block, half=half, circulation=None, step=p.step,
                      evidence=evidence, message=(
                f"From step {p.step} the cosine between {where(block, half)}'s "
                "local update and the negative gradient of the block's true "
                f"reconstruction error had a median of "
                f"{num(evidence['align_median_after'])} (threshold "
                f"{num(th.align_max)}; held at {p.held} of {p.total} recorded "
                "steps): on average the update does not lower the reconstruction "
                "error, and may raise it. Recirculation approximates gradient "
                "descent when the encoder and decoder weights are close to "
                "transposes and the visible units near-linear; the cosine of A "
                f"with B transposed was {num(weights)} at the last recorded step."))
