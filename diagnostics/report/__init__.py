"""The HTML report: verdict, ranked causes, findings and the figures behind them.

:func:`build_report` writes one self-contained HTML file and ``findings.json``
next to it; :func:`environment` collects versions, seeds and the command line.
"""

from .build import build_report, environment, render_report
from .findings_json import write_findings_json
from .sections import ReportInputs, finding_key

__all__ = [
    "ReportInputs",
    "build_report",
    "environment",
    "finding_key",
    "render_report",
    "write_findings_json",
]
