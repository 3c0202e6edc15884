"""The recorder: hooks, circulation numbering and the step cycle.

The same encoder and decoder run once per circulation inside one forward, so
the recorder hooks them and numbers each call with its circulation (the count
restarts at every forward of the block). Each quantity in
:mod:`diagnostics.quantities` computes on its own schedule; the values go to
TensorBoard and to ``records.jsonl`` in the run directory.

Example, in your own training loop::

    with Recorder(model, "runs/my-run", probe_batch=(x_held, y_held)) as rec:
        for x, y in batches:
            out = model(x)
            loss = local_loss(out)
            optimizer.zero_grad()
            loss.backward()
            rec.step(optimizer, loss=loss)  # runs optimizer.step() itself

Forwards in eval mode or under ``torch.no_grad()`` (evaluation) are not
recorded; with several training forwards in one step the last one's values
are kept. Only circulations the model walks are measured.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn

from tourbillon.errors import ConfigError

from . import tags
from .placement import BlockSite, activation_bounds, locate_blocks
from .quantities import (
    PHASES,
    BlockPass,
    Call,
    Capture,
    Quantity,
    UpdateContext,
    build,
)
from .records import RecordsWriter
from .running import RunningStats
from .schedule import Schedule, make_schedules
from .tensorboard import RunWriter

log = logging.getLogger(__name__)


@dataclass
class _BlockState:
    """Per-block bookkeeping of the forward in progress."""

    site: BlockSite
    names: dict[str, str]
    bounds: dict[str, tuple[float, float] | None]
    live: bool = False
    calls: dict[str, int] = field(default_factory=lambda: {"enc": 0, "dec": 0})
    current: BlockPass | None = None


class _Hooks:
    """Every hook handle the recorder registers, removed together."""

    def __init__(self) -> None:
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def add(self, handle: torch.utils.hooks.RemovableHandle) -> None:
        self._handles.append(handle)

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def __len__(self) -> int:
        return len(self._handles)


class Recorder:
    """Hooks a protocol model and records its circulations, step by step.

    Use it as a context manager around training (hooks are removed on exit,
    also when training raises) and call :meth:`step` in place of
    ``optimizer.step()``. Values are written to TensorBoard and to
    ``records.jsonl`` in ``logdir``.

    Args:
        model: any module whose blocks have encoder and decoder children and
            return the protocol dict; the model itself may be a block.
        logdir: the run directory (one per training run).
        mode: ``default``, ``full`` (every quantity at every step) or ``off``
            (no hooks, nothing written).
        cheap_every, expensive_every, every: schedule overrides, see
            :func:`diagnostics.schedule.make_schedules`.
        encoder_name, decoder_name: child names of each block's halves.
        probe_batch: held-out examples for probes and images: ``(x, y)`` or
            ``x`` alone (probes are then not measured). ``model(x)`` must run.
        image_shape: ``(C, H, W)`` of flat image inputs; 4-d inputs need none.
        config: the run's resolved config, written as text and as HParams.
        start_step: steps already done (a resumed run continues its records).
        epoch: the epoch written with each record; update ``rec.epoch``.
    """

    def __init__(self, model: nn.Module, logdir: str | Path, *,
                 mode: str = "default", cheap_every: int | None = None,
                 expensive_every: int | None = None,
                 every: Mapping[str, int] | None = None,
                 encoder_name: str = "encoder", decoder_name: str = "decoder",
                 probe_batch: tuple[Tensor, Tensor] | Tensor | None = None,
                 image_shape: tuple[int, int, int] | None = None,
                 config: Mapping[str, Any] | None = None, start_step: int = 0,
                 epoch: int = 0) -> None:
        self.model = model
        self.run_dir = Path(logdir)
        self.mode = mode
        self.schedules = make_schedules(mode, cheap_every, expensive_every, every)
        self.quantities = build(self.schedules)
        self.encoder_name, self.decoder_name = encoder_name, decoder_name
        self.config = dict(config) if config is not None else None
        self.steps = start_step
        self.epoch = epoch
        self.stats = RunningStats()
        self.not_measured: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.skipped_forwards = 0
        self._probe_x, self._probe_y = _split_probe(probe_batch)
        self._image_shape = image_shape
        if image_shape is None and self._probe_x is not None:
            if self._probe_x.dim() == 4:  # (N, C, H, W)
                self._image_shape = tuple(self._probe_x.shape[1:])  # type: ignore

        self._hooks = _Hooks()
        self._blocks: list[_BlockState] = []
        self._ctx: UpdateContext | None = None
        self._tb: RunWriter | None = None
        self._records: RecordsWriter | None = None
        self._attached = self._closed = False
        self._reported: set[str] = set()
        self._phases = {q: {p for p in PHASES if q.implements(p)}
                        for q in self.quantities}
        self._due: dict[str, list] = {p: [] for p in PHASES}
        self._due_key: tuple[Quantity, ...] | None = None
        self._due_names: set[str] = set()
        self._loss_due = False
        self._step_open = False
        self._scalars: dict[str, Tensor | float] = {}
        self._histograms: list[tuple[str, Tensor]] = []
        self._images: list[tuple[str, Tensor]] = []
        self._capture: dict[int, BlockPass] | None = None
        self._logged_tags: set[str] = set()
        self._hparams_written = False

    # -- life cycle ----------------------------------------------------------

    def __enter__(self) -> "Recorder":
        self.attach()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if error is not None:
            log.info("training raised %s; removing the recorder's hooks",
                     type(error).__name__)
        self.close()

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def hook_count(self) -> int:
        """How many hooks the recorder holds on the model now."""
        return len(self._hooks)

    def attach(self) -> None:
        """Find the blocks, open the run directory and register the hooks."""
        if self._attached:
            raise ConfigError("this recorder is already attached")
        self._attached = True
        if not self.enabled:
            return
        sites, unplaced = locate_blocks(self.model, self.encoder_name,
                                        self.decoder_name)
        try:
            self._open_outputs(len(sites))
            self._register(sites)
        except BaseException:
            self.close()
            raise
        for item in unplaced:
            self.report_not_measured(item.what, item.why)
        self._check_probe_batch()

    def close(self) -> None:
        """Remove every hook, then flush and close the outputs (idempotent).

        With a ``config`` and no :meth:`write_hparams` call, the HParams are
        written here, with the last values of the scalars given to
        :meth:`log_scalars` (and ``train/loss``) as the final metrics.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self._hooks.remove()
        finally:
            try:
                if self.config is not None and not self._hparams_written:
                    self.write_hparams(self.config, self._final_metrics(),
                                       log_metrics=False)
            finally:
                if self._records is not None:
                    self._records.close()
                if self._tb is not None:
                    self._tb.close()

    def _final_metrics(self) -> dict[str, float]:
        names = self._logged_tags | {tags.train_loss()}
        return {t: self.stats[t].last for t in sorted(names) if t in self.stats}

    def _open_outputs(self, blocks: int) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.steps == 0 and any(self.run_dir.glob("events.out.tfevents.*")):
            warnings.warn(
                f"{self.run_dir} already holds TensorBoard event files; "
                "TensorBoard will show this run mixed with the earlier one. Give "
                "each training run its own directory.", stacklevel=3)
        self._records = RecordsWriter(self.run_dir, append=self.steps > 0)
        self._tb = RunWriter(self.run_dir)
        self._tb.layout(blocks)
        if self.config is not None:
            self._tb.config(self.config)

    def _register(self, sites: list[BlockSite]) -> None:
        """Every hook the recorder uses, registered here and nowhere else."""
        for site in sites:
            k = site.index
            names = {half: site.half_name(half, self.encoder_name, self.decoder_name)
                     for half in site.halves}
            bounds = {half: activation_bounds(m) for half, m in site.halves.items()}
            self._blocks.append(_BlockState(site, names, bounds))
            module = site.module
            self._hooks.add(module.register_forward_pre_hook(
                functools.partial(self._block_start, k)))
            self._hooks.add(module.register_forward_hook(
                functools.partial(self._block_end, k)))
            for half, part in site.halves.items():
                self._hooks.add(part.register_forward_hook(
                    functools.partial(self._half_call, k, half)))
        self._ctx = UpdateContext(
            sites=sites,
            params={s.index: {half: dict(part.named_parameters())
                              for half, part in s.halves.items()}
                    for s in sites},
            module_names={b.site.index: b.names for b in self._blocks})

    def _check_probe_batch(self) -> None:
        wants = [n for n in ("probes", "images") if self.schedules[n].every]
        if self._probe_x is None:
            for name in wants:
                self.report_not_measured(name, "no probe_batch was given")
        elif self._probe_y is None and "probes" in wants:
            self.report_not_measured("probes", "the probe batch has no labels")

    # -- the training step ---------------------------------------------------

    def is_due(self, quantity: str) -> bool:
        """Whether ``quantity`` is computed at the step in progress."""
        self._open_step()
        return self._loss_due if quantity == "loss" else quantity in self._due_names

    def step(self, optimizer: torch.optim.Optimizer | None = None, *,
             loss: Tensor | float | None = None) -> None:
        """End a training step: measure, run ``optimizer.step()``, write.

        Call it after ``loss.backward()``. Without ``optimizer`` (when you
        step it yourself, before or after) update ratios are not measured.
        """
        if optimizer is None and self._recording() and self.is_due("update_ratio"):
            self._due = {p: [f for f in fns if f.__self__.name != "update_ratio"]
                         for p, fns in self._due.items()}
            self._due_key = None  # this step's lists differ from the cached ones
            self.report_not_measured(
                "update_ratio", "Recorder.step() was called without the optimizer")
        self.before_update(loss=loss)
        if optimizer is not None:
            optimizer.step()
        self.after_update()

    def before_update(self, loss: Tensor | float | Callable[[], Tensor] | None = None
                      ) -> None:
        """Measure gradients (call after ``backward()``, before the update).

        ``loss`` may be a callable, evaluated only when the loss is due.
        """
        if not self._recording():
            return
        if not self._step_open:
            self._open_step()
        self._ctx.loss = loss if isinstance(loss, (Tensor, float, int)) else None
        if loss is not None and self._loss_due:
            try:
                value = loss() if callable(loss) else loss
            except Exception as error:
                self.report_not_measured(tags.train_loss(), f"it raised {error!r}")
                self.schedules["loss"] = Schedule(0)
                self._loss_due, value = False, None
            if value is not None:
                self.scalar(tags.train_loss(), _detached(value))
        self._dispatch("before_update", self._ctx)

    def after_update(self) -> None:
        """Measure the update, run the probe batch, write the step's values."""
        if not self._recording():
            return
        if not self._step_open:
            self._open_step()
        self._dispatch("after_update", self._ctx)
        if self._due["on_capture"]:
            self._run_capture()
        self._write_step()
        self.steps += 1
        self._step_open = False
        self._ctx.loss = None

    def _recording(self) -> bool:
        if not self.enabled:
            return False
        if not self._attached or self._closed:
            raise ConfigError("the recorder is not attached: use it as a context "
                              "manager or call attach() first")
        return True

    def _open_step(self) -> None:
        if self._step_open:
            return
        self._step_open = True
        step = self.steps + 1
        if self._ctx is not None:
            self._ctx.step = step
        due = tuple(q for q in self.quantities if q.schedule.should_compute(step))
        if due != self._due_key:  # most steps repeat the last step's set
            self._due_key = due
            self._due = {p: [getattr(q, p) for q in due if p in self._phases[q]]
                         for p in PHASES}
            self._due_names = {q.name for q in due}
        self._loss_due = self.schedules["loss"].should_compute(step)
        self._scalars, self._histograms, self._images = {}, [], []

    def _write_step(self) -> None:
        step = self.steps + 1
        if self._scalars:
            numbers = _to_floats(self._scalars)
            self._tb.scalars(numbers, step)
            self._records.scalars(step, self.epoch, numbers)
            self.stats.add(numbers, step)
        for tag, values in self._histograms:
            self._tb.histogram(tag, values, step)
        for tag, image in self._images:
            self._tb.image(tag, image, step)
        self._scalars, self._histograms, self._images = {}, [], []

    # -- hooks ---------------------------------------------------------------

    def _block_start(self, k: int, module: nn.Module, args: tuple) -> None:
        state = self._blocks[k]
        state.calls = {"enc": 0, "dec": 0}
        capturing = self._capture is not None
        state.live = capturing or (module.training and torch.is_grad_enabled())
        state.current = None
        if not state.live:
            self.skipped_forwards += 1
            return
        if not capturing and not self._step_open:
            self._open_step()
        if capturing or self._due["on_block"]:
            if args and isinstance(args[0], Tensor):
                state.current = BlockPass(k, args[0].detach())
            else:
                self.report_not_measured(
                    f"block{k} input", "the block was not called with its input "
                    "as the first positional argument, so the quantities that "
                    "need it (true error, drift, probes) skip that forward")

    def _half_call(self, k: int, half: str, module: nn.Module, args: tuple,
                   output: Any) -> None:
        state = self._blocks[k]
        if not state.live:
            return
        i = state.calls[half]
        state.calls[half] = i + 1
        if not isinstance(output, Tensor):
            self.report_not_measured(
                f"block{k}/{half}", f"{state.names[half]} returned "
                f"{type(output).__name__}, not a tensor")
            return
        if state.current is not None:
            block = state.current
            made = block.codes if half == "enc" else block.reconstructions
            made.append(output.detach())
        if self._capture is None and self._due["on_call"]:
            call = Call(k, half, i, state.names[half], output, state.bounds[half])
            self._dispatch("on_call", call)

    def _block_end(self, k: int, module: nn.Module, args: tuple, output: Any
                   ) -> None:
        state = self._blocks[k]
        if not state.live:
            return
        state.live = False
        block, state.current = state.current, None
        if block is None:
            return
        block.output = output
        if self._capture is not None:
            self._capture[k] = block
            return
        self._dispatch("on_block", block)

    def _run_capture(self) -> None:
        """A no-grad, eval-mode forward of the probe batch, captured per block."""
        if self._probe_x is None:
            return
        modes = [(m, m.training) for m in self.model.modules()]
        self._capture = {}
        try:
            self.model.eval()
            with torch.no_grad():
                self.model(self._probe_x)
            passes = self._capture
        except Exception as error:
            for fn in self._due["on_capture"]:
                self._drop(fn.__self__, f"the probe batch's forward raised {error!r}")
            return
        finally:
            self._capture = None
            for module, training in modes:
                module.training = training
        capture = Capture(passes, self._probe_y, self._image_shape)
        self._dispatch("on_capture", capture)

    def _dispatch(self, phase: str, arg: Any) -> None:
        """Run ``phase`` of every due quantity; a quantity that raises is dropped."""
        for fn in self._due[phase]:
            try:
                fn(arg, self)
            except Exception as error:
                self._drop(fn.__self__, f"{phase} raised {error!r}")

    def _drop(self, quantity: Quantity, why: str) -> None:
        """Stop computing ``quantity`` for the rest of the run, and say so."""
        self.report_not_measured(quantity.name, why)
        self.quantities = [q for q in self.quantities if q is not quantity]
        self._due = {p: [f for f in fns if f.__self__ is not quantity]
                     for p, fns in self._due.items()}
        self._due_names = self._due_names - {quantity.name}
        self._due_key = None

    # -- the sink the quantities write to ------------------------------------

    def scalar(self, tag: str, value: Tensor | float) -> None:
        self._scalars[tag] = value

    def histogram(self, tag: str, values: Tensor) -> None:
        self._histograms.append((tag, values.detach().cpu()))

    def image(self, tag: str, image: Tensor) -> None:
        self._images.append((tag, image.detach().cpu()))

    def event(self, record: dict[str, Any]) -> None:
        """Write an event now: records, log, TensorBoard text and a warning."""
        record = {"step": self.steps + 1, **record}
        self.events.append(record)
        if self._records is not None:
            self._records.event(record)
        if record.get("event") == "nonfinite":
            where = f"block {record['block']}, {record['half']}"
            if record.get("circulation") is not None:
                where += f", circulation {record['circulation']}"
            message = (f"non-finite {record['tensor']} first seen at step "
                       f"{record['step']} in {record['module']} ({where})")
            log.error(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            if self._tb is not None:
                self._tb.text("events", message, record["step"])

    def report_not_measured(self, what: str, why: str) -> None:
        """Say once that ``what`` is not measured and why (log, warn, record)."""
        if what in self._reported:
            return
        self._reported.add(what)
        self.not_measured.append({"what": what, "why": why})
        log.info("not measured: %s (%s)", what, why)
        warnings.warn(f"recorder: {what} is not measured: {why}", stacklevel=2)
        if self._records is not None:
            record = {"step": self.steps + 1, "event": "not_measured",
                      "what": what, "why": why}
            self.events.append(record)
            self._records.event(record)

    # -- values from outside the hooks ---------------------------------------

    def log_scalars(self, values: Mapping[str, float | None],
                    step: int | None = None) -> None:
        """Write scalars such as epoch metrics (``None`` values are skipped).

        ``step`` defaults to the last completed step; values join that step's
        line in ``records.jsonl``.
        """
        if not self.enabled or self._records is None:
            return
        step = self.steps if step is None else step
        numbers = {t: float(v) for t, v in values.items() if v is not None}
        if numbers:
            self._tb.scalars(numbers, step)
            self._records.scalars(step, self.epoch, numbers)
            self.stats.add(numbers, step)
            self._logged_tags.update(numbers)

    def write_hparams(self, hparams: Mapping[str, Any],
                      metrics: Mapping[str, float | None],
                      log_metrics: bool = True) -> None:
        """HParams and final metrics into this run's event file.

        With ``log_metrics`` the metrics are also written as scalars at the
        last step (the HParams dashboard reads them from there); turn it off
        when they were logged already.
        """
        if not self.enabled or self._tb is None:
            return
        numbers = {t: float(v) for t, v in metrics.items()
                   if v is not None and math.isfinite(float(v))}
        if log_metrics:
            self.log_scalars(numbers)
        self._tb.hparams(hparams, numbers, self.steps)
        self._hparams_written = True

    def flush(self) -> None:
        """Push everything written so far to the disk."""
        if self._records is not None:
            self._records.flush()
        if self._tb is not None:
            self._tb.flush()

    def summary(self) -> dict[str, dict[str, float]]:
        """Per tag: count, mean, std, min, max and last of the recorded values."""
        return {tag: {"count": s.count, "mean": s.mean, "std": s.std, "min": s.min,
                      "max": s.max, "last": s.last, "nonfinite": s.nonfinite}
                for tag, s in self.stats.items()}


def _split_probe(batch: tuple[Tensor, Tensor] | Tensor | None
                 ) -> tuple[Tensor | None, Tensor | None]:
    if batch is None:
        return None, None
    if isinstance(batch, Tensor):
        return batch, None
    x, y = batch
    if y is not None and y.shape[0] != x.shape[0]:
        raise ConfigError(f"probe_batch has {x.shape[0]} inputs but {y.shape[0]} "
                          "labels")
    return x, y


def _detached(value: Tensor | float) -> Tensor | float:
    return value.detach() if isinstance(value, Tensor) else float(value)


def _to_floats(values: dict[str, Tensor | float]) -> dict[str, float]:
    """Numbers from 0-d tensors and floats, with one transfer per device."""
    numbers = {t: v for t, v in values.items() if not isinstance(v, Tensor)}
    by_device: dict[torch.device, list[str]] = {}
    for tag, value in values.items():
        if isinstance(value, Tensor):
            by_device.setdefault(value.device, []).append(tag)
    for device_tags in by_device.values():
        stacked = torch.stack([values[t] for t in device_tags])  # type: ignore[misc]
        numbers.update(zip(device_tags, stacked.double().tolist()))
    return {t: float(numbers[t]) for t in values}
