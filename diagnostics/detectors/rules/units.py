"""Saturated units and dead (constant) units of every half and circulation."""

from __future__ import annotations

import pandas as pd

from ..base import Outcome, Rule, RunData, hold, pct, register, where
from ..inputs import Reference, input_share, source_range, value_after
from ..series import Persistence, median_from


Hit = tuple[int, pd.Series, Persistence, Reference]  # circulation, series, ...


def unit_rule(data: RunData, out: Outcome, stat: str, threshold: float,
              baseline_field: str, baseline_words: str
              ) -> dict[tuple[int, str], list[Hit]]:
    """Persistent excess of an activation stat per (block, half), all circulations.

    Encoders compare the stat with ``threshold``; decoders compare its excess
    over the block input's own share (recorded for a block fed by a recorded
    call, else ``baseline_field`` of the facts), and are not checked without
    facts.
    """
    groups = data.groups(stat)
    if not groups:
        out.skip("all", data.not_measured(stat) or f"no {stat} tags were recorded")
        return {}
    found: dict[tuple[int, str], list[Hit]] = {}
    for block, half in data.halves():
        parts = {c: s for (b, h, c, _), s in groups.items() if (b, h) == (block, half)}
        if not parts:
            out.skip(f"block{block}/{half}",
                     data.not_measured(f"block{block}/{half}", stat)
                     or f"no block{block}/{half}/c*/{stat} tags were recorded")
            continue
        baseline: Reference = 0.0
        if half == "dec":
            baseline = decoder_baseline(data, block, stat, baseline_field)
            if baseline is None:
                out.skip(f"block{block}/dec", "a decoder is compared with "
                         f"{baseline_words}, which needs model facts")
                continue
        for circulation, series in sorted(parts.items()):
            p = hold(data, out, f"block{block}/{half}/c{circulation}/{stat}",
                     (series - baseline).dropna() >= threshold)
            if p is not None:
                found.setdefault((block, half), []).append(
                    (circulation, series, p, baseline))
    return found


def decoder_baseline(data: RunData, block: int, stat: str, fact: str
                     ) -> Reference:
    """The input's own share: recorded for a block fed by a recorded call.

    A recorded ``saturated`` share counts only when the feeding call has the
    decoder's bounds; otherwise the share observed in the facts is used.
    """
    facts = data.block_facts(block)
    if stat == "saturated" and (facts is None
                                or source_range(data, block) != facts.decoder_range):
        value = None if facts is None else getattr(facts, fact)
        return None if value is None or value != value else float(value)
    return input_share(data, block, stat, fact)


def earliest(hits: list[Hit]) -> Hit:
    """The hit that starts first (then the lowest circulation)."""
    return min(hits, key=lambda h: (h[2].step, h[0]))


def circulation_evidence(hits: list[Hit], stat: str) -> dict[str, float]:
    """``{stat}_c{i}``: the median after the finding's step, per circulation."""
    return {f"{stat}_c{c}": median_from(s, p.step) for c, s, p, _ in hits}


@register
class Saturation(Rule):
    """A bounded half whose elements sit at its bounds."""

    name = "saturation"
    title = "Saturated units"
    severity = "warning"
    reads = ("block{k}/{half}/c{i}/saturated", "facts: input_at_decoder_bounds")

    def check(self, data: RunData, out: Outcome) -> None:
        th = data.thresholds
        found = unit_rule(data, out, "saturated", th.saturated_fraction,
                          "input_at_decoder_bounds",
                          "the share of its target input already at the bounds")
        for (block, half), hits in found.items():
            circulation, series, p, baseline = earliest(hits)
            evidence = {**circulation_evidence(hits, "saturated"),
                        "baseline": value_after(baseline, p.step),
                        "threshold": th.saturated_fraction,
                        **p.evidence()}
            share = median_from(series, p.step)
            limit = pct(th.saturated_fraction)
            extra = (f", while {pct(evidence['baseline'])} of the block input is "
                     f"itself at those bounds (threshold: {limit} more)"
                     if half == "dec" else f" (threshold {limit})")
            out.found(block=block, half=half, circulation=circulation, step=p.step,
                      evidence=evidence, message=(
                f"From step {p.step}, {pct(share)} of the elements of "
                f"{where(block, half, circulation)} were within 1% of the "
                f"range of the activation's bounds{extra}; {len(hits)} "
                f"circulation(s) affected, held at {p.held} of {p.total} recorded "
                "steps. A saturated unit's derivative f' is "
                "near zero, and every recirculation rule multiplies its error by "
                "f', so these units barely learn; a saturated code also hardly "
                "changes between circulations, which shrinks the encoder rule's "
                "error (h0 - h1) whatever the reconstruction."))


@register
class DeadUnits(Rule):
    """A half whose units no longer vary with the input."""

    name = "dead_units"
    title = "Dead (constant) units"
    severity = "warning"
    reads = ("block{k}/{half}/c{i}/constant", "facts: input_constant")

    def check(self, data: RunData, out: Outcome) -> None:
        th = data.thresholds
        found = unit_rule(data, out, "constant", th.dead_fraction, "input_constant",
                          "the share of its input's units that are constant")
        for (block, half), hits in found.items():
            circulation, series, p, baseline = earliest(hits)
            evidence = {**circulation_evidence(hits, "constant"),
                        "baseline": value_after(baseline, p.step),
                        "threshold": th.dead_fraction,
                        **p.evidence()}
            share = median_from(series, p.step)
            extra = (f" ({pct(evidence['baseline'])} of the input's units are "
                     "constant too)"
                     if half == "dec" else "")
            out.found(block=block, half=half, circulation=circulation, step=p.step,
                      evidence=evidence, message=(
                f"From step {p.step}, {pct(share)} of the units of "
                f"{where(block, half, circulation)} were constant over the "
                f"batch{extra}; threshold {pct(th.dead_fraction)}, "
                f"{len(hits)} circulation(s) affected, held at {p.held} of "
                f"{p.total} recorded steps. A unit that gives the same value for "
                "every input carries nothing about it: a dead code unit sends "
                "the decoder a constant, and a dead reconstruction unit feeds "
                "the next circulation the same value whatever the data."))
