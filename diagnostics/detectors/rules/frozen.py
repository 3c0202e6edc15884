"""Weights that never change: no gradient, zero gradient or zero update."""

from __future__ import annotations

import pandas as pd

from ..base import Outcome, Rule, RunData, hold, num, register, where


@register
class FrozenWeights(Rule):
    """A half whose parameters receive no gradient or are never updated.

    Two forms: no gradient norm was ever recorded for a half that exists
    (its ``.grad`` stayed None: no rule's graph reaches it) while other
    halves have gradients; or, persistently, every parameter's gradient norm
    or every update ratio of the half is at most ``zero_tolerance``.
    """

    name = "frozen_weights"
    title = "Weights that never change"
    severity = "error"
    reads = ("block{k}/grad_norm/{half}/{param}", "block{k}/update_ratio/{half}/{p}",
             "block{k}/{half}/c{i}/* (which halves exist)", "facts: parameters")

    def check(self, data: RunData, out: Outcome) -> None:
        grads = _by_half(data, "grad_norm/")
        updates = _by_half(data, "update_ratio/")
        if not grads and not updates:
            out.skip("all", data.not_measured("grad_norm") or
                     "neither grad_norm nor update_ratio tags were recorded")
            return
        for block, half in data.halves():
            facts = data.block_facts(block)
            if facts is not None and facts.parameters.get(half) == ():
                out.skip(f"block{block}/{half}", "the half has no parameters")
                continue
            if (block, half) not in grads and (block, half) not in updates:
                self._never(data, out, block, half, len(grads) + len(updates))
            else:
                self._zero(data, out, block, half, grads.get((block, half)),
                           updates.get((block, half)))

    def _never(self, data: RunData, out: Outcome, block: int, half: str,
               others: int) -> None:
        steps = data.records[(data.records["block"] == block)
                             & (data.records["half"] == half)]["step"]
        first = int(steps.min()) if not steps.empty else data.first_step()
        evidence = {"grad_records": 0, "steps_recorded": steps.nunique(),
                    "halves_with_gradients": others, "first_step": first}
        out.found(block=block, half=half, circulation=None, step=first,
                  evidence=evidence, message=(
            f"No gradient was ever recorded for {where(block, half)} over "
            f"{evidence['steps_recorded']} recorded steps, while {others} other "
            f"{'half' if others == 1 else 'halves'} had gradients: no loss reaches "
            "its parameters, so their "
            "weights keep their initial values. In a circular autoencoder that "
            "happens when the half's output is detached before its rule (or its "
            "rule is switched off) and no other rule's graph passes through it; "
            "the other half then learns against a fixed random map."))

    def _zero(self, data: RunData, out: Outcome, block: int, half: str,
              grads: pd.Series | None, updates: pd.Series | None) -> None:
        th = data.thresholds
        parts = [s <= th.zero_tolerance for s in (grads, updates) if s is not None]
        held = pd.concat(parts, axis=1).any(axis=1).sort_index()
        p = hold(data, out, f"block{block}/{half}", held)
        if p is None:
            return
        grad_max = float(grads.max()) if grads is not None else float("nan")
        update_max = float(updates.max()) if updates is not None else float("nan")
        evidence = {"grad_norm_max": grad_max, "update_ratio_max": update_max,
                    "threshold": th.zero_tolerance, **p.evidence()}
        out.found(block=block, half=half, circulation=None, step=p.step,
                  evidence=evidence, message=(
            f"From step {p.step} every gradient norm or every update ratio of "
            f"{where(block, half)} was at most {num(th.zero_tolerance)} (held at "
            f"{p.held} of {p.total} recorded steps; largest gradient norm "
            f"{num(grad_max)}, largest update ratio {num(update_max)}): its "
            "weights do not change. A local rule whose error is exactly zero "
            "compares two identical tensors (for instance a target and an output "
            "taken from the same circulation), or its gradient is cut before it "
            "reaches the parameters."))


def _by_half(data: RunData, prefix: str) -> dict[tuple[int, str], pd.Series]:
    """Per (block, half): the largest value over its parameters, by step."""
    columns: dict[tuple[int, str], list[pd.Series]] = {}
    for (block, half, _, _), series in data.groups(prefix, prefix=True).items():
        columns.setdefault((block, half), []).append(series)
    return {key: pd.concat(parts, axis=1).max(axis=1).sort_index()
            for key, parts in columns.items()}
