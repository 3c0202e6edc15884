"""Designs: which configs to train, at which seeds, and how each run is named.

A *cell* is one config (every field but ``name`` and ``seed``) trained with
given run options; a *run* is a cell at one seed. A cell is identified by a
hash of its resolved config dict and the options that change its numbers
(``cell_id``), and a run by the cell id and the seed, so the same config and
seed reached by two designs (a screening cell that is also a factorial cell)
is trained once.

Every run carries *settings*: one ``axis:<name>`` entry per axis, ``failing``
or ``working`` in an ablation, the value's text in a grid. Effects are
computed from these settings alone.

Designs of an ablation over A axes, with every run at each seed:

- screening: the failing config; each single fix applied to it (A cells);
  the working config at the failing architecture; each single break
  applied to it (A cells): ``2 + 2A`` cells, fewer when some coincide.
- factorial: every combination of the chosen axes at their failing or
  working values, the other axes failing: ``2^m`` cells, of which the
  all-failing cell and the ``m`` single fixes are screening cells already.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from typing import Any, Iterable

from tourbillon.config import Config
from tourbillon.errors import ConfigError

from .axes import FAILING, WORKING, Axis

AXIS_PREFIX = "axis:"


@dataclass(frozen=True, eq=False)
class Run:
    """One config at one seed, with its place in the design.

    Attributes:
        config: the resolved config, ``seed`` set, ``name`` the label.
        settings: ``{"axis:<name>": level}`` for every axis of the design.
        cell: hash of the config without name and seed, and the options.
    """

    config: Config
    settings: dict[str, str]
    cell: str

    @property
    def seed(self) -> int:
        """The replicate seed."""
        return self.config.seed

    @property
    def label(self) -> str:
        """Readable name of the cell (also the config's ``name``)."""
        return self.config.name

    @property
    def run_id(self) -> str:
        """Unique id of this run: cell id and seed."""
        return f"{self.cell}-s{self.seed}"

    @property
    def dir_name(self) -> str:
        """Name of the run's directory (and TensorBoard run)."""
        return f"{self.label}_s{self.seed}_{self.cell[:8]}"


def cell_id(config: Config, fingerprint: dict[str, Any]) -> str:
    """Hash of ``config`` (without ``name`` and ``seed``) and run options."""
    data = config.to_dict()
    del data["name"], data["seed"]
    text = json.dumps({"config": data, "options": fingerprint}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _safe(label: str, limit: int = 96) -> str:
    label = re.sub(r"[^A-Za-z0-9._=+,-]", "", label.replace(" ", ""))
    return label[:limit] or "cell"


def _make_run(config: Config, settings: dict[str, str], label: str, seed: int,
              fingerprint: dict[str, Any]) -> Run:
    config = config.replace(seed=seed, name=_safe(label))
    return Run(config, settings, cell_id(config, fingerprint))


def _unique(runs: Iterable[Run]) -> list[Run]:
    seen: dict[str, Run] = {}
    for run in runs:
        seen.setdefault(run.run_id, run)
    return list(seen.values())


# -- ablation ----------------------------------------------------------------------


def ablation_label(axes: list[Axis], fixed: frozenset[str]) -> str:
    """``failing``, ``working``, ``fix-a+b`` or ``working-break-a+b``."""
    if not fixed:
        return "failing"
    if len(fixed) == len(axes):
        return "working"
    if len(fixed) <= len(axes) / 2:
        return "fix-" + "+".join(a.name for a in axes if a.name in fixed)
    return "working-break-" + "+".join(a.name for a in axes if a.name not in fixed)


def ablation_config(failing_base: Config, axes: list[Axis],
                    fixed: frozenset[str]) -> Config:
    """``failing_base`` with the axes named in ``fixed`` at their working values."""
    changes = {k: v for a in axes if a.name in fixed for k, v in a.working.items()}
    return failing_base.replace(**changes)


def ablation_run(failing_base: Config, axes: list[Axis], fixed: Iterable[str],
                 seed: int, fingerprint: dict[str, Any]) -> Run:
    """The run with the ``fixed`` axes working and the others failing."""
    fixed = frozenset(fixed)
    settings = {AXIS_PREFIX + a.name: WORKING if a.name in fixed else FAILING
                for a in axes}
    config = ablation_config(failing_base, axes, fixed)
    return _make_run(config, settings, ablation_label(axes, fixed), seed, fingerprint)


def screening_runs(failing_base: Config, axes: list[Axis], seeds: Iterable[int],
                   fingerprint: dict[str, Any]) -> list[Run]:
    """Baselines, single fixes and single breaks at every seed."""
    names = frozenset(a.name for a in axes)
    sets = [frozenset()] + [frozenset({a.name}) for a in axes]
    sets += [names] + [names - {a.name} for a in axes]
    return _unique(ablation_run(failing_base, axes, fixed, seed, fingerprint)
                   for fixed in sets for seed in seeds)


def factorial_runs(failing_base: Config, axes: list[Axis], chosen: list[str],
                   seeds: Iterable[int], fingerprint: dict[str, Any]) -> list[Run]:
    """Every combination of the ``chosen`` axes, the others failing."""
    subsets = [frozenset(c for c, on in zip(chosen, bits) if on)
               for bits in itertools.product((False, True), repeat=len(chosen))]
    return _unique(ablation_run(failing_base, axes, fixed, seed, fingerprint)
                   for fixed in subsets for seed in seeds)


def invalid_combination(failing_base: Config, axes: list[Axis],
                        chosen: list[str]) -> str | None:
    """Why some combination of ``chosen`` fixes is an invalid config, or None."""
    for r in range(2, len(chosen) + 1):
        for subset in itertools.combinations(chosen, r):
            try:
                ablation_config(failing_base, axes, frozenset(subset))
            except ConfigError as error:
                return f"fixing {' and '.join(subset)} together is invalid: {error}"
    return None


# -- grid ------------------------------------------------------------------------


def level_text(value: Any) -> str:
    """A grid value as the text of its level (strings bare, the rest JSON)."""
    return value if isinstance(value, str) else json.dumps(value)


def grid_runs(base: Config, grid: dict[str, list[Any]], seeds: Iterable[int],
              fingerprint: dict[str, Any]) -> list[Run]:
    """The full crossing of ``grid`` on ``base`` at every seed.

    Levels are the texts of the values as the config stores them, so ``0.01``
    and ``1e-2`` are one level.

    Raises:
        ConfigError: a combination is an invalid config (the first three are
            named), or a field's values repeat.
    """
    fields = list(grid)
    runs, invalid = [], []
    levels: dict[str, set[str]] = {f: set() for f in fields}
    for combo in itertools.product(*(grid[f] for f in fields)):
        changes = dict(zip(fields, combo))
        try:
            config = base.replace(**changes)
        except ConfigError as error:
            invalid.append(f"{changes}: {error}")
            continue
        values = config.to_dict()
        settings = {AXIS_PREFIX + f: level_text(values[f]) for f in fields}
        for f in fields:
            levels[f].add(settings[AXIS_PREFIX + f])
        label = ",".join(f"{f}={settings[AXIS_PREFIX + f]}" for f in fields)
        runs += [_make_run(config, settings, label, s, fingerprint) for s in seeds]
    if invalid:
        raise ConfigError(f"{len(invalid)} grid combination(s) are invalid configs, "
                          f"e.g. {'; '.join(invalid[:3])}")
    repeated = [f for f in fields if len(levels[f]) != len(grid[f])]
    if repeated:
        raise ConfigError(f"grid field(s) {repeated} repeat a value")
    return _unique(runs)


def varying_fields(runs: list[Run]) -> list[str]:
    """Config fields, other than name and seed, that differ between ``runs``."""
    if not runs:
        return []
    dicts = [r.config.to_dict() for r in runs]
    return [k for k in dicts[0] if k not in ("name", "seed")
            and any(d[k] != dicts[0][k] for d in dicts)]


def hparams(run: Run, fields: list[str]) -> dict[str, Any]:
    """The run's settings, seed and ``fields`` as TensorBoard hparams."""
    data = run.config.to_dict()
    values = {f: data[f] if isinstance(data[f], (bool, int, float, str))
              else json.dumps(data[f]) for f in fields}
    return {**run.settings, "seed": run.seed, **values}
