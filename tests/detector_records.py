"""Synthetic records in the recorder's long format, for the detector tests.

``healthy_values`` describes a two-block run that learns: block 0 has a tanh
encoder and a sigmoid decoder reconstructing data in [0, 1]; block 1 a tanh
encoder and a tanh decoder reconstructing block 0's first-pass code. Every
value is a smooth trend plus small seeded noise; tests plant a pathology by
overwriting a few tags.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from diagnostics import tags
from diagnostics.detectors import BlockFacts, ModelFacts

RECORDS = 40  # recorded steps
EVERY = 5  # training steps between records
STEPS = [1 + EVERY * i for i in range(RECORDS)]
EPOCH = 8  # records per epoch
MEAN_MSE = (0.07, 0.1)  # per block: error of predicting the batch mean


def records_frame(values: Mapping[str, Sequence[float]],
                  steps: Sequence[int] = STEPS) -> pd.DataFrame:
    """Long-format records from ``{tag: one value per step}``."""
    rows = []
    for tag, series in values.items():
        if len(series) != len(steps):
            raise ValueError(f"{tag} has {len(series)} values for {len(steps)} steps")
        parsed = tags.parse(tag)
        for i, (step, value) in enumerate(zip(steps, series)):
            rows.append({"step": step, "epoch": 1 + i // EPOCH, "tag": tag,
                         "value": float(value), **parsed})
    return pd.DataFrame(rows, columns=["step", "epoch", "tag", "value", "block",
                                       "half", "circulation", "quantity"])


def trend(start: float, end: float, rng: np.random.Generator, noise: float = 0.02,
          n: int = RECORDS) -> np.ndarray:
    """Exponential approach from ``start`` to ``end`` with relative noise."""
    t = np.arange(n) / max(n - 1, 1)
    clean = end + (start - end) * np.exp(-4 * t)
    return clean * (1 + noise * rng.standard_normal(n))


def healthy_values(seed: int = 0) -> dict[str, np.ndarray]:
    """Every tag the detectors read, for a run that learns."""
    rng = np.random.default_rng(seed)
    v: dict[str, np.ndarray] = {}
    for k in range(2):
        for c in range(2):
            for half, batch, std in (("enc", 0.3, 0.4), ("dec", 0.25, 0.3)):
                v[tags.activation(k, half, c, "mean")] = trend(0.1, 0.1, rng)
                v[tags.activation(k, half, c, "std")] = trend(std, std, rng)
                v[tags.activation(k, half, c, "batch_std")] = trend(batch, batch, rng)
                saturated = 0.35 if (k, half) == (0, "dec") else 0.05
                v[tags.activation(k, half, c, "saturated")] = trend(
                    saturated, saturated, rng)
                constant = 0.2 if (k, half) == (0, "dec") else 0.0
                v[tags.activation(k, half, c, "constant")] = np.full(RECORDS, constant)
        for half in ("enc", "dec"):
            v[tags.drift(k, half)] = trend(0.05, 0.01, rng)
            v[tags.drift(k, half, relative=True)] = trend(0.5, 0.1, rng)
            for param, scale in (("0.weight", 1.0), ("0.bias", 0.1)):
                v[tags.grad_norm(k, half, param)] = trend(0.5 * scale, 0.1 * scale, rng)
                v[tags.update_ratio(k, half, param)] = trend(0.01, 0.003, rng)
            v[tags.descent_alignment(k, half)] = trend(
                0.4 if half == "enc" else 0.9, 0.5 if half == "enc" else 0.9, rng, 0.1)
        m = MEAN_MSE[k]
        v[tags.true_error(k, 0)] = trend(1.2 * m, 0.3 * m, rng)
        v[tags.true_error(k, 1)] = 1.1 * v[tags.true_error(k, 0)]
        v[tags.settle(k, 1)] = 0.5 * v[tags.true_error(k, 0)]
        v[tags.weight_alignment(k)] = trend(0.2, 0.5, rng)
        for which in ("first", "code"):
            v[tags.batch_probe(k, which)] = trend(0.5, 0.8, rng, 0.05)
    v[tags.train_loss()] = trend(2.5, 0.3, rng)
    return v


def probe_values(accuracy: float = 0.85) -> dict[str, list[float]]:
    """Epoch-end probes (one value per epoch) as their own records' values."""
    return {tags.probe(k, which): [accuracy] * (RECORDS // EPOCH)
            for k in range(2) for which in ("first", "code")}


def healthy_facts() -> ModelFacts:
    """Facts of the synthetic model, as ``facts_from_model`` would give them."""
    common = dict(encoder_module="Tanh", encoder_range=(-1.0, 1.0), circulations=2,
                  enc_target=0, enc_output=1, dec_target="input", dec_output=0,
                  code=0, parameters={"enc": ("0.weight", "0.bias"),
                                      "dec": ("0.weight", "0.bias")},
                  examples=64, input_outside_decoder=0.0, input_clamp_mse=0.0,
                  input_batch_std=0.3)
    block0 = BlockFacts(block=0, name="blocks.0", decoder_module="Sigmoid",
                        decoder_range=(0.0, 1.0), input_min=0.0, input_max=1.0,
                        input_mean_mse=MEAN_MSE[0], input_constant=0.2,
                        input_at_decoder_bounds=0.3, decoder_min=0.3,
                        decoder_max=0.7, **common)
    block1 = BlockFacts(block=1, name="blocks.1", decoder_module="Tanh",
                        decoder_range=(-1.0, 1.0), input_min=-0.9, input_max=0.9,
                        input_mean_mse=MEAN_MSE[1], input_constant=0.0,
                        input_at_decoder_bounds=0.05, decoder_min=-0.5,
                        decoder_max=0.5, input_source="block0/enc/c0", **common)
    return ModelFacts("Synthetic", (block0, block1))


def healthy_records(values: Mapping[str, Sequence[float]] | None = None,
                    probes: bool = True) -> pd.DataFrame:
    """Records of ``values`` (the healthy ones by default) plus epoch probes."""
    frame = records_frame(values if values is not None else healthy_values())
    if not probes:
        return frame
    epoch_ends = [STEPS[i] for i in range(EPOCH - 1, RECORDS, EPOCH)]
    return pd.concat([frame, records_frame(probe_values(), epoch_ends)],
                     ignore_index=True)


def from_record(i: int, value: float | np.ndarray, base: np.ndarray) -> np.ndarray:
    """``base`` with entries from record ``i`` on replaced by ``value``."""
    out = np.array(base, dtype=float)
    out[i:] = value if np.ndim(value) == 0 else np.asarray(value)[i:]
    return out
