"""The spread of a block's input, over training where it can be read.

Block 0's input is the data: its spread is a fixed fact. A block above is
fed a lower block's code, whose spread changes as that block learns; when
the facts name the call the input comes from (``input_source``, e.g.
``block0/enc/c0``) and that call's statistics were recorded, the recorded
series is used instead of the value observed once when the facts were built.
"""

from __future__ import annotations

import math
import re

import pandas as pd

from .base import RunData
from .series import median_from

Reference = pd.Series | float | None

_SOURCE = re.compile(r"block(\d+)/(enc|dec)/c(\d+)$")


def source_series(data: RunData, block: int, stat: str) -> pd.Series | None:
    """The recorded ``stat`` of the call that feeds ``block``, if any."""
    facts = data.block_facts(block)
    match = _SOURCE.match(facts.input_source or "") if facts is not None else None
    if match is None:
        return None
    series = data.series(stat, int(match[1]), match[2], int(match[3]))
    return None if series.empty else series


def source_range(data: RunData, block: int) -> tuple[float, float] | None:
    """Output range of the half whose call feeds ``block`` (None if unknown)."""
    facts = data.block_facts(block)
    match = _SOURCE.match(facts.input_source or "") if facts is not None else None
    source = data.block_facts(int(match[1])) if match is not None else None
    if source is None:
        return None
    return source.encoder_range if match[2] == "enc" else source.decoder_range


def input_batch_std(data: RunData, block: int) -> Reference:
    """The block input's batch spread: recorded over time, or the fact, or None."""
    series = source_series(data, block, "batch_std")
    if series is not None:
        return series
    facts = data.block_facts(block)
    if facts is None or not math.isfinite(facts.input_batch_std):
        return None
    return facts.input_batch_std


def input_mean_mse(data: RunData, block: int) -> Reference:
    """The error of predicting each input unit by its batch mean.

    Observed once (facts); for a block fed by a recorded call, rescaled at
    each step by the square of that call's batch spread over the spread
    observed in the facts (an approximation: the shape of the spread across
    units is taken to stay the same).
    """
    facts = data.block_facts(block)
    if facts is None or not math.isfinite(facts.input_mean_mse):
        return None
    series = source_series(data, block, "batch_std")
    if series is None or not facts.input_batch_std > 0:
        return facts.input_mean_mse
    return facts.input_mean_mse * (series / facts.input_batch_std) ** 2


def input_share(data: RunData, block: int, stat: str, fact: str) -> Reference:
    """A share of the input (``constant``, ``saturated``): recorded, or the fact."""
    series = source_series(data, block, stat)
    if series is not None:
        return series
    facts = data.block_facts(block)
    value = None if facts is None else getattr(facts, fact)
    return None if value is None or not math.isfinite(value) else float(value)


def value_after(reference: Reference, step: int) -> float | None:
    """A number for the evidence: the fact, or the series' median from ``step``."""
    if reference is None or isinstance(reference, float):
        return reference
    return median_from(reference, step)
