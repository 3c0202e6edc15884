"""``findings.json``: the verdict, the ranked causes and the findings, checked.

Format (one JSON object)::

    {"verdict": "stalls" | "learns",
     "causes": [{"axis", "from", "to", "metric", "effect", "ci": [low, high],
                 "rank"}, ...],
     "findings": [{"rule", "run", "block", "half", "circulation", "step",
                   "evidence": {name: number}, "message",
                   optional "title", "severity", "tags"}, ...]}

JSON has no NaN or infinity: non-finite evidence values are written as the
strings ``"nan"``, ``"inf"`` and ``"-inf"``.
"""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path
from typing import Any

VERDICTS = ("stalls", "learns")
CAUSE_KEYS = ("axis", "from", "to", "metric", "effect", "ci", "rank")
FINDING_KEYS = ("rule", "run", "block", "half", "circulation", "step", "evidence",
                "message")
FINDING_OPTIONAL = ("title", "severity", "tags")


def check_verdict(verdict: str) -> None:
    """Raise ValueError unless ``verdict`` is one of ``VERDICTS``."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")


def check_cause(cause: dict[str, Any], index: int) -> None:
    """Raise ValueError unless ``cause`` has every key of ``CAUSE_KEYS``."""
    _require(cause, CAUSE_KEYS, f"cause {index}")
    ci = cause["ci"]
    if not isinstance(ci, (list, tuple)) or len(ci) != 2:
        raise ValueError(f"cause {index}: ci must be [low, high], got {ci!r}")


def check_finding(finding: dict[str, Any], index: int) -> None:
    """Raise ValueError unless ``finding`` has every key of ``FINDING_KEYS``."""
    _require(finding, FINDING_KEYS, f"finding {index}")
    evidence = finding["evidence"]
    if not isinstance(evidence, dict):
        raise ValueError(f"finding {index}: evidence must be a dict of numbers, "
                         f"got {type(evidence).__name__}")
    for name, value in evidence.items():
        if value is not None and not isinstance(value, numbers.Real):
            raise ValueError(f"finding {index}: evidence {name!r} is not a number "
                             f"({value!r})")


def _require(entry: dict[str, Any], keys: tuple[str, ...], what: str) -> None:
    if not isinstance(entry, dict):
        raise ValueError(f"{what} must be a dict, got {type(entry).__name__}")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise ValueError(f"{what} lacks {missing}; it has {sorted(entry)}")


def write_findings_json(path: Path, verdict: str, causes: list[dict[str, Any]],
                        findings: list[dict[str, Any]]) -> Path:
    """Check and write ``findings.json`` (see the module docstring for the format).

    Raises:
        ValueError: a bad verdict, or a cause or finding lacking a key.
    """
    check_verdict(verdict)
    for i, cause in enumerate(causes):
        check_cause(cause, i)
    for i, finding in enumerate(findings):
        check_finding(finding, i)
    document = {
        "verdict": verdict,
        "causes": [{k: _plain(c[k]) for k in CAUSE_KEYS} for c in causes],
        "findings": [
            {k: _plain(f[k]) for k in (*FINDING_KEYS, *FINDING_OPTIONAL) if k in f}
            for f in findings
        ],
    }
    path = Path(path)
    path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    return path


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars, tuples and non-finite floats made JSON-safe."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        return number if math.isfinite(number) else str(number)
    return str(value)
