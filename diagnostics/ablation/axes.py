"""Axes of an ablation: the groups of config fields on which two configs differ.

An *axis* is a set of fields that are changed together, with one value per
field on the failing side and one on the working side. The axes between a
failing and a working config come from ``Config.diff`` in three steps:

1. Fields that are not axes are set aside: ``name``, the run options
   ``epochs``, ``head_epochs``, ``seed`` and ``dataset`` (every cell uses the
   caller's epochs, the failing config's data set, and seeds as replicates),
   and, unless ``include_architecture`` is set, the architecture fields in
   ``ARCHITECTURE`` (every cell keeps the failing config's architecture).
2. Fields that only make sense together form one axis (``GROUPS``): the
   optimizer with its learning rate, momentum and decay; the target and
   output circulations of each rule; ``code_graph`` with
   ``decoder_backward``, which only matters when the code keeps its graph;
   all architecture fields. A group with one differing field is named after
   that field, otherwise after the group.
3. An axis whose single change gives an invalid config (``Config`` raises
   ``ConfigError``), applied either as a fix to the failing config or as a
   break to the working one, is merged with the first other axis that makes
   both directions valid; axes whose fields the error message names are
   tried first. The merged axis is named ``a+b`` and its ``merged`` note
   says why. If no single partner works, all invalid axes are merged; if
   that is still invalid, ``ConfigError`` is raised.

Every other field differing between the two configs is one axis of its own.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from tourbillon.config import Config, field_names
from tourbillon.errors import ConfigError

log = logging.getLogger(__name__)

ARCHITECTURE: tuple[str, ...] = (
    "arch", "sizes", "channels", "kernel_sizes", "strides", "paddings",
    "input_size", "classes",
)
RUN_OPTIONS: tuple[str, ...] = ("name", "epochs", "head_epochs", "seed", "dataset")
GROUPS: dict[str, tuple[str, ...]] = {
    "optimizer": ("optimizer", "lr", "momentum", "lr_decay"),
    "encoder_target_output": ("encoder_target", "encoder_output"),
    "decoder_target_output": ("decoder_target", "decoder_output"),
    "code_graph": ("code_graph", "decoder_backward"),
    "architecture": ARCHITECTURE,
}
FAILING, WORKING = "failing", "working"


@dataclass(frozen=True, eq=True)
class Axis:
    """Fields changed together, with their failing and working values.

    Attributes:
        name: the group's name, a field's name, or ``a+b`` when merged.
        failing: ``{field: value}`` on the failing side (``Config.to_dict``
            values: lists, not tuples).
        working: the same fields' values on the working side.
        merged: why this axis was merged from smaller ones; empty if not.
    """

    name: str
    failing: dict[str, Any]
    working: dict[str, Any]
    merged: str = ""

    def __post_init__(self) -> None:
        if not self.failing or set(self.failing) != set(self.working):
            raise ConfigError(
                f"axis {self.name!r} needs the same non-empty fields on both sides, "
                f"got {sorted(self.failing)} and {sorted(self.working)}")
        unknown = sorted(set(self.failing) - set(field_names()))
        if unknown:
            raise ConfigError(f"axis {self.name!r} has unknown field(s) {unknown}")

    @property
    def fields(self) -> tuple[str, ...]:
        """The axis's fields in declaration order."""
        return tuple(f for f in field_names() if f in self.failing)

    def values(self, side: str) -> dict[str, Any]:
        """The field values on ``side`` (``failing`` or ``working``)."""
        if side not in (FAILING, WORKING):
            raise ConfigError(f"side must be {FAILING!r} or {WORKING!r}, got {side!r}")
        return dict(self.failing if side == FAILING else self.working)

    def apply(self, config: Config, side: str) -> Config:
        """``config`` with this axis set to its ``side`` values."""
        return config.replace(**self.values(side))

    def side_of(self, config: Config) -> str | None:
        """``failing`` or ``working`` if ``config`` holds one side's values."""
        values = {f: config.to_dict()[f] for f in self.failing}
        for side in (FAILING, WORKING):
            if values == _plain(self.values(side)):
                return side
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the ``axes`` entries of ``sweep.json``)."""
        return {"name": self.name, "fields": list(self.fields),
                "failing": _plain(self.failing), "working": _plain(self.working),
                "merged": self.merged}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Axis":
        """Inverse of ``to_dict``."""
        return cls(data["name"], dict(data["failing"]), dict(data["working"]),
                   data.get("merged", ""))


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """Values as ``Config.to_dict`` writes them (tuples become lists)."""
    return json.loads(json.dumps(values))


def excluded_fields(failing: Config, working: Config,
                    include_architecture: bool = False) -> dict[str, tuple[Any, Any]]:
    """Differing fields that are not ablated, as ``{field: (failing, working)}``."""
    skip = RUN_OPTIONS + (() if include_architecture else ARCHITECTURE)
    return {k: v for k, v in failing.diff(working).items() if k in skip}


def axes_between(failing: Config, working: Config,
                 include_architecture: bool = False) -> list[Axis]:
    """The axes on which ``failing`` and ``working`` differ (see the module doc).

    Raises:
        ConfigError: the working config is invalid at the failing
            architecture, or an axis gives an invalid config however merged.

    Examples:
        >>> from tourbillon.config import resolve
        >>> failing = resolve("reference")
        >>> working = failing.replace(optimizer="sgd", lr=0.01, lr_decay=True)
        >>> [(a.name, a.fields) for a in axes_between(failing, working)]
        [('optimizer', ('optimizer', 'lr', 'lr_decay'))]
    """
    skip = RUN_OPTIONS + (() if include_architecture else ARCHITECTURE)
    diff = {k: v for k, v in failing.diff(working).items() if k not in skip}
    axes = _group(diff)
    failing_base, working_base = bases(failing, working, axes)
    return _merge_invalid(axes, failing_base, working_base)


def _group(diff: dict[str, tuple[Any, Any]]) -> list[Axis]:
    """One axis per group with differing fields, then one per remaining field."""
    grouped: dict[str, list[str]] = {}
    for name in field_names():
        if name not in diff:
            continue
        group = next((g for g, members in GROUPS.items() if name in members), name)
        grouped.setdefault(group, []).append(name)
    return [Axis(group if len(names) > 1 else names[0],
                 {n: diff[n][0] for n in names}, {n: diff[n][1] for n in names})
            for group, names in grouped.items()]


def bases(failing: Config, working: Config, axes: list[Axis]) -> tuple[Config, Config]:
    """The failing config and the working one with every non-axis field failing.

    The two results differ exactly on ``axes``: the working side takes the
    failing side's architecture (unless it is an axis) and run options.

    Raises:
        ConfigError: the working config is invalid with those fields.
    """
    changes = {k: v for axis in axes for k, v in axis.working.items()}
    try:
        working_base = failing.replace(**changes)
    except ConfigError as error:
        raise ConfigError(
            f"the working config is invalid with the failing config's "
            f"architecture and run options ({error}); ablate the architecture "
            "too (include_architecture=True) or choose another pair") from None
    return failing, working_base


def _invalid(axis: Axis, failing_base: Config, working_base: Config) -> str | None:
    """Why fixing or breaking ``axis`` alone gives an invalid config, or None."""
    for base, side, verb in ((failing_base, WORKING, "fixing"),
                             (working_base, FAILING, "breaking")):
        try:
            axis.apply(base, side)
        except ConfigError as error:
            return f"{verb} {axis.name} alone is invalid: {error}"
    return None


def _union(axes: list[Axis], reason: str) -> Axis:
    failing = {k: v for a in axes for k, v in a.failing.items()}
    working = {k: v for a in axes for k, v in a.working.items()}
    return Axis("+".join(a.name for a in axes), failing, working, reason)


def _merge_invalid(axes: list[Axis], failing_base: Config,
                   working_base: Config) -> list[Axis]:
    """Merge each axis that cannot change alone with one that makes it valid."""
    axes = list(axes)
    while True:
        problems = {a.name: _invalid(a, failing_base, working_base) for a in axes}
        bad = [a for a in axes if problems[a.name]]
        if not bad:
            return axes
        axis, reason = bad[0], problems[bad[0].name]
        partner = _find_partner(axis, reason, axes, failing_base, working_base)
        group = [axis, partner] if partner is not None else bad
        merged = _union(group, reason)
        if len(group) == 1 or _invalid(merged, failing_base, working_base):
            raise ConfigError(
                f"{reason}; no merge with other axes gives a valid config")
        log.info("merged axes %s: %s", [a.name for a in group], reason)
        at = axes.index(group[0])
        axes = [a for a in axes if a not in group]
        axes.insert(min(at, len(axes)), merged)


def _find_partner(axis: Axis, reason: str, axes: list[Axis], failing_base: Config,
                  working_base: Config) -> Axis | None:
    others = [a for a in axes if a is not axis]
    named = [a for a in others
             if any(re.search(rf"\b{re.escape(f)}\b", reason) for f in a.fields)]
    for other in named + [a for a in others if a not in named]:
        if _invalid(_union([axis, other], reason), failing_base, working_base) is None:
            return other
    return None
