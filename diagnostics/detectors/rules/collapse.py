"""Reconstructions that no longer depend on the input."""

from __future__ import annotations

import pandas as pd

from ..base import Outcome, Rule, RunData, hold, num, pct, register, where
from ..inputs import Reference, input_batch_std, value_after
from ..series import median_from


def spread_ratio(data: RunData, block: int, half: str, circulation: int,
                 reference: Reference) -> tuple[pd.Series, str]:
    """Batch spread of one call over ``reference``, or over the call's own std.

    Returns the ratio by step and the words for the reference used.
    """
    batch_std = data.series("batch_std", block, half, circulation)
    if isinstance(reference, pd.Series):
        return (batch_std / reference.where(reference > 0)).dropna(), (
            "the block input's batch spread (recorded)")
    if reference is not None and reference > 0:
        return batch_std / reference, "the block input's batch spread (facts)"
    std = data.series("std", block, half, circulation).reindex(batch_std.index)
    ratio = batch_std / std
    ratio[std <= data.thresholds.zero_tolerance] = 0.0  # all elements equal
    return ratio, "the reconstruction's own spread over all elements"


@register
class Collapse(Rule):
    """Reconstructions whose batch spread is near zero.

    The ratio is the decoder's ``batch_std`` over the block input's batch
    spread (recorded for a block fed by a recorded call, else from the
    facts); without facts, over the same call's ``std`` (the share of its
    spread that varies from example to example), which is also near zero
    when every example gets the same reconstruction.
    """

    name = "collapse"
    title = "Reconstructions that do not depend on the input"
    severity = "error"
    reads = ("block{k}/dec/c{i}/batch_std", "block{k}/dec/c{i}/std",
             "facts: input_batch_std")

    def check(self, data: RunData, out: Outcome) -> None:
        th = data.thresholds
        groups = {k: s for k, s in data.groups("batch_std").items() if k[1] == "dec"}
        if not groups:
            out.skip("all", data.not_measured("activations") or
                     "no block{k}/dec/c{i}/batch_std tags were recorded")
            return
        for block in sorted({k[0] for k in groups}):
            reference = input_batch_std(data, block)
            hits = []
            for (b, _, circulation, _) in sorted(groups):
                if b != block:
                    continue
                ratio, words = spread_ratio(data, block, "dec", circulation, reference)
                p = hold(data, out, f"block{block}/dec/c{circulation}",
                         ratio <= th.collapse_ratio)
                if p is not None:
                    hits.append((circulation, ratio, p, words))
            if hits:
                self._report(data, out, block, hits, reference)

    def _report(self, data: RunData, out: Outcome, block: int, hits: list,
                reference: Reference) -> None:
        th = data.thresholds
        circulation, ratio, p, words = min(hits, key=lambda h: (h[2].step, h[0]))
        spread = median_from(data.series("batch_std", block, "dec", circulation),
                             p.step)
        evidence = {f"ratio_c{c}": median_from(r, q.step) for c, r, q, _ in hits}
        evidence.update({"batch_std": spread,
                         "input_batch_std": value_after(reference, p.step),
                         "threshold": th.collapse_ratio, **p.evidence()})
        out.found(block=block, half="dec", circulation=circulation, step=p.step,
                  evidence=evidence, message=(
            f"From step {p.step} the reconstructions of "
            f"{where(block, 'dec', circulation)} varied across the batch by "
            f"{num(spread)} (mean per-unit std), {pct(median_from(ratio, p.step))} "
            f"of {words}; threshold {pct(th.collapse_ratio)}, "
            f"{len(hits)} circulation(s) affected, held at {p.held} of {p.total} "
            "recorded steps. A reconstruction that is the same for every input "
            "carries nothing back around the loop: the next circulation starts "
            "from the same visible state for every example, so encoder targets "
            "and outputs taken from later circulations agree trivially, and the "
            "decoder can at best match the batch mean of its target."))
