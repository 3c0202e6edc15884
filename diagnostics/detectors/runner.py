"""Run the rules on one run's records: :func:`detect` and :func:`detect_run`."""

from __future__ import annotations

import dataclasses
import logging
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from . import rules as _rules  # noqa: F401  (registers every rule)
from .base import RULES, Outcome, Rule, RunData
from .facts import FACTS, ModelFacts
from .finding import DetectionResult, Finding
from .series import check_records
from .thresholds import Thresholds

log = logging.getLogger(__name__)


def detect(records: pd.DataFrame, *, run: str, facts: ModelFacts | None = None,
           metrics: list[dict[str, Any]] | None = None,
           events: list[dict[str, Any]] | None = None,
           thresholds: Thresholds = Thresholds(),
           rules: Iterable[str] | None = None) -> DetectionResult:
    """Every rule (or those named in ``rules``) on one run's records.

    Args:
        records: long format, one row per (step, tag) with columns ``step``,
            ``epoch``, ``tag``, ``value``, ``block``, ``half``,
            ``circulation``, ``quantity`` (``diagnostics.records.load_records``).
        run: the run's name, copied into each finding.
        facts: static facts of the model (:func:`facts_from_model`); rules
            that need them report the places they could not check.
        metrics: the trainer's per-epoch metrics (``metrics.jsonl``).
        events: the recorder's event lines (``nonfinite``, ``not_measured``).
        thresholds: the limits (see :class:`Thresholds` for the defaults).
        rules: names of the rules to run; all by default.

    Returns:
        Findings sorted by severity then step, and what was not checked.
        A rule that raises is reported as not checked (and warned about).
    """
    selected = _select(rules)
    data = RunData(check_records(records), run, facts, metrics, events, thresholds)
    result = DetectionResult(run, not_measured=[
        e for e in events or [] if e.get("event") == "not_measured"])
    for rule in selected:
        out = Outcome(rule, run)
        try:
            rule.check(data, out)
        except Exception as error:  # a broken rule must not hide the others
            message = f"rule {rule.name} failed on run {run}: {error!r}"
            log.exception(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            out.skip("all", f"the rule raised {error!r}")
        recorded = set(data.records["tag"]) if "tag" in data.records else set()
        result.findings.extend(with_tags(f, rule, recorded) for f in out.findings)
        result.not_checked.extend(out.not_checked)
    result.findings.sort(key=lambda f: f.sort_key())
    if result.not_checked:
        log.info("%s: %d place(s) not checked", run, len(result.not_checked))
    return result


def detect_run(run_dir: str | Path, *, facts: ModelFacts | None = None,
               thresholds: Thresholds = Thresholds(),
               rules: Iterable[str] | None = None) -> DetectionResult:
    """:func:`detect` on a run directory.

    Reads ``records.jsonl`` (records and events), ``metrics.jsonl`` when
    present and ``facts.json`` unless ``facts`` is given. The run's name is
    the directory's name.
    """
    from tourbillon.train import read_metrics

    from ..records import load_events, load_records

    run_dir = Path(run_dir)
    if facts is None and (run_dir / FACTS).exists():
        facts = ModelFacts.load(run_dir / FACTS)
    return detect(load_records(run_dir), run=run_dir.name, facts=facts,
                  metrics=read_metrics(run_dir), events=load_events(run_dir),
                  thresholds=thresholds, rules=rules)


def tag_pattern(read: str, finding: Finding) -> re.Pattern | None:
    """A rule's ``reads`` entry as a regex at the finding's place, or None
    when it names no recorded tag (facts, metrics, events)."""
    read = read.split(" ")[0]
    if not (read.startswith("block") or read.startswith("train/")):
        return None
    place = {"k": finding.block, "half": finding.half, "i": finding.circulation,
             "t": finding.circulation}
    parts = re.split(r"(\{[^}]*\})", read)
    regex = ""
    for part in parts:
        if not (part.startswith("{") and part.endswith("}")):
            regex += re.escape(part)
            continue
        name = part[1:-1]
        if "," in name:
            regex += "(" + "|".join(map(re.escape, name.split(","))) + ")"
        elif place.get(name) is not None:
            regex += re.escape(str(place[name]))
        else:
            regex += "[^/]+"
    return re.compile(regex + "$")


def with_tags(finding: Finding, rule: Rule, recorded: set[str]) -> Finding:
    """``finding`` with the recorded tags its rule reads at its place."""
    patterns = [p for p in (tag_pattern(r, finding) for r in rule.reads) if p]
    tags = sorted(t for t in recorded if any(p.match(t) for p in patterns))
    return dataclasses.replace(finding, tags=tuple(tags))


def _select(names: Iterable[str] | None) -> list[Rule]:
    if names is None:
        return [cls() for cls in RULES.values()]
    names = list(names)
    unknown = [n for n in names if n not in RULES]
    if unknown:
        raise ValueError(f"unknown rule(s) {unknown}; known: {', '.join(RULES)}")
    return [RULES[n]() for n in names]
