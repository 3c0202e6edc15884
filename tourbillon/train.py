"""The trainer: any variant, evaluated every epoch, checkpointed and resumable.

Output directory layout (a public format):

- ``config.json``: the resolved config of the run.
- ``metrics.jsonl``: one JSON object per evaluated epoch with ``epoch``,
  ``step``, ``test_recon_mse`` (block 0's first reconstruction against the
  data), ``test_accuracy``, ``probe_accuracy`` (a linear probe on the code the
  head reads), per-block ``block{k}_recon_mse`` (first reconstruction against
  the block's input), ``block{k}_probe_first`` (probe on the first-pass code)
  and ``block{k}_probe_code`` (probe on the code passed up), ``train_loss``
  (mean local objective), ``train_drift_{enc,dec}_{k}``, ``diverged`` and
  ``seconds``. Figures that do not apply are ``null``.
- ``checkpoint.pt``: model, optimizer and progress after the last epoch,
  written atomically.

Same seed, same numbers: data order and random block choices come from
generators seeded by ``(seed, epoch)``, so a resumed run matches an
uninterrupted one bit for bit on CPU.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import Config
from .data import Dataset, load_dataset
from .errors import CheckpointError, ConfigError, DataError
from .model import Tourbillon
from .optim import make_optimizer
from .probe import PROBE_EPOCHS, accuracy, fit_linear, probe_accuracy
from .rules import (decoder_objective, drift, encoder_objective, feedback_objective,
                    rule_gradients)

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
CONFIG = "config.json"


class Callback:
    """Hooks into the training loop; override what you need.

    ``trainer`` gives access to ``model``, ``optimizer``, ``step``, ``epoch``,
    ``config`` and ``loss`` (the step's objective, detached); ``out`` is the
    model's output dict for the minibatch. In ``after_backward`` the
    parameters' ``.grad`` hold the step's gradients under either update: with
    ``update='explicit'`` and callbacks present, the trainer writes them from
    the rules' products for callbacks to read (and runs the forward with
    autograd on, so forward hooks see a training forward); the optimizer
    still steps from the products, so callbacks do not change the numbers,
    and a callback that edits ``.grad`` has no effect on the update.
    """

    def on_train_start(self, trainer: "Trainer") -> None: ...

    def after_backward(self, trainer: "Trainer", out: dict[str, Tensor],
                       batch: tuple[Tensor, Tensor]) -> None: ...

    def after_step(self, trainer: "Trainer") -> None: ...

    def on_epoch_end(self, trainer: "Trainer", metrics: dict[str, Any]) -> None: ...

    def on_train_end(self, trainer: "Trainer") -> None: ...

    def on_exception(self, trainer: "Trainer", error: BaseException) -> None:
        """Training raised ``error`` (it propagates after every callback ran)."""


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class Trainer:
    """Trains one variant on one data set.

    Args:
        config: the variant and recipe.
        data: the data set; loaded from ``config.dataset`` when omitted.
        out_dir: where config, metrics and checkpoint go; nothing is saved
            when ``None``.
        eval_every: evaluate every this many epochs (the last always is).
        probe_epochs: epochs of each linear probe; 0 skips the probes.
        callbacks: hooks called from the loop (the recorder is one).
        device: ``cpu``, ``cuda`` or ``auto``.
        progress: show a progress bar per epoch.
    """

    def __init__(self, config: Config, data: Dataset | None = None,
                 out_dir: str | Path | None = None, *, eval_every: int = 1,
                 probe_epochs: int = PROBE_EPOCHS, callbacks: list[Callback] = (),
                 device: str = "cpu", progress: bool = False) -> None:
        if eval_every < 1:
            raise ConfigError(f"eval_every must be >= 1, got {eval_every}")
        self.config = config
        self.device = _resolve_device(device)
        self.data = data if data is not None else load_dataset(
            config.dataset, flat=config.arch == "linear")
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.eval_every = eval_every
        self.probe_epochs = probe_epochs
        self.callbacks = list(callbacks)
        self.progress = progress

        torch.manual_seed(config.seed)
        self.model = self.build_model().to(self.device)
        self.num_blocks = self.count_blocks()
        self._check_data()
        self.optimizer = make_optimizer(self.model.parameters(), config)
        self.explicit = self._explicit_update()
        self.epoch = 0
        self.step = 0
        self.head_trained = config.head == "joint" or not self.has_head
        self.diverged = False
        self.loss: Tensor | None = None
        self.history: list[dict[str, Any]] = []

    # -- set-up --------------------------------------------------------------

    def build_model(self) -> nn.Module:
        """The model this trainer trains (a :class:`Tourbillon` of the config)."""
        return Tourbillon(self.config)

    def count_blocks(self) -> int:
        """Number of circular autoencoders in ``self.model``."""
        return len(self.model.blocks)

    def _explicit_update(self) -> bool:
        """Whether steps use the rules' explicit products (``config.update``)."""
        if not self.config.explicit_update:
            return False
        own_objective = type(self).objective is Trainer.objective
        if type(self.model) is not Tourbillon or not own_objective:
            if self.config.update == "explicit":
                raise ConfigError(
                    "update='explicit' covers the trainer's own Tourbillon model; "
                    "use update='autograd' for this one")
            return False
        return True

    @property
    def has_head(self) -> bool:
        """Whether the model classifies (so test accuracy can be measured)."""
        return getattr(self.model, "head", None) is not None

    def _check_data(self) -> None:
        d = self.data
        for split, x in (("train", d.x_train), ("test", d.x_test)):
            check = getattr(self.model, "check_input", None)
            if check is not None:
                check(x[:1])
            if not torch.isfinite(x).all():
                bad = (~torch.isfinite(x)).flatten(1).any(dim=1).nonzero()[:5].flatten()
                raise DataError(
                    f"{split} inputs contain NaN or Inf (first rows: {bad.tolist()})")
        if self.config.classes and int(d.y_train.max()) >= self.config.classes:
            raise DataError(f"labels reach {int(d.y_train.max())} but the head has "
                            f"{self.config.classes} classes")

    @property
    def total_epochs(self) -> int:
        """Block-training epochs: ``epochs`` per block for ``sequential``."""
        c = self.config
        blocks = max(self.num_blocks, 1)
        return c.epochs * (blocks if c.schedule == "sequential" else 1)

    def stage(self, epoch: int) -> int | None:
        """The block trained in ``epoch`` (1-based) under ``sequential``, else None."""
        if self.config.schedule != "sequential" or not self.num_blocks:
            return None
        return min((epoch - 1) // max(self.config.epochs, 1), self.num_blocks - 1)

    # -- the loop ------------------------------------------------------------

    def fit(self, resume: bool = False) -> list[dict[str, Any]]:
        """Train to ``total_epochs``, evaluating and checkpointing; returns metrics."""
        if resume:
            self.load_checkpoint()
        elif self.out_dir is not None:
            self._start_output()
        for cb in self.callbacks:
            cb.on_train_start(self)
        try:
            self._fit_epochs()
        except BaseException as error:
            for cb in self.callbacks:
                cb.on_exception(self, error)
            raise
        for cb in self.callbacks:
            cb.on_train_end(self)
        return self.history

    def _fit_epochs(self) -> None:
        if self.total_epochs == 0 and not self.history:
            self._finish_head()
            self._end_epoch(0.0, time.perf_counter(), {})
        while self.epoch < self.total_epochs and not self.diverged:
            started = time.perf_counter()
            previous = self.stage(self.epoch) if self.epoch else None
            if self.stage(self.epoch + 1) != previous and previous is not None:
                # Each block of a sequential stack gets a fresh optimizer, as
                # the authors train each block on its own.
                self.optimizer = make_optimizer(self.model.parameters(), self.config)
            self.epoch += 1
            loss, drifts = self._train_epoch()
            if self.epoch == self.total_epochs:
                self._finish_head()
            self._end_epoch(loss, started, drifts)

    def _train_epoch(self) -> tuple[float, dict[str, float]]:
        c, d = self.config, self.data
        generator = _epoch_generator(c.seed, self.epoch)
        N = d.x_train.shape[0]
        order = torch.randperm(N, generator=generator)
        batches = range(0, N, c.batch_size)
        if self.progress:
            from tqdm.auto import tqdm
            batches = tqdm(batches, desc=f"epoch {self.epoch}/{self.total_epochs}",
                           leave=False, unit="batch")
        total = torch.zeros(())
        drift_sums: dict[str, float] = {}
        for start in batches:
            index = order[start:start + c.batch_size]
            x = d.x_train[index].to(self.device)
            y = d.y_train[index].to(self.device)
            active = self._active_blocks(generator)
            loss, out = self.train_step(x, y, active)
            total += loss.detach().cpu()
            for k in active:
                for half, value in drift(out, c, f"_{k}").items():
                    key = f"train_drift_{half}_{k}"
                    drift_sums[key] = drift_sums.get(key, 0.0) + value
        batches_done = math.ceil(N / c.batch_size)
        mean_loss = total.item() / batches_done
        if not math.isfinite(mean_loss):
            self.diverged = True
        return mean_loss, {k: v / batches_done for k, v in drift_sums.items()}

    def _active_blocks(self, generator: torch.Generator) -> list[int]:
        blocks = self.num_blocks
        if self.config.schedule == "sequential":
            stage = self.stage(self.epoch)
            return [] if stage is None else [stage]
        if self.config.schedule == "asynchronous" and blocks > 1:
            return [int(torch.randint(blocks, (1,), generator=generator))]
        return list(range(blocks))

    def train_step(self, x: Tensor, y: Tensor,
                   active: list[int]) -> tuple[Tensor, dict]:
        """One minibatch: forward, local objectives (+ head), backward, update."""
        if self.explicit:
            return self._explicit_step(x, y, active)
        out, loss = self.objective(x, y, active)
        self.loss = loss.detach()  # the step's objective, for callbacks
        self.optimizer.zero_grad(set_to_none=True)
        if loss.requires_grad:
            loss.backward()
        for cb in self.callbacks:
            cb.after_backward(self, out, (x, y))
        self.optimizer.step()
        self.step += 1
        for cb in self.callbacks:
            cb.after_step(self)
        return loss, out

    def _explicit_step(self, x: Tensor, y: Tensor,
                       active: list[int]) -> tuple[Tensor, dict]:
        """``train_step`` without autograd: the rules' products step the SGD.

        The loss is the sum of the rules' objectives, as under autograd.
        """
        recorded = bool(self.callbacks)
        with torch.set_grad_enabled(recorded):
            out = self.model(x, upto=self._forward_upto(active))
        gradients = rule_gradients(self.model, out, self.config, active)
        objectives = [g.objective for g in gradients]
        self.loss = (sum(objectives[1:], objectives[0]) if objectives
                     else x.new_zeros(()))
        if recorded:  # the callbacks read the gradients; the step does not
            self.optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                for g in gradients:
                    g.layer.weight.grad = g.weight_grad()
                    if g.layer.bias is not None:
                        g.layer.bias.grad = g.bias_grad()
            for cb in self.callbacks:
                cb.after_backward(self, out, (x, y))
        self.optimizer.step_products(gradients)
        self.step += 1
        for cb in self.callbacks:
            cb.after_step(self)
        return self.loss, out

    def _forward_upto(self, active: list[int]) -> int | None:
        """The top block the step's forward needs (None: the whole model)."""
        head_now = self.config.head == "joint" and self.has_head
        return None if head_now or not active else max(active)

    def objective(self, x: Tensor, y: Tensor, active: list[int]
                  ) -> tuple[dict[str, Tensor], Tensor]:
        """Forward the minibatch; the sum of the active rules (and head) to minimise."""
        c = self.config
        head_now = c.head == "joint" and self.has_head
        out = self.model(x, upto=self._forward_upto(active))

        # The local rules of the active blocks.
        loss = x.new_zeros(())
        for k in active:
            loss = loss + encoder_objective(out, c, f"_{k}")
            loss = loss + decoder_objective(out, c, f"_{k}")

        # The head's cross-entropy, and its error fed back to the blocks.
        if head_now:
            loss = loss + F.cross_entropy(out["output"], y)
            if c.feedback == "random":
                loss = loss + feedback_objective(self.model, out, y, active)
        return out, loss

    def _finish_head(self) -> None:
        """Train the ``after`` head on frozen top codes (Adam, lr 1e-3, batch 64)."""
        if self.head_trained:
            return
        features = self._features(self.data.x_train)[-1][1]
        labels = self.data.y_train.to(self.device)
        fit_linear(self.model.head, features.flatten(1), labels,
                   epochs=self.config.head_epochs, seed=self.config.seed)
        self.head_trained = True

    # -- evaluation ------------------------------------------------------------

    def _features(self, x: Tensor,
                  batch: int = 1000) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Per level: (first-pass code, passed code, first reconstruction), or
        ``(x, x, None)`` for level 0 when the stack has no block."""
        if not self.num_blocks:
            x = x.to(self.device)
            return [(x, x, None)]
        parts = [self.block_codes(x[i:i + batch].to(self.device))
                 for i in range(0, x.shape[0], batch)]
        return [tuple(torch.cat([p[k][j] for p in parts]) for j in range(3))
                for k in range(self.num_blocks)]

    def block_codes(self, x: Tensor) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Per block: (first-pass code, code passed up, first reconstruction)."""
        return self.model.codes(x)

    def head_logits(self, features: Tensor) -> Tensor:
        """The head's logits from the top code passed up, ``(N, ...)``."""
        return self.model.head(features.flatten(1))

    def evaluate(self, probes: bool = True) -> dict[str, Any]:
        """Test figures of the model as it is now (see the module docstring)."""
        d, c = self.data, self.config
        self.model.eval()
        train, test = self._features(d.x_train), self._features(d.x_test)
        y_train, y_test = d.y_train.to(self.device), d.y_test.to(self.device)
        metrics: dict[str, Any] = {}

        # Reconstruction of every block's input by its first pass.
        block_input = d.x_test.to(self.device)
        for k, (_, code, recon) in enumerate(test if self.num_blocks else []):
            metrics[f"block{k}_recon_mse"] = F.mse_loss(recon, block_input).item()
            block_input = code
        metrics["test_recon_mse"] = metrics.get("block0_recon_mse")

        # The head, when it has been trained.
        metrics["test_accuracy"] = None
        if self.has_head and self.head_trained:
            metrics["test_accuracy"] = accuracy(self.head_logits, test[-1][1], y_test)

        # Linear probes on every block's codes.
        metrics["probe_accuracy"] = None
        if probes and self.probe_epochs > 0 and c.classes > 0:
            for k in range(self.num_blocks):
                for j, name in ((0, "first"), (1, "code")):
                    if j == 1 and c.feed_from == 0:
                        first = metrics[f"block{k}_probe_first"]
                        metrics[f"block{k}_probe_code"] = first
                        continue
                    metrics[f"block{k}_probe_{name}"] = probe_accuracy(
                        train[k][j], y_train, test[k][j], y_test, classes=c.classes,
                        epochs=self.probe_epochs, seed=c.seed + 101 * k + j)
            top = self.num_blocks - 1
            metrics["probe_accuracy"] = (
                metrics[f"block{top}_probe_code"] if self.num_blocks else
                probe_accuracy(train[0][1], y_train, test[0][1], y_test,
                               classes=c.classes, epochs=self.probe_epochs,
                               seed=c.seed))
        self.model.train()
        return metrics

    def _end_epoch(self, loss: float, started: float, drifts: dict[str, float]) -> None:
        last = self.epoch >= self.total_epochs or self.diverged
        stage = self.stage(self.epoch) if self.epoch else None
        metrics: dict[str, Any] = {"epoch": self.epoch, "step": self.step,
                                   "stage": stage,
                                   "train_loss": loss if math.isfinite(loss) else None,
                                   "diverged": self.diverged, **drifts}
        if (self.epoch % self.eval_every == 0 or last) and not self.diverged:
            metrics.update(self.evaluate())
        metrics["seconds"] = time.perf_counter() - started
        self.history.append(metrics)
        if self.out_dir is not None:
            with open(self.out_dir / METRICS, "a") as f:
                f.write(json.dumps(metrics) + "\n")
            self.save_checkpoint()
        for cb in self.callbacks:
            cb.on_epoch_end(self, metrics)
        log.info("epoch %d step %d loss %.4g recon %s acc %s", self.epoch, self.step,
                 loss, metrics.get("test_recon_mse"), metrics.get("test_accuracy"))

    # -- persistence -------------------------------------------------------------

    def _start_output(self) -> None:
        assert self.out_dir is not None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(self.out_dir / CONFIG,
                           json.dumps(self.config.to_dict(), indent=2) + "\n")
        (self.out_dir / METRICS).write_text("")

    def save_checkpoint(self) -> None:
        """Write model, optimizer and progress atomically to ``checkpoint.pt``."""
        assert self.out_dir is not None
        state = {
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "head_trained": self.head_trained,
            "diverged": self.diverged,
        }
        tmp = self.out_dir / (CHECKPOINT + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.out_dir / CHECKPOINT)

    def load_checkpoint(self, path: str | Path | None = None) -> None:
        """Restore from ``path`` (default: the output directory's checkpoint).

        Metrics lines after the checkpoint's epoch are dropped, so a resumed
        run writes each epoch once.
        """
        path = Path(path) if path is not None else self._require_out() / CHECKPOINT
        state = read_checkpoint(path)
        if state["config"] != self.config.to_dict():
            diff = Config.from_dict(state["config"]).diff(self.config)
            raise CheckpointError(f"{path} was written by a different config: {diff}")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, ValueError) as error:
            raise CheckpointError(f"{path} does not match the model: {error}") from None
        self.epoch, self.step = state["epoch"], state["step"]
        self.head_trained, self.diverged = state["head_trained"], state["diverged"]
        self.history = [m for m in read_metrics(path.parent)
                        if m["epoch"] <= self.epoch]
        _atomic_write_text(path.parent / METRICS,
                           "".join(json.dumps(m) + "\n" for m in self.history))

    def _require_out(self) -> Path:
        if self.out_dir is None:
            raise CheckpointError("resuming needs an output directory")
        return self.out_dir


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by the trainer, or raise CheckpointError."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a corrupt file
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({error})") from None
    needed = {"config", "model", "optimizer", "epoch", "step"}
    if not isinstance(state, dict) or not needed <= set(state):
        raise CheckpointError(f"{path} lacks {sorted(needed - set(state or {}))}")
    return state


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch metrics of a run directory."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise DataError(f"{path}:{n} is not valid JSON") from None
    return rows


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' asked for but CUDA is not available")
    return torch.device(device)


def train(config: Config, out_dir: str | Path | None = None, *, resume: bool = False,
          **options: Any) -> list[dict[str, Any]]:
    """Train ``config`` and return its per-epoch metrics (see :class:`Trainer`)."""
    return Trainer(config, out_dir=out_dir, **options).fit(resume=resume)
