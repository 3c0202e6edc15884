"""Record every circulation of a protocol model while it trains.

Two ways in:

- :class:`Recorder`, a context manager for any protocol model and any
  training loop (call ``rec.step(optimizer)`` in place of
  ``optimizer.step()``);
- :class:`TrainerRecorder`, the same as a ``tourbillon.train.Callback``; the
  CLI passes it to ``Trainer(..., callbacks=[...])``.

Both write TensorBoard event files and ``records.jsonl`` (see
:mod:`diagnostics.records`) into the run directory. See docs/recording.md.
"""

from __future__ import annotations

from .records import load_events, load_records
from .recording import Recorder
from .schedule import MODES, QUANTITIES, Schedule, make_schedules
from .trainer_callback import TrainerRecorder

__all__ = ["MODES", "QUANTITIES", "Recorder", "Schedule", "TrainerRecorder",
           "load_events", "load_records", "make_schedules"]
