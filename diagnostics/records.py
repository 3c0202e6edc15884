"""``records.jsonl``: the recorder's scalars and events, one JSON object a line.

A public format, read by the detectors with pandas:

- a step: ``{"step": int, "epoch": int, "scalars": {tag: float}}``, at most
  one line per step (tags from :mod:`diagnostics.tags`);
- an event: ``{"step": int, "event": "nonfinite", "block": k, "half": ...,
  "circulation": i or null, "module": "blocks.0.encoder", "tensor": "output"
  or "grad", ...}`` or ``{"step": int, "event": "not_measured", "what": ...,
  "why": ...}``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from tourbillon.errors import TourbillonError

from . import tags

RECORDS = "records.jsonl"


class RecordsError(TourbillonError):
    """A run directory without readable records."""


COLUMNS = ("step", "epoch", "tag", "value", "block", "half", "circulation",
           "quantity")


class RecordsWriter:
    """Appends steps and events to ``records.jsonl``.

    A step's line is held back until another step or an event is written (or
    the writer is flushed), so scalars logged late for the same step, such as
    an epoch's metrics, join its line. Events reach the disk at once; steps
    when the file buffer fills, at events and at ``flush``/``close``.

    Args:
        run_dir: the run directory (created if missing).
        append: keep existing lines (a resumed run) instead of truncating.
    """

    def __init__(self, run_dir: str | Path, append: bool = False) -> None:
        path = Path(run_dir) / RECORDS
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = open(path, "a" if append else "w")
        self._pending: dict[str, Any] | None = None

    def scalars(self, step: int, epoch: int, values: dict[str, float]) -> None:
        """Add ``values`` to the line of ``step``."""
        if self._pending is not None and self._pending["step"] != step:
            self.flush(to_disk=False)
        if self._pending is None:
            self._pending = {"step": step, "epoch": epoch, "scalars": {}}
        self._pending["epoch"] = epoch
        self._pending["scalars"].update(values)

    def event(self, record: dict[str, Any]) -> None:
        """Write an event line to the disk now (after any held-back step)."""
        self.flush(to_disk=False)
        self._write(record)
        self._file.flush()

    def flush(self, to_disk: bool = True) -> None:
        """Write the held-back step, if any, and (``to_disk``) flush the file."""
        if self._pending is not None:
            self._write(self._pending)
            self._pending = None
        if to_disk:
            self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self.flush()
            self._file.close()

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, allow_nan=True) + "\n")


def read_lines(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every object of a run's ``records.jsonl``, in file order."""
    path = Path(run_dir) / RECORDS
    if not path.exists():
        raise RecordsError(f"no {RECORDS} in {Path(run_dir).resolve()}")
    lines = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise RecordsError(f"{path}:{n} is not valid JSON ({error})") from None
    return lines


def load_records(run_dir: str | Path) -> pd.DataFrame:
    """The run's scalars in long format, one row per (step, tag).

    Columns: ``step``, ``epoch``, ``tag``, ``value`` and, from
    :func:`diagnostics.tags.parse`, ``block``, ``half``, ``circulation`` and
    ``quantity`` (nullable integers and strings; missing parts are NA).
    """
    rows = []
    parsed: dict[str, dict[str, object]] = {}
    for line in read_lines(run_dir):
        if "scalars" not in line:
            continue
        for tag, value in line["scalars"].items():
            if tag not in parsed:
                parsed[tag] = tags.parse(tag)
            rows.append({"step": line["step"], "epoch": line.get("epoch"),
                         "tag": tag, "value": _as_float(value), **parsed[tag]})
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    for column in ("step", "epoch", "block", "circulation"):
        frame[column] = frame[column].astype("Int64")
    frame["value"] = frame["value"].astype("float64")
    for column in ("tag", "half", "quantity"):
        frame[column] = frame[column].astype("string")
    return frame


def load_events(run_dir: str | Path) -> list[dict[str, Any]]:
    """The run's event lines (``nonfinite``, ``not_measured``), in order."""
    return [line for line in read_lines(run_dir) if "event" in line]


def _as_float(value: object) -> float:
    return math.nan if value is None else float(value)  # type: ignore[arg-type]
