"""How much the recorder slows training: the same run with and without it.

Trains one variant (``reference`` by default) with the Trainer, alternating a
run without the recorder and one with ``TrainerRecorder`` at the default
schedule, ``--repeats`` times, then a few runs in ``full`` mode (everything
every step). Times are the CPU seconds of the whole process
(``time.process_time``, which includes TensorBoard's writer thread) for
``Trainer.fit``; with one torch thread they equal wall time on an idle
machine and are less disturbed by other jobs on a shared one. Each ratio is
the median over repeats of (with / without) from back-to-back runs, so a
change in the machine's load affects both sides of a pair alike. The
trainer's own 30-epoch probes are switched off (``probe_epochs=0``): they
would dwarf the training steps and hide the recorder's cost.

Prints one line per setting and, last, ``ratio: X.XX`` (default / none).

Usage::

    python benchmarks/recorder_overhead.py [--variant reference] [--epochs 5]
        [--repeats 7] [--full-repeats 3] [--max-ratio 1.10]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from diagnostics.recorder import TrainerRecorder
from tourbillon.config import resolve
from tourbillon.data import Dataset, load_dataset
from tourbillon.train import Trainer

SETTINGS = ("none", "default", "full")


def train_once(variant: str, epochs: int, data: Dataset, mode: str,
               logdir: Path) -> float:
    """CPU seconds of one ``fit`` with the recorder in ``mode`` (or none)."""
    config = resolve(variant, {"epochs": epochs})
    callbacks = [] if mode == "none" else [TrainerRecorder(logdir / mode, mode)]
    trainer = Trainer(config, data=data, probe_epochs=0, callbacks=callbacks)
    started = time.process_time()
    trainer.fit()
    return time.process_time() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="reference")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--full-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-ratio", type=float, default=None,
                        help="exit with status 1 when the default ratio is above it")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # "not measured" notes are expected here
    logging.disable(logging.WARNING)
    config = resolve(args.variant)
    data = load_dataset(config.dataset, flat=config.arch == "linear")
    times: dict[str, list[float]] = {mode: [] for mode in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in SETTINGS:  # warm-up: imports and first-call costs
            train_once(args.variant, 1, data, mode, Path(tmp) / "warmup")
        plan = [("none", "default")] * args.repeats + [("none", "full")] * (
            args.full_repeats)
        for repeat, pair in enumerate(plan):
            for mode in pair:
                logdir = Path(tmp) / f"run{repeat}"
                times[mode].append(train_once(args.variant, args.epochs, data, mode,
                                              logdir))

    steps = args.epochs * -(-data.x_train.shape[0] // config.batch_size)
    none = times["none"]
    ratios = {"none": [1.0] * len(none),
              "default": [d / n for d, n in zip(times["default"], none)],
              "full": [f / n for f, n in zip(times["full"], none[args.repeats:])]}
    print(f"variant {args.variant}, {args.epochs} epochs ({steps} steps), "
          f"{args.repeats} pairs with default, {args.full_repeats} with full, "
          f"{args.threads} thread(s), CPU seconds")
    for mode in SETTINGS:
        median = statistics.median(times[mode])
        runs = ", ".join(f"{t:.3f}" for t in times[mode])
        print(f"{mode:8s} median {median:.3f} s  ({1e3 * median / steps:.2f} ms/step)"
              f"  ratio {statistics.median(ratios[mode]):.2f}  runs [{runs}]")
    ratio = statistics.median(ratios["default"])
    print(f"ratio: {ratio:.2f}")
    return 1 if args.max_ratio is not None and ratio > args.max_ratio else 0


if __name__ == "__main__":
    sys.exit(main())
