"""The first NaN or Inf in a block's outputs or gradients, reported at once."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..schedule import Schedule
from .base import Call, Quantity, Sink, UpdateContext


def all_finite(tensors: list[Tensor]) -> bool:
    """Whether no tensor holds a NaN or Inf: one fused norm, one host sync.

    A norm can overflow to Inf on huge finite values, so a False here is
    confirmed element-wise by :func:`first_nonfinite`.
    """
    with torch.no_grad():
        norms = torch.stack(torch._foreach_norm(tensors)).tolist()  # one a tensor
    return all(math.isfinite(n) for n in norms)


def first_nonfinite(tensors: list[Tensor]) -> int | None:
    """Index of the first tensor holding a NaN or Inf, else None."""
    if not tensors or all_finite(tensors):
        return None
    for i, t in enumerate(tensors):
        if not bool(torch.isfinite(t.detach()).all()):
            return i
    return None  # a finite norm overflowed: nothing is actually non-finite


def sentinels(calls: list[Call]) -> list[Tensor]:
    """The outputs a NaN or Inf in any call of a step must reach.

    A bounded activation (tanh, sigmoid) maps finite inputs and weights to
    finite outputs, so a non-finite bounded output means non-finite weights,
    which the half's last call of the step shares, or a non-finite input,
    which came from the block input or an earlier call and flows on to the
    last calls of the loop. So the last call of every half of every block,
    and every output of a half without a bounded activation, are enough to
    detect one; where it first appeared is then found among all the calls.
    """
    last: dict[tuple[int, str], int] = {}
    keep = set()
    for i, call in enumerate(calls):
        last[(call.block, call.half)] = i
        if call.bounds is None:
            keep.add(i)
    return [calls[i].output for i in sorted(keep | set(last.values()))]


class Nonfinite(Quantity):
    """The first call output holding a NaN or Inf, in call order.

    Looked for at every step by default. When the training loop gives the
    step's loss, a finite loss clears the step (the protocol's rules read the
    last calls of every loop, which any NaN or Inf in the loop reaches) and
    the :func:`sentinels` are checked every ``full_every`` steps; without a
    loss they are checked at every step, with one fused norm and one sync.
    When anything is not finite, every output of the step is inspected in
    call order. A non-finite weight shows in the next forward's outputs, so
    a bad update is caught one step later at most; gradients themselves are
    checked by :class:`NonfiniteGrads`.
    """

    name = "nonfinite"
    full_every = 50

    def __init__(self, schedule: Schedule) -> None:
        super().__init__(schedule)
        self._calls: list[Call] = []
        self.found: dict[str, Any] | None = None

    def on_call(self, call: Call, sink: Sink) -> None:
        if self.found is None:
            self._calls.append(call)

    def before_update(self, ctx: UpdateContext, sink: Sink) -> None:
        calls, self._calls = self._calls, []
        if not calls or self._clear(calls, ctx):
            return
        i = first_nonfinite([c.output for c in calls])
        if i is not None:
            c = calls[i]
            self.found = {"event": "nonfinite", "block": c.block, "half": c.half,
                          "circulation": c.circulation, "module": c.module,
                          "tensor": "output"}
            sink.event(self.found)

    def _clear(self, calls: list[Call], ctx: UpdateContext) -> bool:
        """Whether the step's outputs are known to be finite."""
        full = ctx.loss is None or (ctx.step - 1) % self.full_every == 0
        if not full:
            loss = ctx.loss.item() if isinstance(ctx.loss, Tensor) else ctx.loss
            if math.isfinite(loss):
                return True
        return all_finite(sentinels(calls))


class NonfiniteGrads(Quantity):
    """The first parameter gradient holding a NaN or Inf, in block order."""

    name = "nonfinite_grads"

    def __init__(self, schedule: Schedule) -> None:
        super().__init__(schedule)
        self.found: dict[str, Any] | None = None

    def before_update(self, ctx: UpdateContext, sink: Sink) -> None:
        if self.found is not None:
            return
        where, grads = [], []
        for k, halves in ctx.params.items():
            for half, params in halves.items():
                for name, p in params.items():
                    if p.grad is not None:
                        where.append((k, half, name))
                        grads.append(p.grad)
        i = first_nonfinite(grads)
        if i is None:
            return
        k, half, name = where[i]
        module, _, parameter = f"{ctx.module_names[k][half]}.{name}".rpartition(".")
        self.found = {"event": "nonfinite", "block": k, "half": half,
                      "circulation": None, "module": module, "tensor": "grad",
                      "parameter": parameter}
        sink.event(self.found)
