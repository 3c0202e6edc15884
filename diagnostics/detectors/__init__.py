"""Stall detectors: rules that read recorded quantities and report findings.

Each rule is one small class in :mod:`diagnostics.detectors.rules`,
registered in ``RULES``; :func:`detect` runs them on a run's long-format
records and :func:`detect_run` on a run directory. Thresholds live in one
frozen :class:`Thresholds`; static model facts (output ranges, targets,
observed inputs) in :class:`ModelFacts`.

Example, on a run directory recorded by ``diagnostics.recorder`` (with
``facts_from_model(model, x).save(run_dir)`` done before training)::

    from diagnostics.detectors import Thresholds, detect_run

    result = detect_run(run_dir, thresholds=Thresholds(collapse_ratio=0.1))
    for finding in result.findings:
        print(finding.severity, finding.rule, finding.block, finding.half,
              finding.circulation, finding.step)
    for item in result.not_checked:
        print("not checked:", item.rule, item.what, item.why)
"""

from .base import RULES, Rule
from .facts import BlockFacts, ModelFacts, facts_from_model, output_range
from .finding import DetectionResult, Finding, NotChecked
from .runner import detect, detect_run
from .thresholds import Thresholds

__all__ = ["RULES", "BlockFacts", "DetectionResult", "Finding", "ModelFacts",
           "NotChecked", "Rule", "Thresholds", "detect", "detect_run",
           "facts_from_model", "output_range"]
