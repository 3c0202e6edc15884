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


class Nonfinite(Quantity):
    """The first call output holding a NaN or Inf, in call order.

    Checked at every step by default, with one fused norm over the step's
    outputs and one sync; only when that is not finite is each output
    inspected. A non-finite weight shows in the next forward's outputs, so a
    bad update is caught one step later at most; gradients themselves are
    checked by :class:`NonfiniteGrads` on its own schedule.
    """

    name = "nonfinite"

    def __init__(self, schedule: Schedule) -> None:
        super().__init__(schedule)
        self._calls: list[Call] = []
        self.found: dict[str, Any] | None = None

    def on_call(self, call: Call, sink: Sink) -> None:
        if self.found is None:
            self._calls.append(call)

    def before_update(self, ctx: UpdateContext, sink: Sink) -> None:
        calls, self._calls = self._calls, []
        if not calls or all_finite([c.output for c in calls]):
            return
        i = first_nonfinite([c.output for c in calls])
        if i is not None:
            c = calls[i]
            self.found = {"event": "nonfinite", "block": c.block, "half": c.half,
                          "circulation": c.circulation, "module": c.module,
                          "tensor": "output"}
            sink.event(self.found)


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
