"""NaN or Inf in a block's outputs, gradients or recorded values."""

from __future__ import annotations

import numpy as np

from ..base import Outcome, Rule, RunData, register, where

_HALF_ORDER = {"enc": 0, "dec": 1, None: 2}


@register
class Nonfinite(Rule):
    """The first non-finite value, from the recorder's events or its records.

    A single occurrence is enough (no persistence): a NaN spreads through
    every later update. The recorder's ``nonfinite`` events name the first
    output and the first gradient; without events, the earliest non-finite
    recorded value stands in, in call order (block, circulation, encoder
    before decoder).
    """

    name = "nonfinite"
    title = "NaN or Inf in outputs, gradients or recorded values"
    severity = "error"
    reads = ("events: nonfinite", "every recorded tag")

    def check(self, data: RunData, out: Outcome) -> None:
        events = [e for e in data.events or [] if e.get("event") == "nonfinite"]
        bad = data.records[~np.isfinite(data.records["value"].to_numpy())]
        for event in events:
            self._from_event(event, bad, out)
        if data.events is None:
            out.skip("events", "no recorder events were given; only recorded "
                     "values were searched for NaN or Inf")
        if not events and not bad.empty:
            self._from_records(bad, out)

    def _from_event(self, event: dict, bad, out: Outcome) -> None:
        block, half = event.get("block"), event.get("half")
        circulation, step = event.get("circulation"), event.get("step")
        tensor = event.get("tensor", "output")
        what = (f"the gradient of {event.get('module')}.{event.get('parameter')}"
                if tensor == "grad" else f"the output of {event.get('module')}")
        later = bad[bad["step"] >= step] if step is not None else bad
        evidence = {"step": step, "in_gradient": int(tensor == "grad"),
                    "nonfinite_records_after": len(later),
                    "nonfinite_tags_after": later["tag"].nunique()}
        out.found(block=block, half=half, circulation=circulation, step=step,
                  evidence=evidence, message=_message(
                      where(block, half, circulation), step, what,
                      evidence["nonfinite_tags_after"]))

    def _from_records(self, bad, out: Outcome) -> None:
        first = bad[bad["step"] == bad["step"].min()]
        order = sorted(
            first.itertuples(index=False),
            key=lambda r: (r.block if r.block is not None else 10**9,
                           r.circulation if r.circulation is not None else -1,
                           _HALF_ORDER.get(r.half, 2)))
        row = order[0]
        step = int(row.step)
        evidence = {"step": step, "in_gradient": int("grad_norm" in row.quantity),
                    "nonfinite_records_after": len(bad),
                    "nonfinite_tags_after": bad["tag"].nunique()}
        out.found(block=row.block, half=row.half, circulation=row.circulation,
                  step=step, evidence=evidence, message=_message(
                      where(row.block, row.half, row.circulation), step,
                      f"the recorded value of {row.tag}",
                      evidence["nonfinite_tags_after"]))


def _message(place: str, step: int | None, what: str, tags: int) -> str:
    return (
        f"A NaN or Inf first appeared at step {step} in {what} ({place}); "
        f"{tags} recorded tag(s) were non-finite from then on. In a circular "
        "autoencoder a non-finite reconstruction becomes the next circulation's "
        "visible state and, through the targets, every local rule's error, so "
        "one bad value reaches every half of the block within a step, and the "
        "optimizer writes it into the weights. The place named here is where it "
        "was first seen, not necessarily where it was caused: check that "
        "module's inputs and weights at the steps before."
    )
