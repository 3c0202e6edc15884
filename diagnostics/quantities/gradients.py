"""Gradient norms, update sizes and the alignments of a block's weights.

The *local update* of a half is minus the gradient its parameters hold after
``backward()``: what the rules (and whatever else reaches the block) ask for,
before the optimizer rescales it. The *true gradient* is that of the block's
first-pass reconstruction error ``mse(D(E(x)), x)``, backpropagated through
the decoder into the encoder for diagnosis only; it never touches ``.grad``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import tags
from ..schedule import Schedule
from .base import BlockPass, Quantity, Sink, UpdateContext

NORM_FLOOR = 1e-12


def cosine(a: list[Tensor], b: list[Tensor]) -> Tensor | None:
    """Cosine between two parameter lists seen as one long vector each.

    Returns None when either vector is zero or empty (the angle is undefined).
    """
    if not a or not b:
        return None
    dot = sum(torch.dot(x.flatten(), y.flatten()) for x, y in zip(a, b))
    norm_a = torch.linalg.vector_norm(torch.stack([x.norm() for x in a]))
    norm_b = torch.linalg.vector_norm(torch.stack([y.norm() for y in b]))
    if norm_a <= NORM_FLOOR or norm_b <= NORM_FLOOR:
        return None
    return dot / (norm_a * norm_b)


def first_weight(module: nn.Module) -> Tensor | None:
    """The first parameter whose name ends in ``weight`` (A or B), if any."""
    for name, p in module.named_parameters():
        if name.endswith("weight"):
            return p
    return None


def weight_alignment(A: Tensor, B: Tensor) -> Tensor | None:
    """Cosine between encoder weight A and decoder weight B transposed.

    Linear: A is ``(H, D)`` and B ``(D, H)``. Conv: Conv2d's A and
    ConvTranspose2d's B are both ``(C_hidden, C_in, kh, kw)``, and the
    transposed convolution with B is the adjoint of the convolution with B,
    so they are compared as stored. Other shapes give None.
    """
    if A.dim() == 2 and B.dim() == 2 and A.shape == B.T.shape:
        B_t = B.T  # (H, D)
    elif A.dim() == 4 and A.shape == B.shape:
        B_t = B
    else:
        return None
    return cosine([A.detach()], [B_t.detach()])


def true_gradients(encoder: nn.Module, decoder: nn.Module, x: Tensor
                   ) -> dict[str, list[Tensor]]:
    """Gradients of ``mse(decoder(encoder(x)), x)`` for each half's parameters.

    Args:
        x: the block input, ``(B, ...)``; detached here.

    Returns:
        ``{"enc": [...], "dec": [...]}`` in ``named_parameters`` order, zeros
        for parameters the error does not reach.
    """
    x = x.detach()
    halves = {"enc": list(encoder.parameters()), "dec": list(decoder.parameters())}
    params = halves["enc"] + halves["dec"]
    with torch.enable_grad():
        loss = F.mse_loss(decoder(encoder(x)), x)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    n = len(halves["enc"])
    return {"enc": grads[:n], "dec": grads[n:]}


class GradNorm(Quantity):
    """The gradient norm of every block parameter."""

    name = "grad_norm"

    def before_update(self, ctx: UpdateContext, sink: Sink) -> None:
        keys, grads = [], []
        for k, halves in ctx.params.items():
            for half, params in halves.items():
                for name, p in params.items():
                    if p.grad is not None:
                        keys.append((k, half, name))
                        grads.append(p.grad)
        if grads:
            for key, norm in zip(keys, torch._foreach_norm(grads)):
                sink.scalar(tags.grad_norm(*key), norm)


class UpdateRatio(Quantity):
    """``||w_after - w_before|| / ||w_before||`` of every updated parameter."""

    name = "update_ratio"

    def __init__(self, schedule: Schedule) -> None:
        super().__init__(schedule)
        self._before: dict[tuple[int, str, str], Tensor] = {}

    def before_update(self, ctx: UpdateContext, sink: Sink) -> None:
        self._before = {
            (k, half, name): p.detach().clone()
            for k, halves in ctx.params.items()
            for half, params in halves.items()
            for name, p in params.items() if p.grad is not None
        }

    def after_update(self, ctx: UpdateContext, sink: Sink) -> None:
        keys, before = list(self._before), list(self._before.values())
        self._before = {}
        if not keys:
            return
        after = [ctx.params[k][half][name].detach() for k, half, name in keys]
        updates = torch._foreach_sub(after, before)
        update_norms = torch._foreach_norm(updates)
        weight_norms = torch._foreach_norm(before)
        for key, u, w in zip(keys, update_norms, weight_norms):
            sink.scalar(tags.update_ratio(*key), u / w.clamp_min(NORM_FLOOR))


class WeightAlignment(Quantity):
    """Cosine between each block's encoder weight and decoder weight transposed."""

    name = "weight_alignment"

    def __init__(self, schedule: Schedule) -> None:
        super().__init__(schedule)
        self._reported: set[int] = set()

    def before_update(self, ctx: UpdateContext, sink: Sink) -> None:
        for site in ctx.sites:
            A = first_weight(site.halves["enc"])
            B = first_weight(site.halves["dec"])
            value = None if A is None or B is None else weight_alignment(A, B)
            if value is not None:
                sink.scalar(tags.weight_alignment(site.index), value)
            elif site.index not in self._reported:
                self._reported.add(site.index)
                shapes = [None if w is None else tuple(w.shape) for w in (A, B)]
                sink.report_not_measured(
                    f"block{site.index} align/weights",
                    f"encoder and decoder weights of shapes {shapes} are not "
                    "transposes of each other's shape")


class DescentAlignment(Quantity):
    """Cosine between each half's local update and the true error's descent."""

    name = "descent_alignment"

    def __init__(self, schedule: Schedule) -> None:
        super().__init__(schedule)
        self._inputs: dict[int, Tensor] = {}

    def on_block(self, block: BlockPass, sink: Sink) -> None:
        self._inputs[block.block] = block.input

    def before_update(self, ctx: UpdateContext, sink: Sink) -> None:
        inputs, self._inputs = self._inputs, {}
        for site in ctx.sites:
            if site.index not in inputs:
                continue
            local = {half: [p.grad for p in site.halves[half].parameters()]
                     for half in ("enc", "dec")}
            if all(g is None for gs in local.values() for g in gs):
                continue  # the block was not trained at this step
            true = true_gradients(site.halves["enc"], site.halves["dec"],
                                  inputs[site.index])
            for half in ("enc", "dec"):
                pairs = [(g, t) for g, t in zip(local[half], true[half])
                         if g is not None]
                if not pairs:
                    continue  # this half's rule made no update
                value = cosine([g for g, _ in pairs], [t for _, t in pairs])
                if value is not None:
                    sink.scalar(tags.descent_alignment(site.index, half), value)

