"""Codes that carry no label information: probe accuracy near chance."""

from __future__ import annotations

import pandas as pd

from ..base import Outcome, Rule, RunData, hold, pct, register
from ..series import last_finite, median_from, smooth

WHICH = {"first": "first-pass code", "code": "code passed up"}


def probe_series(data: RunData, block: int, which: str
                 ) -> list[tuple[str, pd.Series]]:
    """Candidate series, best first: epoch probes, metrics, the batch probe."""
    found = [(f"block{block}/probe/{which}",
              data.series(f"probe/{which}", block))]
    rows = [(m["step"], m[f"block{block}_probe_{which}"]) for m in data.metrics
            if m.get(f"block{block}_probe_{which}") is not None
            and m.get("step") is not None]
    if rows:
        steps, values = zip(*rows)
        found.append((f"metrics block{block}_probe_{which}",
                      pd.Series(values, index=steps, dtype="float64").sort_index()))
    found.append((f"block{block}/batch_probe/{which}",
                  data.series(f"batch_probe/{which}", block)))
    return [(name, s) for name, s in found if not s.empty]


@register
class ProbeChance(Rule):
    """Linear-probe accuracy of a block's codes near chance.

    Reads the first source with at least ``persist_steps`` values among the
    epoch-end probes (``probe/{which}``), the trainer's metrics and the
    in-training batch probe (``batch_probe/{which}``), smoothed by a trailing
    median of ``smooth_steps``. When the facts say the code passed up is
    the first-pass code (circulation 0), only ``first`` is tested.
    """

    name = "probe_chance"
    title = "Codes that carry no label information"
    severity = "warning"
    reads = ("block{k}/probe/{first,code}", "metrics: block{k}_probe_{first,code}",
             "block{k}/batch_probe/{first,code}")

    def check(self, data: RunData, out: Outcome) -> None:
        th = data.thresholds
        limit = th.chance_accuracy + th.probe_margin
        for block in data.blocks():
            facts = data.block_facts(block)
            for which in WHICH:
                if which == "code" and facts is not None and facts.code == 0:
                    continue  # the code passed up is the first-pass code
                candidates = [(n, s) for n, s in probe_series(data, block, which)
                              if len(s) >= th.persist_steps]
                if not candidates:
                    out.skip(f"block{block}/probe/{which}", data.not_measured("probe")
                             or f"fewer than {th.persist_steps} probe accuracies of "
                             f"block {block}'s {WHICH[which]} were recorded")
                    continue
                source, series = candidates[0]
                smoothed = smooth(series, th.smooth_steps)
                p = hold(data, out, source, smoothed <= limit)
                if p is not None:
                    self._report(data, out, block, which, source, series, p)

    def _report(self, data, out, block, which, source, series, p) -> None:
        th = data.thresholds
        facts = data.block_facts(block)
        circulation = 0 if which == "first" else (
            facts.code if facts is not None and isinstance(facts.code, int) else None)
        accuracy = median_from(series, p.step)
        evidence = {"accuracy_median_after": accuracy,
                    "accuracy_last": last_finite(series),
                    "accuracy_max": float(series.max()),
                    "chance": th.chance_accuracy, "margin": th.probe_margin,
                    "from_batch_probe": int("batch_probe" in source),
                    **p.evidence()}
        out.found(block=block, half="enc", circulation=circulation, step=p.step,
                  evidence=evidence, message=(
            f"From step {p.step} a linear probe on block {block}'s "
            f"{WHICH[which]} scored {pct(accuracy)} (median; from {source}), "
            f"within {pct(th.probe_margin)} of chance {pct(th.chance_accuracy)} "
            f"(best {pct(evidence['accuracy_max'])}; held at {p.held} of {p.total} "
            "recorded steps). The codes keep (almost) nothing a linear readout "
            "can use to tell the classes apart. The reference is a probe on the "
            "block's input (on MNIST, raw pixels give about 91% and an untrained "
            "tanh encoder about 88%): codes far below it have lost what their "
            "input carried, which a collapsed or saturated encoder does whatever "
            f"its rule's drift says{_batch_note(source)}."))


def _batch_note(source: str) -> str:
    if "batch_probe" not in source:
        return ""
    return (" (the batch probe is fitted and scored on half a held-out batch "
            "each, so its accuracy is noisy and lower than a full probe's)")
