"""Reading what the report needs from run directories.

A run directory holds ``config.json``, ``metrics.jsonl``, ``records.jsonl``
and ``checkpoint.pt`` (see :mod:`tourbillon.train`). Every reader here
returns ``None`` or an empty result when its file is absent, so the report
can say "not measured" instead of failing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from tourbillon.config import Config
from tourbillon.model import Tourbillon
from tourbillon.train import CHECKPOINT, read_checkpoint, read_metrics

log = logging.getLogger(__name__)

RECORDS = "records.jsonl"


def metrics_frame(run_dirs: dict[str, Path], cells: dict[str, str] | None = None,
                  seeds: dict[str, int] | None = None) -> pd.DataFrame:
    """Every run's ``metrics.jsonl`` as one frame with ``cell`` and ``seed``.

    Args:
        run_dirs: run key -> run directory.
        cells: run key -> ablation cell (default: the run key).
        seeds: run key -> seed (default: the seed in the run's config, else 0).
    """
    frames = []
    for key, run_dir in run_dirs.items():
        rows = read_metrics(run_dir)
        if not rows:
            continue
        frame = pd.DataFrame(rows)
        frame["cell"] = (cells or {}).get(key, key)
        seed = (seeds or {}).get(key)
        if seed is None:
            config = read_config(run_dir)
            seed = config.seed if config is not None else 0
        frame["seed"] = seed
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_config(run_dir: Path) -> Config | None:
    """The run's resolved config, or None when ``config.json`` is absent."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        return None
    return Config.from_dict(json.loads(path.read_text()))


def load_model(run_dir: Path) -> tuple[Tourbillon, dict[str, Any]] | None:
    """The checkpointed model (in eval mode) and the checkpoint's other entries.

    Returns None when the run has no ``checkpoint.pt``.
    """
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        return None
    state = read_checkpoint(path)
    model = Tourbillon(Config.from_dict(state["config"]))
    model.load_state_dict(state["model"])
    model.eval()
    info = {k: v for k, v in state.items() if k not in ("model", "optimizer")}
    return model, info


def circulation_images(model: Tourbillon, x: Tensor,
                       image_shape: tuple[int, ...]) -> np.ndarray:
    """The inputs and block 0's reconstruction at every circulation, as images.

    Args:
        model: a Tourbillon with at least one block.
        x: a batch of model inputs, ``(N, D)`` or ``(N, C, H, W)``.
        image_shape: ``(C, H, W)`` of one example of the data set.

    Returns:
        ``(1 + circulations, N, C, H, W)``: row 0 the inputs, row ``i + 1``
        circulation i's reconstruction.
    """
    if not len(model.blocks):
        raise ValueError("the model has no block, so there is no reconstruction")
    model.check_input(x)
    N = x.shape[0]
    with torch.no_grad():
        out = model.blocks[0](x, keep_all=True)
    rows = [x, *out["reconstructions"]]
    stacked = torch.stack([r.reshape(N, *image_shape) for r in rows])
    return stacked.cpu().numpy()  # (1 + circulations, N, C, H, W)
