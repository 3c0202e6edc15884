"""Ablation and grid sweeps: design, train, estimate, rank, save.

A sweep directory holds:

- ``sweep.json``: the design (configs, axes and merges, fields not ablated,
  seeds, epochs, run options, screening scores, the axes of the factorial
  and those left out, baselines, ranking metric, counts, wall time);
  written with ``"status": "running"`` before training, ``"done"`` at the end.
- ``results.csv``: one row per run (``results.parquet`` too when pyarrow is
  installed): ``run``, ``cell``, ``label``, ``seed``, one ``axis:<name>``
  column per axis (its level), every varying config field, the final
  metrics, ``diverged``, ``error``, ``seconds``, ``run_dir``.
- ``effects.csv`` and ``causes.json``: see ``effects``.
- ``cells/`` (one result file per finished run) and ``runs/`` (one run
  directory each, a TensorBoard run when recording): see ``runner``.

Running the same sweep again reuses every finished run, so an interrupted
sweep is resumed by repeating the call.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Iterable, Sequence

import pandas as pd

from tourbillon.config import Config, field_names
from tourbillon.errors import ConfigError, DataError

from . import effects as fx
from .axes import FAILING, WORKING, Axis, axes_between, excluded_fields
from .design import (AXIS_PREFIX, Run, factorial_runs, grid_runs, invalid_combination,
                     level_text, screening_runs, varying_fields)
from .grid import NOT_GRID_FIELDS
from .runner import METRICS, RunOptions, run_all

log = logging.getLogger(__name__)

RESULTS, EFFECTS, CAUSES = "results.csv", "effects.csv", "causes.json"
SWEEP = "sweep.json"
PARQUET = "results.parquet"


@dataclass(frozen=True, eq=False)
class AblationResult:
    """What a sweep found.

    Attributes:
        runs: one row per run (the columns of ``results.csv``).
        effects: one row per effect and metric (``effects.csv``).
        causes: the ranked causes (``causes.json``): dicts with ``axis``,
            ``from``, ``to``, ``metric``, ``effect``, ``ci`` ([low, high]),
            ``rank``, ``design`` and ``share_of_gap``.
        design: the content of ``sweep.json``.
        out_dir: the sweep directory.
    """

    runs: pd.DataFrame
    effects: pd.DataFrame
    causes: list[dict[str, Any]]
    design: dict[str, Any]
    out_dir: Path

    def runs_with_paths(self) -> pd.DataFrame:
        """``runs`` with each ``run_dir`` (stored relative to the sweep
        directory, so a sweep can be moved) resolved against ``out_dir``."""
        return self.runs.assign(run_dir=[str(self.out_dir / d)
                                         for d in self.runs["run_dir"]])

    @property
    def axes(self) -> list[Axis]:
        """The axes of an ablation (empty for a grid)."""
        return [Axis.from_dict(a) for a in self.design.get("axes", [])]

    def save(self) -> None:
        """Write the four summary files (and parquet when pyarrow is present)."""
        _atomic_text(self.out_dir / RESULTS, self.runs.to_csv(index=False))
        _atomic_text(self.out_dir / EFFECTS, self.effects.to_csv(index=False))
        _atomic_text(self.out_dir / CAUSES, _json(self.causes))
        _atomic_text(self.out_dir / SWEEP, _json(self.design))
        if importlib.util.find_spec("pyarrow") is not None:
            self.runs.to_parquet(self.out_dir / PARQUET, index=False)


# -- ablation --------------------------------------------------------------------------


def run_ablation(failing: Config, working: Config, out_dir: str | Path, *,
                 epochs: int, seeds: Sequence[int] = (0, 1, 2),
                 workers: int | None = None, top: int = 4, record: str = "off",
                 record_every: Mapping[str, int] | None = None,
                 probe_epochs: int = 10, head_epochs: int | None = None,
                 include_architecture: bool = False, metric: str | None = None,
                 max_train: int | None = None, max_test: int | None = None,
                 data_root: str = "data", device: str = "cpu",
                 resamples: int = fx.RESAMPLES, progress: bool = False
                 ) -> AblationResult:
    """Find which differences between two configs make one fail.

    Screens every axis (``axes_between``) one at a time in both directions,
    then crosses the ``top`` axes whose screening effects are largest in a
    full factorial at the failing config, every cell at every seed; see
    ``design`` for the cells, ``effects`` for estimates and the ranking rule.
    Default design for reference vs authors: 9 axes, 20 screening cells and
    11 more factorial cells, 93 runs at three seeds.

    Args:
        failing, working: the two configs; every cell keeps the failing one's
            architecture (unless ``include_architecture``) and data set.
        out_dir: the sweep directory; finished runs there are reused.
        epochs: training epochs of every run (the configs' own are ignored).
        seeds: replicate seeds; each cell runs at each.
        workers: processes (``None``: every core; 1: in this process).
        top: at most this many axes in the factorial (2^top cells).
        record: ``off``, or a recorder mode: every run a TensorBoard run.
        record_every: the recorder's ``cheap_every`` / ``expensive_every``
            (its defaults when absent).
        probe_epochs: epochs of the linear probes at the end of each run.
        head_epochs: epochs of an ``after`` head (default: the failing one's).
        include_architecture: ablate the architecture fields as one axis.
        metric: rank causes on this metric instead of the most separating.
        max_train, max_test: keep only the first this many examples.
        data_root, device: see ``RunOptions``.
        resamples: bootstrap resamples.
        progress: show a progress bar (for the CLI).

    Raises:
        ConfigError: invalid arguments, or the configs differ on no axis.
    """
    started = time.perf_counter()
    seeds = _check_common(seeds, epochs, metric)
    if top < 1:
        raise ConfigError(f"top must be >= 1, got {top}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    # Axes, the failing base and the run options.
    axes = axes_between(failing, working, include_architecture)
    if not axes:
        raise ConfigError("the two configs differ on no axis (only on "
                          f"{sorted(excluded_fields(failing, working))}); "
                          "nothing to ablate")
    if failing.dataset != working.dataset:
        warnings.warn(f"the working config's data set {working.dataset!r} is "
                      f"ignored: every cell uses {failing.dataset!r}", stacklevel=2)
    base = failing.replace(epochs=epochs, head_epochs=head_epochs
                           if head_epochs is not None else failing.head_epochs)
    options = RunOptions(probe_epochs=probe_epochs, max_train=max_train,
                         max_test=max_test, data_root=data_root, device=device,
                         record=record, **dict(record_every or {}))
    fingerprint = options.fingerprint()
    design: dict[str, Any] = {
        "kind": "ablation", "format": 1, "status": "running",
        "failing": failing.to_dict(), "working": working.to_dict(),
        "epochs": epochs, "head_epochs": base.head_epochs, "seeds": seeds,
        "options": asdict(options), "include_architecture": include_architecture,
        "axes": [a.to_dict() for a in axes],
        "merges": [{"axis": a.name, "reason": a.merged} for a in axes if a.merged],
        "not_ablated": excluded_fields(failing, working, include_architecture),
        "top": top, "resamples": resamples,
    }
    _atomic_text(out_dir / SWEEP, _json(design))

    # Screening: baselines, single fixes, single breaks.
    screening = screening_runs(base, axes, seeds, fingerprint)
    fields = varying_fields(screening)
    records = run_all(screening, out_dir, options, workers=workers,
                      progress=progress, hparam_fields=fields)
    screen = runs_frame(screening, records, fields)
    base_stats = fx.baselines(screen, axes, METRICS)
    ranking = metric or fx.ranking_metric(base_stats)
    if ranking is None:
        warnings.warn("the failing and working baselines give no comparable metric "
                      "(diverged or equal): causes are not ranked", stacklevel=2)
    screen_fx = fx.screening_effects(screen, axes, METRICS, resamples=resamples)

    # Factorial over the axes with the largest screening effects.
    scores = _screening_scores(screen_fx, ranking or METRICS[0], axes)
    chosen, left_out = _choose(base, axes, scores, top)
    factorial = factorial_runs(base, axes, chosen, seeds, fingerprint)
    for run_id, record in run_all(factorial, out_dir, options, workers=workers,
                                  progress=progress, hparam_fields=fields).items():
        records.setdefault(run_id, record)  # keep screening records as trained
    all_runs = list({r.run_id: r for r in screening + factorial}.values())
    runs = runs_frame(all_runs, records, fields)
    others = {AXIS_PREFIX + a.name: FAILING for a in axes if a.name not in chosen}
    in_factorial = fx.select_runs(runs, others)
    factors = {AXIS_PREFIX + a.name: {FAILING: a.values(FAILING),
                                      WORKING: a.values(WORKING)}
               for a in axes if a.name in chosen}
    fact_fx = fx.factorial_effects(in_factorial, factors,
                                   {c: FAILING for c in factors}, METRICS,
                                   resamples=resamples)

    # Shares, ranks, causes; save.
    table = pd.concat([screen_fx, fact_fx], ignore_index=True)
    table = fx.add_ranks(fx.add_shares(table, base_stats, axes))
    causes = fx.ablation_causes(table, ranking, chosen)
    trained = sum(1 for r in records.values() if r.get("_fresh"))
    design.update({
        "status": "done", "screening_scores": scores, "score_metric":
        ranking or METRICS[0], "factorial_axes": chosen, "left_out_of_factorial":
        left_out, "baselines": base_stats, "ranking_metric": ranking,
        "cells": {"screening": len({r.cell for r in screening}),
                  "factorial": len({r.cell for r in factorial}),
                  "total": len({r.cell for r in all_runs})},
        "runs": _counts(runs, trained), "seconds": time.perf_counter() - started,
    })
    result = AblationResult(runs, table, causes, design, out_dir)
    result.save()
    _warn_failures(runs)
    return result


def _check_common(seeds: Iterable[int], epochs: int, metric: str | None) -> list[int]:
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct and at least one, got {seeds}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs must be a positive integer, got {epochs!r}")
    if metric is not None and metric not in METRICS:
        raise ConfigError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    return seeds


def _screening_scores(effects: pd.DataFrame, metric: str,
                      axes: list[Axis]) -> dict[str, float]:
    """Largest |fix| or |break| effect of each axis on ``metric`` (NaN if none)."""
    on = effects[effects["metric"] == metric]
    scores = {}
    for axis in axes:
        sizes = on.loc[on["axis"] == axis.name, "effect"].astype(float).abs()
        scores[axis.name] = float(sizes.max()) if sizes.notna().any() else math.nan
    return scores


def _choose(base: Config, axes: list[Axis], scores: dict[str, float],
            top: int) -> tuple[list[str], list[dict[str, str]]]:
    """Up to ``top`` axes by score whose fixes combine into valid configs."""
    order = sorted(axes, key=lambda a: -scores[a.name]
                   if not math.isnan(scores[a.name]) else math.inf)
    chosen: list[str] = []
    left_out = []
    for axis in order:
        if len(chosen) == top:
            break
        reason = invalid_combination(base, axes, chosen + [axis.name])
        if reason:
            warnings.warn(f"axis {axis.name} is left out of the factorial: {reason}",
                          stacklevel=3)
            left_out.append({"axis": axis.name, "reason": reason})
        else:
            chosen.append(axis.name)
    return [a.name for a in axes if a.name in chosen], left_out


def _counts(runs: pd.DataFrame, trained: int) -> dict[str, int]:
    return {"total": len(runs), "trained_now": trained,
            "reused": len(runs) - trained, "diverged": int(runs["diverged"].sum())}


def _warn_failures(runs: pd.DataFrame) -> None:
    failed = runs[runs["diverged"]]
    if not failed.empty:
        first = failed.iloc[0]
        warnings.warn(f"{len(failed)} of {len(runs)} runs diverged or raised; "
                      f"e.g. {first['label']} seed {first['seed']}: {first['error']}",
                      stacklevel=3)


# -- grid ------------------------------------------------------------------------------


def run_grid(base: Config, grid: dict[str, list[Any]], out_dir: str | Path, *,
             epochs: int, seeds: Sequence[int] = (0, 1, 2),
             workers: int | None = None, record: str = "off",
             record_every: Mapping[str, int] | None = None,
             probe_epochs: int = 10, metric: str | None = None,
             max_train: int | None = None, max_test: int | None = None,
             data_root: str = "data", device: str = "cpu",
             resamples: int = fx.RESAMPLES, progress: bool = False) -> AblationResult:
    """Train the full crossing of ``grid`` on ``base`` and estimate its effects.

    Effects are measured from each field's ``base`` value when the grid
    lists it, else from its first listed value; see ``effects`` for the
    ranking rule. Arguments as in ``run_ablation``; ``grid`` maps fields to
    the values to cross (``epochs`` in the grid overrides ``epochs``).

    Raises:
        ConfigError: unknown or unsupported fields, empty value lists, or
            combinations that are invalid configs.
    """
    started = time.perf_counter()
    seeds = _check_common(seeds, epochs, metric)
    grid = _check_grid(grid)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = base.replace(epochs=epochs)
    options = RunOptions(probe_epochs=probe_epochs, max_train=max_train,
                         max_test=max_test, data_root=data_root, device=device,
                         record=record, **dict(record_every or {}))
    runs_list = grid_runs(start, grid, seeds, options.fingerprint())
    design: dict[str, Any] = {
        "kind": "grid", "format": 1, "status": "running", "base": base.to_dict(),
        "grid": grid, "epochs": epochs, "seeds": seeds, "options": asdict(options),
        "resamples": resamples,
    }
    _atomic_text(out_dir / SWEEP, _json(design))

    # Train, then estimate from each field's reference level.
    fields = varying_fields(runs_list)
    records = run_all(runs_list, out_dir, options, workers=workers,
                      progress=progress, hparam_fields=fields)
    runs = runs_frame(runs_list, records, fields)
    factors, reference = _grid_factors(runs_list, start, grid)
    table = fx.factorial_effects(runs, factors, reference, METRICS, design="grid",
                                 resamples=resamples)
    table = fx.add_ranks(table)
    ranking, causes = fx.grid_causes(table if metric is None
                                     else table[table["metric"] == metric])
    trained = sum(1 for r in records.values() if r.get("_fresh"))
    design.update({"status": "done", "reference": {k.removeprefix(AXIS_PREFIX): v
                                                   for k, v in reference.items()},
                   "ranking_metric": ranking,
                   "cells": {"total": len({r.cell for r in runs_list})},
                   "runs": _counts(runs, trained),
                   "seconds": time.perf_counter() - started})
    result = AblationResult(runs, table, causes, design, out_dir)
    result.save()
    _warn_failures(runs)
    return result


def _check_grid(grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
    if not isinstance(grid, dict) or not grid:
        raise ConfigError("the grid needs at least one field with a list of values")
    unknown = sorted(set(grid) - set(field_names()))
    if unknown:
        raise ConfigError(f"unknown config field(s) in the grid: {unknown}")
    fixed = sorted(set(grid) & set(NOT_GRID_FIELDS))
    if fixed:
        raise ConfigError(f"{fixed} cannot be grid fields: seeds are replicates "
                          "(use seeds=) and names are set per cell")
    for name, values in grid.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ConfigError(f"grid field {name!r} needs a non-empty list of values, "
                              f"got {values!r}")
    return {k: list(v) for k, v in grid.items()}


def _grid_factors(runs: list[Run], base: Config, grid: dict[str, list[Any]]
                  ) -> tuple[dict[str, dict[str, dict]], dict[str, str]]:
    """Each field's levels with their values, and its reference level."""
    factors: dict[str, dict[str, dict]] = {AXIS_PREFIX + n: {} for n in grid}
    for run in runs:
        values = run.config.to_dict()
        for name in grid:
            level = run.settings[AXIS_PREFIX + name]
            factors[AXIS_PREFIX + name].setdefault(level, {name: values[name]})
    base_values = base.to_dict()
    reference = {}
    for name in grid:
        levels = list(factors[AXIS_PREFIX + name])
        own = level_text(base_values[name])
        reference[AXIS_PREFIX + name] = own if own in levels else levels[0]
    return factors, reference


# -- the runs table and the files --------------------------------------------------


def runs_frame(runs: list[Run], records: dict[str, dict[str, Any]],
               fields: list[str]) -> pd.DataFrame:
    """One row per run: ids, settings, varying fields, metrics, outcome."""
    rows = []
    for run in runs:
        record = records[run.run_id]
        values = run.config.to_dict()
        rows.append({
            "run": run.run_id, "cell": run.cell, "label": run.label, "seed": run.seed,
            **run.settings,
            **{f: json.dumps(values[f]) if isinstance(values[f], list) else values[f]
               for f in fields},
            **{m: math.nan if record["metrics"].get(m) is None
               else float(record["metrics"][m]) for m in METRICS},
            "diverged": bool(record["diverged"]), "error": record.get("error"),
            "seconds": float(record["seconds"]), "run_dir": record["run_dir"],
        })
    return pd.DataFrame(rows)


def load_ablation(out_dir: str | Path) -> AblationResult:
    """Rebuild a finished sweep's result from its files, without training.

    Raises:
        DataError: the directory lacks a file of a finished sweep.
    """
    out_dir = Path(out_dir)
    missing = [n for n in (SWEEP, RESULTS, EFFECTS, CAUSES)
               if not (out_dir / n).exists()]
    if missing:
        raise DataError(f"{out_dir} lacks {', '.join(missing)}: not a finished sweep "
                        "(repeat the run_ablation or run_grid call to resume it)")
    design = json.loads((out_dir / SWEEP).read_text())
    if design.get("status") != "done":
        raise DataError(f"the last sweep in {out_dir} did not finish (its summary "
                        "files may be from an earlier one); repeat its call to "
                        "resume it")
    runs = pd.read_csv(out_dir / RESULTS)
    for column in runs.columns:
        if column.startswith(AXIS_PREFIX):
            runs[column] = runs[column].astype(str)
    runs["diverged"] = runs["diverged"].astype(bool)
    effects = pd.read_csv(out_dir / EFFECTS, dtype={"from": str, "to": str})
    effects = effects.astype({"rank": "Int64"})
    causes = json.loads((out_dir / CAUSES).read_text())
    return AblationResult(runs, effects, causes, design, out_dir)


def _clean(value: Any) -> Any:
    """JSON-ready: non-finite floats become None, tuples lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _json(data: Any) -> str:
    return json.dumps(_clean(data), indent=2, allow_nan=False) + "\n"


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
