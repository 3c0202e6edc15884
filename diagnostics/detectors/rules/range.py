"""A decoder whose output range cannot reach the input it reconstructs."""

from __future__ import annotations

from ..base import Outcome, Rule, RunData, num, pct, register
from ..series import last_finite


def _bounds(low: float, high: float) -> str:
    return f"[{num(low)}, {num(high)}]"


@register
class RangeMismatch(Rule):
    """Part of the block input lies outside what the decoder can produce.

    Static facts: the decoder's range from its final module and the share of
    the observed block input outside it. The finding's step is the run's
    first recorded step (the mismatch holds from the start).
    """

    name = "range_mismatch"
    title = "Decoder range cannot reach the input"
    severity = "warning"
    reads = ("facts: decoder_range, input_min, input_max, input_outside_decoder",
             "block{k}/true_error/c0 (for comparison)")

    def check(self, data: RunData, out: Outcome) -> None:
        th = data.thresholds
        if data.facts is None:
            out.skip("all", "the decoder and input ranges are model facts; no facts "
                     "were given (build them with facts_from_model)")
            return
        for facts in data.facts.blocks:
            k = facts.block
            if facts.decoder_range is None:
                out.skip(f"block{k}/dec", f"the decoder ends in "
                         f"{facts.decoder_module or 'an unknown module'}, whose "
                         "output range is unknown (observed outputs "
                         f"{_bounds(facts.decoder_min, facts.decoder_max)}, input "
                         f"{_bounds(facts.input_min, facts.input_max)} on "
                         f"{facts.examples} examples)")
                continue
            if facts.input_outside_decoder is None:
                out.skip(f"block{k}/dec", "the block input was not observed")
                continue
            if facts.input_outside_decoder >= th.range_outside_fraction:
                self._report(data, out, facts)

    def _report(self, data: RunData, out: Outcome, facts) -> None:
        th = data.thresholds
        k = facts.block
        low, high = facts.decoder_range
        true_last = last_finite(data.series("true_error", k, circulation=0))
        evidence = {"decoder_low": low, "decoder_high": high,
                    "input_min": facts.input_min, "input_max": facts.input_max,
                    "decoder_observed_min": facts.decoder_min,
                    "decoder_observed_max": facts.decoder_max,
                    "outside_fraction": facts.input_outside_decoder,
                    "unreachable_mse": facts.input_clamp_mse,
                    "input_mean_mse": facts.input_mean_mse,
                    "true_error_last": true_last,
                    "threshold": th.range_outside_fraction,
                    "observed_examples": facts.examples}
        target = ("its rule's target is the block input" if facts.dec_target == "input"
                  else "its rule's target is a reconstruction, so the rule itself "
                  "can be met, but the true reconstruction error cannot")
        out.found(block=k, half="dec", circulation=None, step=data.first_step(),
                  evidence=evidence, message=(
            f"Block {k}'s decoder ends in {facts.decoder_module}, whose outputs lie "
            f"in {_bounds(low, high)}, but {pct(facts.input_outside_decoder)} of the "
            f"elements of the block input (observed range "
            f"{_bounds(facts.input_min, facts.input_max)} on {facts.examples} "
            f"examples) lie outside it; {target}. No weights can bring those "
            "elements back: the true reconstruction error cannot fall below "
            f"{num(facts.input_clamp_mse)}, the mean squared distance from the "
            f"input to the range (recorded true error at circulation 0: "
            f"{num(true_last)}; predicting the batch mean gives "
            f"{num(facts.input_mean_mse)}). The next circulation then starts "
            "from a visible state that differs systematically from the input."))
