"""Activation statistics and histograms of every encoder and decoder call."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import tags
from ..schedule import Schedule
from .base import Call, Quantity, Sink

SATURATION_MARGIN = 0.01  # of the activation's range, at either bound
CONSTANT_TOLERANCE = 1e-6  # batch std at or below which a unit is constant


def activation_stats(x: Tensor, bounds: tuple[float, float] | None = None
                     ) -> dict[str, Tensor]:
    """Summary statistics of one call's result, as 0-d tensors.

    A *unit* is one feature (one position of one channel for conv codes).
    ``mean`` and ``std`` are over all elements; ``batch_std`` is the mean over
    units of their standard deviation across the batch; ``constant`` is the
    fraction of units whose batch std is at most ``CONSTANT_TOLERANCE``;
    ``saturated`` (only with ``bounds``) is the fraction of elements within
    ``SATURATION_MARGIN`` of the range of either bound. Standard deviations
    divide by the count (no Bessel correction).

    Args:
        x: ``(B, ...)`` activations.
        bounds: ``(low, high)`` of a bounded activation, or None.
    """
    units = x.detach().flatten(1).float()  # (B, U)
    B, U = units.shape
    unit_mean = units.mean(dim=0)  # (U,)
    # Two passes (centre, then square): exact even for near-constant units.
    unit_std = (units - unit_mean).square().mean(dim=0).sqrt()  # (U,)
    mean = unit_mean.mean()
    spread = unit_std.square().mean() + (unit_mean - mean).square().mean()
    stats = {
        "mean": mean,
        "std": spread.sqrt(),
        "batch_std": unit_std.mean(),
        "constant": torch.count_nonzero(unit_std <= CONSTANT_TOLERANCE) / U,
    }
    if bounds is not None:
        low, high = bounds
        middle, reach = (high + low) / 2, (high - low) / 2
        margin = SATURATION_MARGIN * (high - low)
        near = (units - middle).abs_() >= reach - margin  # (B, U)
        stats["saturated"] = torch.count_nonzero(near) / (B * U)
    return stats


class Activations(Quantity):
    """Mean, spread, saturation and constant units per block, half, circulation."""

    name = "activations"

    def __init__(self, schedule: Schedule) -> None:
        super().__init__(schedule)
        self._unbounded_reported: set[tuple[int, str]] = set()

    def on_call(self, call: Call, sink: Sink) -> None:
        stats = activation_stats(call.output, call.bounds)
        for stat, value in stats.items():
            sink.scalar(tags.activation(call.block, call.half, call.circulation, stat),
                        value)
        key = (call.block, call.half)
        if call.bounds is None and key not in self._unbounded_reported:
            self._unbounded_reported.add(key)
            sink.report_not_measured(
                f"block{call.block}/{call.half} saturated",
                f"{call.module} does not end in a bounded activation "
                "(tanh, sigmoid, softsign, hardtanh)")


class Histograms(Quantity):
    """A histogram of every call's activations."""

    name = "histograms"

    def on_call(self, call: Call, sink: Sink) -> None:
        tag = tags.activation_histogram(call.block, call.half, call.circulation)
        sink.histogram(tag, call.output.detach())
