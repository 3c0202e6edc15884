"""A fixed batch and its reconstruction at every circulation, as one image."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import tags
from ..schedule import Schedule
from .base import Capture, Quantity, Sink

GRID_EXAMPLES = 8
GRID_PADDING = 1


def reconstruction_grid(x: Tensor, reconstructions: list[Tensor],
                        image_shape: tuple[int, int, int],
                        padding: int = GRID_PADDING) -> Tensor:
    """One row for the inputs, then one row per circulation's reconstruction.

    Values are mapped from the inputs' range (``[0, 1]`` when the inputs lie
    inside it) to ``[0, 1]`` and clipped, so every row uses the same scale.

    Args:
        x: ``(N, ...)`` inputs, ``N`` examples of ``C * H * W`` values each.
        reconstructions: one tensor shaped like ``x`` per circulation.
        image_shape: ``(C, H, W)``.

    Returns:
        ``(C, R * (H + p) + p, N * (W + p) + p)`` with ``R`` rows and padding
        ``p`` filled with 1 (white).
    """
    C, H, W = image_shape
    rows = torch.stack([t.detach().float().reshape(-1, C, H, W)
                        for t in [x, *reconstructions]])  # (R, N, C, H, W)
    R, N = rows.shape[:2]
    low, high = min(float(x.min()), 0.0), max(float(x.max()), 1.0)
    rows = ((rows - low) / max(high - low, 1e-12)).clamp(0.0, 1.0)
    p = padding
    grid = torch.ones(C, R * (H + p) + p, N * (W + p) + p)
    for r in range(R):
        for n in range(N):
            top, left = p + r * (H + p), p + n * (W + p)
            grid[:, top:top + H, left:left + W] = rows[r, n]
    return grid


class Images(Quantity):
    """Block 0's probe images and their reconstructions, per circulation."""

    name = "images"

    def __init__(self, schedule: Schedule) -> None:
        super().__init__(schedule)
        self._reported = False

    def on_capture(self, capture: Capture, sink: Sink) -> None:
        block = capture.passes.get(0)
        if capture.image_shape is None or block is None:
            if not self._reported:
                self._reported = True
                sink.report_not_measured(
                    "images", "the inputs are not images: give image_shape for "
                    "flat inputs" if block is not None else "block 0 did not run")
            return
        n = GRID_EXAMPLES
        grid = reconstruction_grid(block.input[:n],
                                   [r[:n] for r in block.reconstructions],
                                   capture.image_shape)
        sink.image(tags.reconstruction_grid(0), grid)
