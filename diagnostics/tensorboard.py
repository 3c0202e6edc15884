"""TensorBoard output of one run: scalars, layout, histograms, images, HParams.

Everything goes into the run directory's own event file, HParams included
(``SummaryWriter.add_hparams`` would write them into a new timestamped run
beside it, which the HParams dashboard then shows as a separate session).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tensorboard.compat.proto.summary_pb2 import Summary
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from . import tags

CONFIG_TAG = "config"
HISTOGRAM_BINS = 30
EVENTS_TAG = "events"

# Placeholders fed through the tag functions, then turned into patterns.
_ANY_CIRCULATION = 987654321
_ANY_HALF = "HALFPLACEHOLDER"
_ANY_PARAM = "PARAMPLACEHOLDER"


def _pattern(tag: str) -> str:
    """A regex matching ``tag`` with its placeholders replaced by wildcards."""
    pattern = re.escape(tag)
    pattern = pattern.replace(str(_ANY_CIRCULATION), r"\d+")
    pattern = pattern.replace(_ANY_HALF, "(enc|dec)")
    return pattern.replace(_ANY_PARAM, ".+") + "$"


def custom_scalar_layout(blocks: int) -> dict[str, dict[str, list]]:
    """One category per block, its charts in the order a stall is read.

    Each chart is a ``Multiline`` of tag patterns built from
    :mod:`diagnostics.tags`, so every circulation, half and parameter lands
    in the chart without being listed.
    """
    c, h, p = _ANY_CIRCULATION, _ANY_HALF, _ANY_PARAM
    layout = {}
    for k in range(blocks):
        charts = {
            "drift (rule output vs target)": [tags.drift(k, h)],
            "drift relative to the target's variance": [tags.drift(k, h, True)],
            "true reconstruction error per circulation": [tags.true_error(k, c)],
            "change between circulations": [tags.settle(k, c)],
            "batch spread per circulation": [
                tags.activation(k, h, c, "batch_std")],
            "constant units": [tags.activation(k, h, c, "constant")],
            "saturated units": [tags.activation(k, h, c, "saturated")],
            "gradient norms": [tags.grad_norm(k, h, p)],
            "alignment (descent and weights)": [
                tags.descent_alignment(k, h), tags.weight_alignment(k)],
            "update / weight ratio": [tags.update_ratio(k, h, p)],
            "probe accuracy": [tags.batch_probe(k, p), tags.probe(k, p)],
        }
        layout[f"block{k}"] = {
            title: ["Multiline", [_pattern(t) for t in patterns]]
            for title, patterns in charts.items()
        }
    layout["training"] = {
        "loss": ["Multiline", [_pattern(tags.train_loss())]],
        "test metrics": ["Multiline", [_pattern(tags.test_metric(_ANY_PARAM))]],
    }
    return layout


def png_image(image: Tensor) -> Summary.Image:
    """A ``(C, H, W)`` image in ``[0, 1]`` (C = 1 or 3) as a PNG summary image."""
    C, H, W = image.shape
    pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    array = pixels.permute(1, 2, 0).cpu().numpy()  # (H, W, C)
    buffer = io.BytesIO()
    Image.fromarray(array[:, :, 0] if C == 1 else array).save(
        buffer, format="PNG", compress_level=1)
    return Summary.Image(height=H, width=W, colorspace=C,
                         encoded_image_string=buffer.getvalue())


def hparam_value(value: Any) -> bool | int | float | str:
    """A config value as one of the types the HParams dashboard accepts."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value)


class RunWriter:
    """A SummaryWriter on one run directory, with the recorder's conventions.

    Args:
        run_dir: the run directory (one per training run).
        flush_secs: how often pending events reach the disk.
    """

    def __init__(self, run_dir: str | Path, flush_secs: int = 30) -> None:
        self.run_dir = Path(run_dir)
        self._writer = SummaryWriter(log_dir=str(self.run_dir), flush_secs=flush_secs,
                                     max_queue=1000)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """All ``values`` in one event (one protobuf, one write)."""
        if values:
            summary = Summary(value=[Summary.Value(tag=tag, simple_value=value)
                                     for tag, value in values.items()])
            self._writer.file_writer.add_summary(summary, step)

    def histogram(self, tag: str, values: Tensor, step: int) -> None:
        """A histogram of the finite entries of ``values`` in equal-width bins."""
        x = values.detach().float().flatten()
        if not bool(torch.isfinite(x).all()):
            x = x[torch.isfinite(x)]
        if x.numel() == 0:
            return
        low, high = (float(v) for v in torch.aminmax(x))
        bins = HISTOGRAM_BINS if high > low else 1
        counts = torch.histc(x, bins=bins, min=low, max=high)  # (bins,)
        width = (high - low) / bins
        limits = [low + width * (i + 1) for i in range(bins)]
        self._writer.add_histogram_raw(
            tag, min=low, max=high, num=x.numel(), sum=float(x.sum()),
            sum_squares=float(x.square().sum()), bucket_limits=limits,
            bucket_counts=counts.tolist(), global_step=step)

    def image(self, tag: str, image: Tensor, step: int) -> None:
        """``image``: ``(C, H, W)``, C in {1, 3}, values in ``[0, 1]``, as PNG."""
        summary = Summary(value=[Summary.Value(tag=tag, image=png_image(image))])
        self._writer.file_writer.add_summary(summary, step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        self._writer.add_text(tag, text, step)

    def layout(self, blocks: int) -> None:
        """Write the custom-scalars layout for a model of ``blocks`` blocks."""
        self._writer.add_custom_scalars(custom_scalar_layout(blocks))

    def config(self, config: Mapping[str, Any]) -> None:
        """The resolved config as a JSON block in the Text dashboard."""
        body = json.dumps(dict(config), indent=2, default=str)
        self.text(CONFIG_TAG, "```\n" + body + "\n```")

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float],
                step: int) -> None:
        """HParams of this run and the names of its final metrics.

        The dashboard reads each metric's value from the run's scalar of the
        same tag, so those scalars must be written too (the recorder does).
        """
        values = {name: hparam_value(v) for name, v in hparams.items()}
        experiment, start, end = hparams_summaries(values, dict(metrics))
        for summary in (experiment, start, end):
            self._writer.file_writer.add_summary(summary, step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
