"""Training the runs of a design: in worker processes, resumable, one file each.

Each run trains in its own directory ``runs/<label>_s<seed>_<cell>/`` (the
trainer's ``config.json`` and ``metrics.jsonl``, and TensorBoard event files
when recording) and ends by writing ``cells/<run id>.json`` atomically (a
temporary file, then ``os.replace``). A run whose file exists is never
trained again, so a sweep that is interrupted or killed resumes where it
stopped and loses no finished run; a run killed half-way leaves only its
directory, which the next attempt wipes.

A run whose trainer reports ``diverged`` or raises, or whose final test
reconstruction error is not finite, is recorded as diverged with the error
text and NaN metrics; the sweep goes on. A data set that cannot be loaded is
not a divergence: that error stops the sweep.

Workers are processes of a ``spawn`` context (torch and ``fork`` can
deadlock), each with one torch thread; ``workers=1`` trains in this process,
also with one thread (restored afterwards) so that the numbers do not
depend on the number of workers. Because of ``spawn``, a script that starts
a sweep with ``workers > 1`` needs an ``if __name__ == "__main__":`` guard.
Two sweeps must not share one directory at the same time.

Final metrics are the last line of ``metrics.jsonl``; the trainer evaluates
only the last epoch (``eval_every`` beyond any run's length).

Recording (``record`` not ``off``): the run directory is a TensorBoard run.
``TrainerRecorder`` is a callback of the trainer and writes the run's
scalars and, in the run's own event file, its HParams: every config field
(``name`` is the cell label), the run's axis settings (``axis:<name>``) and
seed, with the final metrics.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import shutil
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from tourbillon.config import Config
from tourbillon.data import Dataset, load_dataset
from tourbillon.errors import ConfigError
from tourbillon.train import CHECKPOINT, Trainer, read_metrics

from .design import Run, hparams

log = logging.getLogger(__name__)

METRICS: tuple[str, ...] = ("test_recon_mse", "test_accuracy", "probe_accuracy")
RECORD_MODES: tuple[str, ...] = ("off", "default", "full")
CELLS, RUNS = "cells", "runs"
ONLY_LAST = 2**31 - 1  # an eval_every no run reaches: only the last epoch is evaluated


@dataclass(frozen=True)
class RunOptions:
    """How every run of a sweep is trained (epochs are in the configs).

    Attributes:
        probe_epochs: epochs of each linear probe at the end of a run.
        max_train, max_test: keep only the first this many examples.
        data_root: folder of the data set files (not ``mnist-sample``).
        device: ``cpu``, ``cuda`` or ``auto``.
        record: ``off``, or a recorder mode (``default``, ``full``): every run
            becomes a TensorBoard run with its hparams and final metrics.
        keep_checkpoints: keep each run's ``checkpoint.pt`` (a few MB each).
        cheap_every, expensive_every: the recorder's intervals (its defaults
            when None); recording does not change a run's numbers.
    """

    probe_epochs: int = 10
    max_train: int | None = None
    max_test: int | None = None
    data_root: str = "data"
    device: str = "cpu"
    record: str = "off"
    keep_checkpoints: bool = False
    cheap_every: int | None = None
    expensive_every: int | None = None

    def __post_init__(self) -> None:
        if self.probe_epochs < 0:
            raise ConfigError(f"probe_epochs must be >= 0, got {self.probe_epochs}")
        if self.record not in RECORD_MODES:
            raise ConfigError(f"record must be one of {', '.join(RECORD_MODES)}, "
                              f"got {self.record!r}")

    def fingerprint(self) -> dict[str, Any]:
        """The options that change a run's numbers (part of the cell id)."""
        return {"probe_epochs": self.probe_epochs, "max_train": self.max_train,
                "max_test": self.max_test, "device": self.device, "evaluate": "last"}


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def result_path(out_dir: Path, run_id: str) -> Path:
    """Where a run's result file lives."""
    return out_dir / CELLS / f"{run_id}.json"


def read_result(out_dir: Path, run_id: str) -> dict[str, Any] | None:
    """The finished run's record, or None if it has not finished."""
    path = result_path(out_dir, run_id)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        log.warning("ignoring unreadable %s (%s); the run will be trained again",
                    path, error)
        return None
    return record if record.get("run") == run_id else None


def run_all(runs: list[Run], out_dir: str | Path, options: RunOptions, *,
            workers: int | None = None, progress: bool = False,
            hparam_fields: list[str] = ()) -> dict[str, dict[str, Any]]:
    """Train every run without a result file; return all records by run id.

    Args:
        runs: the design's runs (unique run ids).
        out_dir: the sweep directory.
        options: how to train.
        workers: processes; ``None`` uses every core, 1 trains in-process.
        progress: show a progress bar (for the CLI).
        hparam_fields: config fields logged as hparams besides the settings.
    """
    out_dir = Path(out_dir)
    (out_dir / CELLS).mkdir(parents=True, exist_ok=True)
    records = {r.run_id: read_result(out_dir, r.run_id) for r in runs}
    pending = [r for r in runs if records[r.run_id] is None]
    log.info("%d of %d runs already finished; training %d", len(runs) - len(pending),
             len(runs), len(pending))
    domains = _domains(runs)
    tasks = [_task(r, out_dir, options, hparams(r, list(hparam_fields)), domains)
             for r in pending]
    bar = None
    if progress and tasks:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(tasks), desc="ablation runs", unit="run")

    def collect(record: dict[str, Any]) -> None:
        records[record["run"]] = {**record, "_fresh": True}  # trained in this call
        if bar is not None:
            bar.update()

    try:
        _execute_all(tasks, default_workers() if workers is None else workers, collect)
    finally:
        if bar is not None:
            bar.close()
    return records


def _domains(runs: list[Run]) -> dict[str, list[str]]:
    """Every level of every setting, for the HParams dashboard's filters."""
    levels: dict[str, set[str]] = {}
    for run in runs:
        for key, level in run.settings.items():
            levels.setdefault(key, set()).add(level)
    return {k: sorted(v) for k, v in levels.items()}


def _task(run: Run, out_dir: Path, options: RunOptions, hparam_values: dict[str, Any],
          domains: dict[str, list[str]]) -> dict[str, Any]:
    """Everything a worker needs, as plain picklable data."""
    return {"run": run.run_id, "cell": run.cell, "seed": run.seed, "label": run.label,
            "config": run.config.to_dict(), "options": asdict(options),
            "run_dir": str(out_dir / RUNS / run.dir_name),
            "relative_dir": f"{RUNS}/{run.dir_name}",
            "result": str(result_path(out_dir, run.run_id)),
            "hparams": hparam_values, "domains": domains}


def _execute_all(tasks: list[dict[str, Any]], workers: int,
                 collect: Callable[[dict[str, Any]], None]) -> None:
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if workers == 1:
        for task in tasks:
            collect(execute(task))
        return
    if not tasks:
        return
    # The parent loads each data set once (errors surface here) and hands it
    # to every worker; parsing it again in each process is slower.
    preloaded = {}
    for task in tasks:
        config = Config.from_dict(task["config"])
        options = RunOptions(**task["options"])
        preloaded.setdefault(_data_key(config, options),
                             _as_arrays(_data(config, options)))
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)),
                               mp_context=context, initializer=_init_worker,
                               initargs=(preloaded,))
    try:
        futures = [pool.submit(execute, task) for task in tasks]
        for future in as_completed(futures):
            collect(future.result())
    except BrokenProcessPool:
        pool.shutdown(wait=False, cancel_futures=True)
        raise RuntimeError("a worker process died (killed, or out of memory); "
                           "finished runs are saved: run the sweep again to resume")
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def _init_worker(preloaded: dict[tuple, dict[str, Any]]) -> None:
    torch.set_num_threads(1)
    # What a cell's recorder could not measure is in its records.jsonl; one
    # warning per worker and cell would only flood the sweep's terminal.
    warnings.filterwarnings("ignore", message="recorder: ")
    for key, parts in preloaded.items():
        _remember(key, _from_arrays(parts))


@contextmanager
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# Loaded data sets by (name, flat, max_train, max_test, root); at most two kept.
_DATA: dict[tuple, Dataset] = {}


def _data_key(config: Config, options: RunOptions) -> tuple:
    return (config.dataset, config.arch == "linear", options.max_train,
            options.max_test, options.data_root)


def _data(config: Config, options: RunOptions) -> Dataset:
    """The run's data set, loaded once per process (the trainer only reads it)."""
    key = _data_key(config, options)
    if key not in _DATA:
        name, flat, max_train, max_test, root = key
        data = load_dataset(name, root=root, flat=flat, max_train=max_train,
                            max_test=max_test)
        _remember(key, data)
    return _DATA[key]


def _remember(key: tuple, data: Dataset) -> None:
    while len(_DATA) >= 2:
        _DATA.pop(next(iter(_DATA)))
    _DATA[key] = data


def _as_arrays(data: Dataset) -> dict[str, Any]:
    """A data set as numpy arrays and plain values, cheap to send to a worker."""
    return {"name": data.name, "image_shape": data.image_shape, "classes": data.classes,
            **{k: getattr(data, k).numpy() for k in ("x_train", "y_train", "x_test",
                                                      "y_test")}}


def _from_arrays(parts: dict[str, Any]) -> Dataset:
    tensors = {k: torch.from_numpy(parts[k]) for k in ("x_train", "y_train", "x_test",
                                                       "y_test")}
    return Dataset(parts["name"], image_shape=parts["image_shape"],
                   classes=parts["classes"], **tensors)


def execute(task: dict[str, Any]) -> dict[str, Any]:
    """Train one run and write its record atomically; the worker's entry point."""
    started = time.perf_counter()
    config = Config.from_dict(task["config"])
    options = RunOptions(**task["options"])
    run_dir = Path(task["run_dir"])
    if run_dir.exists():  # left by an attempt that was killed
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    data = _data(config, options)

    # Train; a raising trainer is a diverged run, not a failed sweep.
    error, recorder = None, "off"
    try:
        with torch.random.fork_rng(devices=[]), _one_thread():
            callbacks, recorder = _callbacks(run_dir, options, task["hparams"])
            trainer = Trainer(config, data, run_dir, eval_every=ONLY_LAST,
                              probe_epochs=options.probe_epochs, callbacks=callbacks,
                              device=options.device)
            trainer.fit()
            if recorder == "recorder":
                # A recorded cell is judged by the detectors like any run,
                # and some of their rules read the model's static facts.
                from ..detectors.facts import facts_from_model
                facts_from_model(trainer.model, data.x_test[:256]).save(run_dir)
    except Exception as exc:  # any failure of the run is recorded, not raised
        error = f"{type(exc).__name__}: {exc}"
        log.warning("run %s (%s) raised %s", task["run"], task["label"], error)
    metrics, diverged, error = _final_metrics(run_dir, error)

    # Tidy up, record for TensorBoard, and write the result last.
    if not options.keep_checkpoints:
        (run_dir / CHECKPOINT).unlink(missing_ok=True)
    result = {"run": task["run"], "cell": task["cell"], "seed": task["seed"],
              "label": task["label"], "run_dir": task["relative_dir"],
              "metrics": metrics, "diverged": diverged, "error": error,
              "seconds": time.perf_counter() - started, "recorder": recorder,
              "config": task["config"]}
    _atomic_write_json(Path(task["result"]), result)
    return result


def _final_metrics(run_dir: Path, error: str | None
                   ) -> tuple[dict[str, float | None], bool, str | None]:
    """Final metrics (None where missing), whether the run diverged, and why."""
    lines = read_metrics(run_dir)
    last = lines[-1] if lines else {}
    diverged = error is not None or bool(last.get("diverged"))
    if not diverged and not lines:
        diverged, error = True, "the trainer wrote no metrics"
    if diverged:
        error = error or f"training loss became non-finite in epoch {last.get('epoch')}"
        return {m: None for m in METRICS}, True, error
    metrics = {m: last.get(m) for m in METRICS}
    bad = [m for m, v in metrics.items() if v is not None and not math.isfinite(v)]
    if bad:
        return {m: None for m in METRICS}, True, f"non-finite final {', '.join(bad)}"
    return metrics, False, None


def _callbacks(run_dir: Path, options: RunOptions, hparams: dict[str, Any]
               ) -> tuple[list[Any], str]:
    """The recorder as a callback unless recording is off; which it is."""
    if options.record == "off":
        return [], "off"
    from diagnostics.recorder import TrainerRecorder
    every = {k: v for k, v in (("cheap_every", options.cheap_every),
                               ("expensive_every", options.expensive_every))
             if v is not None}
    return [TrainerRecorder(str(run_dir), options.record, hparams=hparams,
                            **every)], "recorder"


def _atomic_write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
