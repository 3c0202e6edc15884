"""What every rule sees (:class:`RunData`), reports to, and is registered in."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import pandas as pd

from .facts import BlockFacts, ModelFacts
from .finding import Finding, NotChecked
from .series import Persistence, as_series, persistent
from .thresholds import Thresholds

HALF_WORDS = {"enc": "encoder", "dec": "decoder"}

# (block, half, circulation, rest) of one series; rest is e.g. the parameter.
Key = tuple[Any, Any, Any, str]


class RunData:
    """One run's records, facts, metrics and events, grouped for the rules.

    Args:
        records: checked long-format records (see ``series.check_records``).
        run: the run's name.
        facts: static facts of the model, or None.
        metrics: the trainer's per-epoch metrics, or None.
        events: the recorder's event lines, or None when not given.
        thresholds: the limits.
    """

    def __init__(self, records: pd.DataFrame, run: str, facts: ModelFacts | None,
                 metrics: list[dict[str, Any]] | None,
                 events: list[dict[str, Any]] | None,
                 thresholds: Thresholds) -> None:
        self.records = records
        self.run = run
        self.facts = facts
        self.metrics = list(metrics or [])
        self.events = events
        self.thresholds = thresholds
        self._by_quantity = {q: rows for q, rows in records.groupby("quantity")}

    # -- series ----------------------------------------------------------------

    def has(self, quantity: str) -> bool:
        return quantity in self._by_quantity

    def has_prefix(self, prefix: str) -> bool:
        return any(q.startswith(prefix) for q in self._by_quantity)

    def quantities(self) -> list[str]:
        return sorted(self._by_quantity)

    def series(self, quantity: str, block: int | None = None,
               half: str | None = None, circulation: int | None = None
               ) -> pd.Series:
        """Values of one tag by step (empty when not recorded)."""
        rows = self._by_quantity.get(quantity)
        if rows is None:
            return pd.Series(dtype="float64")
        for column, value in (("block", block), ("half", half),
                              ("circulation", circulation)):
            if value is not None:
                rows = rows[rows[column] == value]
        return as_series(rows)

    def groups(self, quantity: str, prefix: bool = False) -> dict[Key, pd.Series]:
        """Every series of ``quantity`` (or of quantities starting with it).

        Keys are ``(block, half, circulation, rest)`` with None for missing
        parts and ``rest`` the quantity's remainder after the prefix (the
        parameter name for ``grad_norm/``).
        """
        names = ([q for q in self._by_quantity if q.startswith(quantity)] if prefix
                 else [quantity] if quantity in self._by_quantity else [])
        result: dict[Key, pd.Series] = {}
        for name in sorted(names):
            rows = self._by_quantity[name]
            for key, part in rows.groupby(["block", "half", "circulation"],
                                          dropna=False):
                block, half, circ = (_plain(v) for v in key)
                result[(block, half, circ, name[len(quantity):])] = as_series(part)
        return result

    def halves(self) -> list[tuple[int, str]]:
        """Every (block, half) that appears in the records or the facts."""
        rows = self.records[self.records["half"].notna()
                            & self.records["block"].notna()]
        found = {(int(b), str(h)) for b, h in
                 rows[["block", "half"]].drop_duplicates().itertuples(index=False)}
        if self.facts is not None:
            found |= {(b.block, h) for b in self.facts.blocks for h in ("enc", "dec")}
        return sorted(found)

    def blocks(self) -> list[int]:
        return sorted({b for b, _ in self.halves()})

    def first_step(self) -> int | None:
        """The first recorded step of the run."""
        return None if self.records.empty else int(self.records["step"].min())

    # -- facts and the recorder's own statements --------------------------------

    def block_facts(self, block: int) -> BlockFacts | None:
        return None if self.facts is None else self.facts.block(block)

    def not_measured(self, *words: str) -> str | None:
        """The recorder's reason for not measuring something named by ``words``."""
        for event in self.events or []:
            if event.get("event") != "not_measured":
                continue
            what = str(event.get("what", ""))
            if all(w in what for w in words):
                return f"the recorder did not measure {what}: {event.get('why')}"
        return None


def _plain(value: Any) -> Any:
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return int(value) if not isinstance(value, str) else value


class Outcome:
    """Collects one rule's findings and unchecked places."""

    def __init__(self, rule: "Rule", run: str) -> None:
        self.rule = rule
        self.run = run
        self.findings: list[Finding] = []
        self.not_checked: list[NotChecked] = []

    def found(self, *, block: int | None, half: str | None,
              circulation: int | None, step: int | None,
              evidence: dict[str, float], message: str) -> None:
        self.findings.append(Finding(
            rule=self.rule.name, run=self.run, block=block, half=half,
            circulation=circulation, step=step,
            evidence={k: _number(v) for k, v in evidence.items()},
            message=message, severity=self.rule.severity, title=self.rule.title))

    def skip(self, what: str, why: str) -> None:
        entry = NotChecked(self.rule.name, what, why)
        if entry not in self.not_checked:
            self.not_checked.append(entry)


def skip_missing_halves(data: RunData, out: Outcome, present: set[tuple[int, str]],
                        quantity: str) -> None:
    """Report every known (block, half) that has no series of ``quantity``."""
    for block, half in data.halves():
        if (block, half) not in present:
            out.skip(f"block{block}/{half}",
                     data.not_measured(f"block{block}", quantity)
                     or f"no {quantity} was recorded for this half (a half that "
                     "never gets a gradient has none: see frozen_weights)")


def hold(data: RunData, out: Outcome, what: str, held: pd.Series
         ) -> Persistence | None:
    """Where ``held`` starts to hold persistently (see :class:`Thresholds`).

    A series with fewer entries than ``persist_steps`` cannot tell: it is
    reported as not checked for ``what``, never read as "does not hold".
    """
    th = data.thresholds
    if len(held) < th.persist_steps:
        out.skip(what, f"{len(held)} recorded step(s) of {what}; persistence "
                 f"needs at least {th.persist_steps}")
        return None
    return persistent(held, th.persist_steps, th.persist_fraction)


def _number(value: Any) -> float | int | None:
    if value is None or isinstance(value, (bool, int)):
        return value
    return float(value)


class Rule:
    """One stall detector: a name, a title, a severity and a check.

    Subclasses set the class attributes and implement :meth:`check`, which
    reports through ``out.found`` and ``out.skip`` (never silently skips).

    Attributes:
        name: short identifier, used in findings.
        title: one line for reports.
        severity: ``error``, ``warning`` or ``info``.
        reads: the tags (and other inputs) the rule reads, for documentation.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    severity: ClassVar[str] = "warning"
    reads: ClassVar[tuple[str, ...]] = ()

    def check(self, data: RunData, out: Outcome) -> None:
        raise NotImplementedError


RULES: dict[str, type[Rule]] = {}


def register(cls: type[Rule]) -> type[Rule]:
    """Class decorator: add a rule to ``RULES`` under its name."""
    if not cls.name or cls.name in RULES:
        raise ValueError(f"rule name {cls.name!r} is empty or taken")
    RULES[cls.name] = cls
    return cls


# -- words for messages --------------------------------------------------------------


def where(block: int | None, half: str | None = None,
          circulation: int | None = None) -> str:
    """``block 0's encoder at circulation 1`` and shorter forms."""
    text = "the run" if block is None else f"block {block}"
    if half is not None:
        text += f"'s {HALF_WORDS.get(half, half)}"
    if circulation is not None:
        text += f" at circulation {circulation}"
    return text


def num(value: float | None) -> str:
    """A number for a message: 3 significant digits, or ``n/a``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3g}"


def pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}%"
