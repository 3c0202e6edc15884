"""The recorder as a ``tourbillon.train.Callback`` for the Trainer and the CLI."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from tourbillon.train import Callback, Trainer

from . import tags
from .recording import Recorder

PROBE_EXAMPLES = 512
# The trainer's epoch metrics and the tags they are recorded under.
EPOCH_METRICS = {"test_recon_mse": tags.test_metric("recon_mse"),
                 "test_accuracy": tags.test_metric("accuracy"),
                 "probe_accuracy": tags.test_metric("probe_accuracy")}


def epoch_scalars(metrics: dict[str, Any], blocks: int) -> dict[str, float]:
    """The trainer's epoch metrics under their tags (missing ones left out)."""
    names = dict(EPOCH_METRICS)
    for k in range(blocks):
        for which in ("first", "code"):
            names[f"block{k}_probe_{which}"] = tags.probe(k, which)
    return {tag: float(metrics[key]) for key, tag in names.items()
            if metrics.get(key) is not None}


class TrainerRecorder(Callback):
    """Records a Trainer's run into ``logdir`` (TensorBoard and records.jsonl).

    The probe batch is the first ``probe_examples`` test examples (never
    trained on). Evaluation forwards run under ``no_grad`` and are not
    recorded. Use it as a context manager around ``fit()`` to be sure the
    hooks go whatever happens; without one, a failing training step or
    evaluation still removes them (see :meth:`on_train_start`).

    Args:
        logdir: the run directory.
        mode: ``off`` (records nothing, writes nothing), ``default``, ``full``.
        probe_examples: size of the held-out probe batch.
        hparams: extra HParams of the run beside the config's fields (an
            ablation cell's axis settings, for instance).
        options: further :class:`~diagnostics.recording.Recorder` arguments
            (schedules, for instance).
    """

    def __init__(self, logdir: str | Path, mode: str = "default", *,
                 probe_examples: int = PROBE_EXAMPLES,
                 hparams: Mapping[str, Any] | None = None, **options: Any) -> None:
        self.logdir = Path(logdir)
        self.mode = mode
        self.probe_examples = probe_examples
        self.hparams = dict(hparams or {})
        self.options = options
        self.recorder: Recorder | None = None

    def __enter__(self) -> "TrainerRecorder":
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def on_train_start(self, trainer: Trainer) -> None:
        """Attach to the trainer's model."""
        if self.mode == "off":
            return
        data, n = trainer.data, self.probe_examples
        probe = (data.x_test[:n].to(trainer.device), data.y_test[:n].to(trainer.device))
        self.recorder = Recorder(
            trainer.model, self.logdir, mode=self.mode, probe_batch=probe,
            image_shape=data.image_shape,
            config={**trainer.config.to_dict(), **self.hparams},
            start_step=trainer.step, epoch=trainer.epoch, **self.options)
        self.recorder.attach()

    def after_backward(self, trainer: Trainer, out: dict[str, Tensor],
                       batch: tuple[Tensor, Tensor]) -> None:
        if self.recorder is None:
            return
        self.recorder.epoch = trainer.epoch
        self.recorder.before_update(loss=trainer.loss)

    def after_step(self, trainer: Trainer) -> None:
        if self.recorder is not None:
            self.recorder.after_update()

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if self.recorder is not None:
            self.recorder.epoch = trainer.epoch
            scalars = epoch_scalars(metrics, trainer.num_blocks)
            self.recorder.log_scalars(scalars, step=trainer.step)
            self.recorder.flush()

    def on_train_end(self, trainer: Trainer) -> None:
        """Close the recorder; its HParams take the last epoch's metrics."""
        self.close()

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        """Training raised: remove the hooks and close the files at once."""
        self.close()

    def close(self) -> None:
        """Remove the hooks, close the files."""
        if self.recorder is not None:
            self.recorder.close()


