"""Rule drift, true reconstruction error and settling of the loop."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from .. import tags
from ..schedule import Schedule
from .base import BlockPass, Quantity, Sink

HALVES = ("enc", "dec")
VARIANCE_FLOOR = 1e-12


def drift(output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Mean squared ``output - target`` and that divided by the target's variance.

    Args:
        output, target: the same shape, batch first. The variance is over all
            elements of ``target`` (no Bessel correction), floored at
            ``VARIANCE_FLOOR``.
    """
    output, target = output.detach().float(), target.detach().float()
    raw = (output - target).pow(2).mean()
    spread = target.var(correction=0).clamp_min(VARIANCE_FLOOR)
    return raw, raw / spread


def true_errors(x: Tensor, reconstructions: list[Tensor]) -> list[Tensor]:
    """MSE of each circulation's reconstruction against the block input ``x``."""
    x = x.detach().float()
    return [(r.detach().float() - x).pow(2).mean() for r in reconstructions]


def settling(reconstructions: list[Tensor]) -> list[Tensor]:
    """MSE between reconstructions ``i - 1`` and ``i``, for ``i >= 1``."""
    rs = [r.detach().float() for r in reconstructions]
    return [(b - a).pow(2).mean() for a, b in zip(rs, rs[1:])]


class Drift(Quantity):
    """Each local rule's output against its target, raw and relative."""

    name = "drift"

    def __init__(self, schedule: Schedule) -> None:
        super().__init__(schedule)
        self._reported: set[int] = set()

    def on_block(self, block: BlockPass, sink: Sink) -> None:
        out = block.output
        keys = [f"{half}_{kind}" for half in HALVES for kind in ("output", "target")]
        if not isinstance(out, Mapping) or not all(k in out for k in keys):
            if block.block not in self._reported:
                self._reported.add(block.block)
                sink.report_not_measured(
                    f"block{block.block} drift",
                    "the block did not return the protocol keys "
                    f"{', '.join(keys)}")
            return
        for half in HALVES:
            raw, relative = drift(out[f"{half}_output"], out[f"{half}_target"])
            sink.scalar(tags.drift(block.block, half), raw)
            sink.scalar(tags.drift(block.block, half, relative=True), relative)


class TrueError(Quantity):
    """Every circulation's reconstruction against the block's actual input."""

    name = "true_error"

    def __init__(self, schedule: Schedule) -> None:
        super().__init__(schedule)
        self._reported: set[int] = set()

    def on_block(self, block: BlockPass, sink: Sink) -> None:
        shapes = {tuple(r.shape) for r in block.reconstructions}
        if shapes - {tuple(block.input.shape)}:
            if block.block not in self._reported:
                self._reported.add(block.block)
                sink.report_not_measured(
                    f"block{block.block} true_error",
                    f"reconstructions of shape {sorted(shapes)} do not match the "
                    f"block input {tuple(block.input.shape)}")
            return
        for i, error in enumerate(true_errors(block.input, block.reconstructions)):
            sink.scalar(tags.true_error(block.block, i), error)
        for i, change in enumerate(settling(block.reconstructions), start=1):
            sink.scalar(tags.settle(block.block, i), change)
