"""The whole diagnosis: train, record, detect, ablate, judge, report.

``diagnose`` trains the failing model and a working config with the
recorder on, runs the stall detectors on both, runs the ablation between
them (when both are configs), computes the verdict from the failing run's
measurements against baselines measured on the same data, and writes the
HTML report and ``findings.json``. Every stage is timed (``timings.json``).

Layout under ``out`` (default: the current directory):

- ``runs/failing-<name>``, ``runs/working-<name>``: recorded training runs
  (TensorBoard runs, ``records.jsonl``, ``metrics.jsonl``, ``facts.json``).
- ``runs/ablation/``: the sweep (``results.csv``, ``effects.csv``,
  ``causes.json``, one TensorBoard run per cell under ``runs/``).
- ``reports/diagnosis.html`` and ``reports/findings.json``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from tourbillon.config import Config
from tourbillon.data import Dataset, load_dataset
from tourbillon.errors import ConfigError
from tourbillon.train import Trainer, read_metrics

from .ablation import AblationResult, run_ablation
from .detectors import detect_run
from .detectors.facts import facts_from_model
from .trainer_callback import TrainerRecorder
from .user_model import USER_MODEL, ProtocolTrainer

log = logging.getLogger(__name__)

STAGES = ("train", "detect", "ablate", "report")
# The runs of a diagnosis are short (a few hundred steps), so in the
# recorder's default mode they are recorded more densely than its defaults
# (cheap quantities every 50 steps, expensive every 500): every detector then
# has enough points to judge. The ablation cells use the same intervals, so a
# rule that falls silent in a cell was as able to fire there as in the
# failing run.
RECORDED_RUN_EVERY = {"cheap_every": 5, "expensive_every": 20}


@dataclass(frozen=True)
class Subject:
    """A model to diagnose: a config, or a user factory trained with a recipe.

    Attributes:
        label: ``failing`` or ``working``.
        config: the variant, or the recipe for a factory.
        factory: builds the user's model; ``None`` for a config.
        spec: how the user named it (variant, ``--set`` list or factory).
    """

    label: str
    config: Config
    factory: Callable[[], nn.Module] | None = None
    spec: str = ""

    @property
    def run_name(self) -> str:
        name = self.config.name.replace(":", "-").replace("/", "-")
        return f"{self.label}-{name}"


@dataclass(frozen=True)
class DiagnoseOptions:
    """How much to train and where to write.

    Attributes:
        epochs: epochs of the recorded runs and of every ablation cell.
        seeds: ablation replicate seeds.
        workers: ablation processes (``None``: every core).
        record: recorder mode of the recorded runs and ablation cells.
        probe_epochs: epochs of each linear probe.
        out: parent of ``runs/`` and ``reports/``.
        max_train, max_test: keep only the first this many examples.
        data_root, download: where full data sets live; fetch if missing.
    """

    epochs: int = 2
    seeds: tuple[int, ...] = (0, 1, 2)
    workers: int | None = None
    record: str = "default"
    probe_epochs: int = 10
    out: Path = Path(".")
    max_train: int | None = None
    max_test: int | None = None
    data_root: str = "data"
    download: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be >= 1, got {self.epochs}")
        if not self.seeds:
            raise ConfigError("--seeds needs at least one seed")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")


@dataclass
class Diagnosis:
    """What one invocation measured and wrote."""

    verdict: dict[str, Any]
    findings: list[dict[str, Any]]
    not_checked: dict[str, list]
    causes: list[dict[str, Any]]
    ablation: AblationResult | None
    run_dirs: dict[str, Path]
    report: Path
    findings_json: Path
    timings: dict[str, float] = field(default_factory=dict)


# -- stages ----------------------------------------------------------------------------


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - started


def train_recorded(subject: Subject, data: Dataset, options: DiagnoseOptions,
                   progress: bool = False) -> Path:
    """Train one subject with the recorder on; returns its run directory."""
    run_dir = options.out / "runs" / subject.run_name
    config = subject.config.replace(epochs=options.epochs)
    trainer_options = dict(eval_every=1, probe_epochs=options.probe_epochs,
                           progress=progress)
    if subject.factory is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / USER_MODEL).write_text(json.dumps({"factory": subject.spec}) + "\n")
    recorder = TrainerRecorder(run_dir, options.record, **_record_every(options))
    with recorder:
        if subject.factory is None:
            trainer = Trainer(config, data, run_dir, callbacks=[recorder],
                              **trainer_options)
        else:
            trainer = ProtocolTrainer(subject.factory, config, data, run_dir,
                                      callbacks=[recorder], **trainer_options)
        # Facts before training too: a run that diverges leaves a model whose
        # forward gives NaN, and its input statistics would say nothing.
        before = facts_from_model(trainer.model, data.x_test[:256])
        trainer.fit()
    facts = before if trainer.diverged else facts_from_model(trainer.model,
                                                             data.x_test[:256])
    facts.save(run_dir / "facts.json")
    return run_dir


def _record_every(options: DiagnoseOptions) -> dict[str, int]:
    return dict(RECORDED_RUN_EVERY) if options.record == "default" else {}


def mean_image_mse(data: Dataset) -> float:
    """Test MSE of predicting the mean training image for every test example."""
    mean = data.x_train.mean(dim=0, keepdim=True)
    return F.mse_loss(mean.expand_as(data.x_test), data.x_test).item()


def chance_accuracy(data: Dataset) -> float:
    """Accuracy of always predicting the most frequent test class."""
    return torch.bincount(data.y_test).max().item() / data.y_test.numel()


def judge(metrics: dict[str, Any], data: Dataset, *, recon_margin: float = 0.9,
          accuracy_margin: float = 0.05) -> dict[str, Any]:
    """``stalls`` or ``learns``, with the measured reasons.

    A run stalls when block 0 reconstructs no better than ``recon_margin``
    times the mean-image MSE, or when its test accuracy is within
    ``accuracy_margin`` of always guessing the most frequent class.
    """
    baseline, chance = mean_image_mse(data), chance_accuracy(data)
    recon, acc = metrics.get("test_recon_mse"), metrics.get("test_accuracy")
    reasons, stalls = [], False
    if metrics.get("diverged"):
        stalls = True
        reasons.append(f"training diverged: the loss was not finite in epoch "
                       f"{metrics.get('epoch')} (step {metrics.get('step')})")
    if recon is not None:
        bad = recon >= recon_margin * baseline
        stalls |= bad
        reasons.append(
            f"block 0 reconstructs the test data with MSE {recon:.4f}, "
            f"{recon / baseline:.2f}x the MSE of predicting the mean training image "
            f"({baseline:.4f}); the limit for learning is {recon_margin:.2f}x")
    if acc is not None:
        bad = acc <= chance + accuracy_margin
        stalls |= bad
        reasons.append(
            f"test accuracy is {100 * acc:.1f}% against {100 * chance:.1f}% for "
            f"always guessing the most frequent class (limit: chance + "
            f"{100 * accuracy_margin:.0f} points)")
    if recon is None and acc is None and not metrics.get("diverged"):
        reasons.append("not measured: the run has neither a reconstruction error nor "
                       "a test accuracy")
    return {"verdict": "stalls" if stalls else "learns", "reasons": reasons,
            "test_recon_mse": recon, "test_accuracy": acc,
            "mean_image_mse": baseline, "chance_accuracy": chance}


def removed_by(findings: list[dict[str, Any]], ablation: AblationResult) -> dict:
    """For each finding, the axes whose single fix makes its rule fall silent.

    Runs the detectors on every recorded screening cell that fixes exactly
    one axis of the failing config and checks whether the same rule still
    fires at the same block and half. An axis is credited when the rule
    checked that place in its cells and fired in none; a cell where the rule
    could not check the place counts neither way. Keys are
    ``(rule, block, half, circulation)``.
    """
    runs = ablation.runs_with_paths()
    axes = [c for c in runs.columns if c.startswith("axis:")]
    silenced: dict[tuple, list[str]] = {_finding_key(f): [] for f in findings}
    for column in axes:
        others = [c for c in axes if c != column]
        single = runs[(runs[column] == "working")
                      & (runs[others] == "failing").all(axis=1)]
        if single.empty:
            continue
        fires, silent = set(), set()
        for run_dir in single["run_dir"]:
            if not (Path(run_dir) / "records.jsonl").exists():
                continue  # an unrecorded cell says nothing about findings
            result = detect_run(run_dir)
            fired = {(f.rule, f.block, f.half) for f in result.findings}
            for finding in findings:
                key = _finding_key(finding)
                if key[:3] in fired:
                    fires.add(key)
                elif _checked(finding, result.not_checked):
                    silent.add(key)
        for key in silent - fires:
            silenced[key].append(column.removeprefix("axis:"))
    return silenced


def _checked(finding: dict[str, Any], not_checked: list) -> bool:
    """Whether the finding's rule could check the finding's place in a run."""
    place = f"block{finding['block']}" if finding["block"] is not None else None
    for entry in not_checked:
        if entry.rule != finding["rule"]:
            continue
        if entry.what == "all" or place is None or entry.what.startswith(place):
            return False
    return True


def detect_all(run_dirs: dict[str, Path], say: Callable = lambda *a: None
               ) -> tuple[list[dict[str, Any]], dict[str, list[dict]]]:
    """Findings of every labelled run (each tagged with its ``subject``), and
    per label the checks its rules could not make."""
    findings, not_checked = [], {}
    for label, run_dir in run_dirs.items():
        say("detect", label)
        result = detect_run(run_dir)
        findings += [dict(f.to_dict(), subject=label) for f in result.findings]
        not_checked[label] = [n.to_dict() for n in result.not_checked]
    return findings, not_checked


def _of_failing(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in findings if f["subject"] == "failing"]


def _finding_key(finding: dict[str, Any]) -> tuple:
    return (finding["rule"], finding["block"], finding["half"], finding["circulation"])


# -- the whole diagnosis ---------------------------------------------------------


def diagnose(failing: Subject, working: Subject | None, options: DiagnoseOptions, *,
             command: list[str] | None = None, progress: Callable | None = None
             ) -> Diagnosis:
    """Run every stage and write the report; see the module docstring.

    Args:
        failing: the model that stalls (or is suspected to).
        working: a model that learns, for comparison and ablation.
        options: epochs, seeds, workers, output directory.
        command: the command line, for the report's environment section.
        progress: called with ``(stage, detail)`` as the diagnosis proceeds.
    """
    say = progress or (lambda stage, detail: None)
    timings: dict[str, float] = {}
    subjects = [s for s in (failing, working) if s is not None]
    data = load_dataset(failing.config.dataset, root=options.data_root,
                        download=options.download, flat=failing.config.arch == "linear",
                        max_train=options.max_train, max_test=options.max_test)

    # Train and record the failing and the working model.
    run_dirs: dict[str, Path] = {}
    with _timed(timings, "train"):
        for subject in subjects:
            say("train", f"{subject.label}: {subject.config.name}")
            run_dirs[subject.label] = train_recorded(subject, data, options,
                                                     progress=progress is not None)

    # Detect symptoms in both.
    with _timed(timings, "detect"):
        findings, not_checked = detect_all(run_dirs, say)

    # Attribute the stall: which differences from the working config matter.
    ablation, silenced = None, {}
    with _timed(timings, "ablate"):
        if working is not None and failing.factory is None and working.factory is None:
            say("ablate", f"{len(options.seeds)} seeds")
            ablation = run_ablation(
                failing.config, working.config, options.out / "runs" / "ablation",
                epochs=options.epochs, seeds=options.seeds, workers=options.workers,
                record=options.record, probe_epochs=options.probe_epochs,
                record_every=_record_every(options),
                max_train=options.max_train, max_test=options.max_test,
                data_root=options.data_root, progress=progress is not None)
            silenced = removed_by(_of_failing(findings), ablation)

    # Judge and report.
    with _timed(timings, "report"):
        say("report", "writing")
        verdict = judge(read_metrics(run_dirs["failing"])[-1], data)
        report, findings_json = _write_report(
            options.out / "reports", verdict, ablation, findings, not_checked,
            silenced, run_dirs, subjects, data, command or [], options)
    _write_timings(options.out / "reports", timings)
    return Diagnosis(verdict, findings, not_checked,
                     ablation.causes if ablation is not None else [], ablation,
                     run_dirs, report, findings_json, timings)


def _write_timings(folder: Path, timings: dict[str, float]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "timings.json.tmp"
    tmp.write_text(json.dumps(timings, indent=2) + "\n")
    os.replace(tmp, folder / "timings.json")


def _write_report(folder: Path, verdict, ablation, findings, not_checked, silenced,
                  run_dirs, subjects, data, command, options) -> tuple[Path, Path]:
    from .report import build_report, environment

    folder.mkdir(parents=True, exist_ok=True)
    causes = ablation.causes if ablation is not None else None
    diff = (subjects[0].config.diff(subjects[1].config)
            if len(subjects) == 2 else None)
    report = build_report(
        folder / "diagnosis.html", verdict=verdict, causes=causes,
        effects=ablation.effects if ablation is not None else None,
        runs=ablation.runs_with_paths() if ablation is not None else None,
        findings=findings, removed_by=silenced, run_dirs=run_dirs,
        config_diff=diff, environment=environment(command, list(options.seeds)),
        data=data, not_checked=[dict(n, subject=label) for label, items in
                                not_checked.items() for n in items])
    return report, folder / "findings.json"


def rebuild_report(runs_dir: str | Path, out: str | Path | None = None,
                   command: list[str] | None = None) -> Diagnosis:
    """The report of a finished diagnosis, from its recorded runs, without training.

    Args:
        runs_dir: the ``runs/`` folder of a diagnosis (``failing-*``, optional
            ``working-*`` and ``ablation/``).
        out: where ``reports/`` goes (default: beside ``runs_dir``).
    """
    from .ablation import load_ablation

    runs_dir = Path(runs_dir)
    out = Path(out) if out is not None else runs_dir.parent
    run_dirs = {}
    for label in ("failing", "working"):
        found = sorted(p for p in runs_dir.glob(f"{label}-*") if p.is_dir())
        if found:
            run_dirs[label] = found[0]
    if "failing" not in run_dirs:
        raise ConfigError(f"{runs_dir} has no failing-* run directory: not the runs/ "
                          "folder of a diagnosis")
    subjects = [Subject(label, Config.from_dict(
        json.loads((d / "config.json").read_text()))) for label, d in run_dirs.items()]
    failing = subjects[0].config
    data = load_dataset(failing.dataset, flat=failing.arch == "linear")

    timings: dict[str, float] = {}
    with _timed(timings, "detect"):
        findings, not_checked = detect_all(run_dirs)
    ablation, silenced = None, {}
    if (runs_dir / "ablation" / "causes.json").exists():
        ablation = load_ablation(runs_dir / "ablation")
        silenced = removed_by(_of_failing(findings), ablation)
    with _timed(timings, "report"):
        verdict = judge(read_metrics(run_dirs["failing"])[-1], data)
        seeds = (ablation.design.get("seeds", []) if ablation is not None
                 else [failing.seed])
        options = DiagnoseOptions(seeds=tuple(seeds) or (failing.seed,), out=out)
        report, findings_json = _write_report(
            out / "reports", verdict, ablation, findings, not_checked, silenced,
            run_dirs, subjects, data, command or [], options)
    return Diagnosis(verdict, findings, not_checked,
                     ablation.causes if ablation is not None else [], ablation,
                     run_dirs, report, findings_json, timings)
