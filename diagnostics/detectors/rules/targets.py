"""Targets that carry no information about the data."""

from __future__ import annotations

from ..base import Outcome, Rule, RunData, hold, num, pct, register, where
from ..series import median_from
from ..inputs import input_batch_std
from .collapse import spread_ratio


@register
class UninformativeTarget(Rule):
    """A local rule whose target has (almost) no spread across the batch.

    The target's circulation comes from the model facts. A code target is
    compared with its own spread over all elements, a reconstruction target
    with the block input's batch spread. A decoder whose target is the block
    input itself is informative by construction and is not tested.
    """

    name = "uninformative_target"
    title = "Targets that carry no information about the data"
    severity = "error"
    reads = ("block{k}/{half}/c{t}/batch_std", "block{k}/{half}/c{t}/std",
             "facts: enc_target, dec_target, input_batch_std")

    def check(self, data: RunData, out: Outcome) -> None:
        th = data.thresholds
        if not data.has("batch_std"):
            out.skip("all", data.not_measured("activations") or
                     "no batch_std tags were recorded")
            return
        for block in data.blocks():
            facts = data.block_facts(block)
            if facts is None:
                out.skip(f"block{block}", "which circulation each rule takes its "
                         "target from is a model fact; no facts were given")
                continue
            for half in ("enc", "dec"):
                target = facts.enc_target if half == "enc" else facts.dec_target
                if target == "input" and half == "dec":
                    continue
                if not isinstance(target, int):
                    out.skip(f"block{block}/{half}", "the target matched no "
                             "encoder or decoder call of the observed forward")
                    continue
                reference = input_batch_std(data, block) if half == "dec" else None
                ratio, words = spread_ratio(data, block, half, target, reference)
                if ratio.empty:
                    out.skip(f"block{block}/{half}", f"no block{block}/{half}/"
                             f"c{target}/batch_std tags were recorded")
                    continue
                p = hold(data, out, f"block{block}/{half}/c{target}",
                         ratio <= th.target_spread_ratio)
                if p is not None:
                    self._report(data, out, block, half, target, ratio, p, words)

    def _report(self, data, out, block, half, target, ratio, p, words) -> None:
        th = data.thresholds
        spread = median_from(data.series("batch_std", block, half, target), p.step)
        value = median_from(ratio, p.step)
        evidence = {"target_batch_std": spread, "ratio": value,
                    "threshold": th.target_spread_ratio, **p.evidence()}
        kind = "code" if half == "enc" else "reconstruction"
        out.found(block=block, half=half, circulation=target, step=p.step,
                  evidence=evidence, message=(
            f"From step {p.step} the target of {where(block, half)}'s rule, the "
            f"{kind} of circulation {target}, varied across the batch by "
            f"{num(spread)}, {pct(value)} of {words} (threshold "
            f"{pct(th.target_spread_ratio)}; held at {p.held} of {p.total} recorded "
            "steps). A rule pulled toward a target that is the same for every "
            "example can be satisfied without encoding anything about the "
            "input: its error falls while the block learns nothing. Because "
            "targets are detached activities of the same loop, this state "
            "sustains itself once reached."))
