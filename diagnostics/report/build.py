"""Assemble the HTML report and ``findings.json`` from measured inputs.

The report is one self-contained HTML file: every figure is an inline PNG
(``data:`` URI), the style sheet is inline and there is no script. Each
section whose input is absent says ``not measured: <why>``, and a summary at
the top counts and lists everything that was not measured, together with the
recorder's own ``not_measured`` and ``nonfinite`` events.

Example (the test suite builds a full one from real runs)::

    build_report(Path("reports/report.html"),
                 verdict={"verdict": "stalls", "reasons": ["..."]},
                 causes=causes, effects=effects, runs=runs, findings=findings,
                 removed_by=None, run_dirs={"failing": a, "working": b},
                 config_diff=failing.diff(working),
                 environment=environment(sys.argv, seeds=[0, 1]), data=data)
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import logging
import platform
import shlex
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
import torch

from tourbillon.data import Dataset

from .findings_json import (check_cause, check_finding, check_verdict,
                            write_findings_json)
from .sections import (SECTIONS, Page, RecordsLoader, ReportInputs,
                       attribution_item, batch_spread_section, causes_section,
                       config_diff_section, curves_section, environment_section,
                       findings_section, learning_curves_section, load_records_frame,
                       per_run_section, reconstruction_item, recorder_events,
                       verdict_section)

log = logging.getLogger(__name__)


def build_report(out_path: Path, *, verdict: dict[str, Any],
                 causes: list[dict[str, Any]] | None,
                 effects: pd.DataFrame | None, runs: pd.DataFrame | None,
                 findings: list[dict[str, Any]] | None,
                 removed_by: dict[Any, list[str]] | None,
                 run_dirs: dict[str, Path], config_diff: dict[str, Any] | None,
                 environment: dict[str, Any], data: Dataset | None,
                 records_loader: RecordsLoader | None = None,
                 not_checked: list[dict[str, Any]] | None = None) -> Path:
    """Write the HTML report to ``out_path`` and ``findings.json`` next to it.

    Args:
        verdict: ``{"verdict": "stalls" | "learns", "reasons": [str, ...]}``,
            the reasons being the measured statements it was computed from.
        causes: ranked causes (``axis``, ``from``, ``to``, ``metric``,
            ``effect``, ``ci`` as ``[low, high]``, ``rank``); None when no
            ablation ran.
        effects: every effect of the ablation (``axis``, ``from``, ``to``,
            ``metric``, ``effect``, ``ci_low``, ``ci_high``, optional
            ``rank`` and ``design``), drawn as a forest plot; None when absent.
        runs: one row per ablation run (``cell``, ``seed``, ``run_dir`` and
            optionally the final metrics and ``diverged``); learning curves
            are read from each ``run_dir``. None: the labelled runs of
            ``run_dirs`` are the cells.
        findings: the detectors' findings (``rule``, ``run``, ``block``,
            ``half``, ``circulation``, ``step``, ``evidence``, ``message``,
            optional ``title``, ``severity``, ``tags``); None when the
            detectors did not run.
        removed_by: for every finding the ablation checked, the axes whose
            change removed it (an empty list: none did), keyed by
            :func:`finding_key` or by ``(rule, block, half, circulation)``;
            a finding without a key is shown as not checked. None when not
            computed.
        run_dirs: run label (``failing``, ``working``) -> run directory.
        config_diff: ``Config.diff`` of the failing against the working
            config, ``{field: (failing, working)}``; None when absent.
        environment: from :func:`environment`.
        data: the data set of the runs, for reconstructions and attributions;
            None leaves those sections not measured.
        records_loader: ``run_dir -> DataFrame`` of records in long format
            (``step``, ``tag``, ``value``, ``block``, ``half``,
            ``circulation``, ``quantity``); default
            ``diagnostics.records.load_records``.
        not_checked: the detectors' checks that could not run (``rule``,
            ``what``, ``why``), listed as not measured.

    Returns:
        ``out_path``.

    Raises:
        ValueError: a bad verdict, or a cause or finding lacking a key.
    """
    inputs = ReportInputs(
        verdict=verdict, causes=causes, findings=findings, run_dirs=run_dirs,
        environment=environment, effects=effects, runs=runs, removed_by=removed_by,
        config_diff=config_diff, data=data, records_loader=records_loader,
        not_checked=not_checked)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(render_report(inputs), encoding="utf-8")
    write_findings_json(out_path.parent / "findings.json", verdict["verdict"],
                        causes or [], findings or [])
    log.info("report written to %s", out_path)
    return out_path


def render_report(inputs: ReportInputs) -> str:
    """The report's HTML text."""
    check_verdict(inputs.verdict.get("verdict"))
    for i, cause in enumerate(inputs.causes or []):
        check_cause(cause, i)
    for i, finding in enumerate(inputs.findings or []):
        check_finding(finding, i)
    page = Page()
    records = load_records_frame(inputs, page)
    page.sections = {
        "verdict": verdict_section(inputs.verdict),
        "causes": causes_section(inputs, page),
        "findings": findings_section(inputs, records, page),
        "learning_curves": learning_curves_section(inputs, page),
        "batch_spread": batch_spread_section(inputs, records, page),
        "curves": curves_section(records, page),
        "reconstructions": per_run_section(inputs, page, "reconstructions",
                                           reconstruction_item),
        "attributions": per_run_section(inputs, page, "attributions",
                                        attribution_item),
        "config_diff": config_diff_section(inputs, page),
        "environment": environment_section(inputs, page),
    }
    events = recorder_events(inputs, page)
    template = _template()
    return template.render(titles=SECTIONS, s=page.sections,
                           not_measured=page.not_measured, events=events)


def environment(command: Sequence[str], seeds: Sequence[int] | int | None
                ) -> dict[str, Any]:
    """Versions, platform, seeds and command line, for the report's last section."""
    packages = ("torch", "captum", "tensorboard", "numpy", "pandas", "matplotlib",
                "seaborn", "jinja2")
    versions = {}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    if isinstance(seeds, int):
        seeds = [seeds]
    return {
        "command": shlex.join(command),
        "seeds": list(seeds) if seeds is not None else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "torch_cuda_build": torch.version.cuda or "none",
        "cuda_available": torch.cuda.is_available(),
        **versions,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _template() -> jinja2.Template:
    source = (importlib.resources.files(__package__) / "template.html.j2").read_text(
        encoding="utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    return env.from_string(source)
