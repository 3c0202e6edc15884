"""The report's sections: each turns inputs into what the template shows.

A section function returns a dict for ``template.html.j2``; a part whose
input is absent becomes ``{"not_measured": why}`` through :meth:`Page.missing`,
which also lists it in the report's "Not measured" summary.
"""

from __future__ import annotations

import json

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tourbillon.data import Dataset

from . import plots
from .attributions import N_STEPS, integrated_gradients
from ..user_model import USER_MODEL
from .runs import RECORDS, circulation_images, load_model, metrics_frame

RecordsLoader = Callable[[Path], pd.DataFrame]

SECTIONS = {
    "not-measured": "Not measured",
    "verdict": "Verdict",
    "causes": "Ranked causes",
    "findings": "Findings",
    "learning-curves": "Learning curves",
    "batch-spread": "Batch spread",
    "curves": "Drift, true error and alignment",
    "reconstructions": "Reconstructions",
    "attributions": "Attributions",
    "config-diff": "Config diff",
    "environment": "Environment",
}
CURVE_QUANTITIES = {
    "drift": "drift: mean squared (output - target) of each rule",
    "true_error": "true error: reconstruction MSE against the block's input",
    "align": "alignment: cosine between the local update and the true gradient",
    "align/weights": "weight alignment: cosine between A and B transposed",
}
LEARNING_METRICS = ("test_recon_mse", "test_accuracy", "probe_accuracy", "train_loss")
RUN_SUMMARY = ("test_recon_mse", "test_accuracy", "probe_accuracy")


@dataclass
class ReportInputs:
    """Everything the report is built from.

    The fields up to ``not_checked`` are the arguments of
    :func:`~diagnostics.report.build.build_report`, documented there. The
    rest size the image sections: ``images`` test examples in each
    reconstruction grid, ``attributed`` examples attributed per run, with
    ``ig_steps`` Gauss-Legendre points for integrated gradients.
    """

    verdict: dict[str, Any]
    causes: list[dict[str, Any]] | None
    findings: list[dict[str, Any]] | None
    run_dirs: dict[str, Path]
    environment: dict[str, Any]
    effects: pd.DataFrame | None = None
    runs: pd.DataFrame | None = None
    removed_by: dict[Any, list[str]] | None = None
    config_diff: dict[str, tuple[Any, Any]] | None = None
    data: Dataset | None = None
    records_loader: RecordsLoader | None = None
    not_checked: list[dict[str, Any]] | None = None
    images: int = 8
    attributed: int = 4
    ig_steps: int = N_STEPS


@dataclass
class Page:
    """What the template receives, plus the list of what was not measured."""

    sections: dict[str, Any] = field(default_factory=dict)
    not_measured: list[tuple[str, str]] = field(default_factory=list)

    def missing(self, section: str, why: str) -> dict[str, str]:
        """Note that part of ``section`` was not measured and return its marker."""
        self.not_measured.append((SECTIONS[section], why))
        return {"not_measured": why}


def finding_key(finding: dict[str, Any]) -> str:
    """The key of ``finding`` in ``removed_by``: ``rule:run:block{k}/half/c{i}``.

    Parts that are None are left out of the location, e.g.
    ``"dead_code:failing:block0/enc/c1"`` or ``"nonfinite:failing:block1"``.
    """
    where = plots.location(finding.get("block"), finding.get("half"),
                           finding.get("circulation"))
    return f"{finding['rule']}:{finding['run']}:{where}"


# -- inputs --------------------------------------------------------------------


def _records_module() -> Any:
    """``diagnostics.records``, or None while it is not installed."""
    try:
        from diagnostics import records
    except ImportError:
        return None
    return records


def load_records_frame(inputs: ReportInputs, page: Page) -> pd.DataFrame | None:
    """All runs' records in long format with a ``run`` column, or None."""
    module = _records_module()
    loader = inputs.records_loader or (module.load_records if module else None)
    frames = []
    for label, run_dir in inputs.run_dirs.items():
        if not (Path(run_dir) / RECORDS).exists():
            page.not_measured.append(
                ("Records", f"run {label!r} has no {RECORDS} in {run_dir}"))
            continue
        if loader is None:
            page.not_measured.append(
                ("Records", f"run {label!r}: diagnostics.records.load_records is not "
                 "available to read its records"))
            continue
        frame = loader(Path(run_dir))
        plots.check_columns(frame, plots.RECORD_COLUMNS, f"records of {label!r}")
        frames.append(frame.assign(run=label))
    return pd.concat(frames, ignore_index=True) if frames else None


def recorder_events(inputs: ReportInputs, page: Page) -> list[dict[str, Any]]:
    """The recorders' ``not_measured`` and ``nonfinite`` events, per run."""
    rows: list[dict[str, Any]] = []
    module = _records_module()
    for label, run_dir in inputs.run_dirs.items():
        if not (Path(run_dir) / RECORDS).exists():
            continue
        if module is None:
            page.not_measured.append(
                ("Records", f"run {label!r}: diagnostics.records.load_events is not "
                 "available to read its events"))
            continue
        for event in module.load_events(Path(run_dir)):
            details = {k: v for k, v in event.items() if k != "event"}
            rows.append({"run": label, "event": event["event"],
                         "details": ", ".join(f"{k}={v}" for k, v in details.items())})
    return rows


def _run_label(run: Any, run_dirs: dict[str, Path]) -> str | None:
    """The label in ``run_dirs`` a finding's ``run`` names (label, path or name)."""
    if run in run_dirs:
        return run
    for label, run_dir in run_dirs.items():
        if str(run) in (str(run_dir), Path(run_dir).name):
            return label
    return None


# -- sections ------------------------------------------------------------------


def verdict_section(verdict: dict[str, Any]) -> dict[str, Any]:
    return {"verdict": verdict["verdict"], "reasons": list(verdict.get("reasons", []))}


def causes_section(inputs: ReportInputs, page: Page) -> dict[str, Any]:
    section: dict[str, Any] = {}
    if inputs.causes is None or (not inputs.causes and inputs.effects is None):
        section["table"] = page.missing("causes", "no ablation was run, so no cause "
                                        "was ranked")
    else:
        section["table"] = _causes_table(inputs.causes)

    effects = inputs.effects
    if effects is None and inputs.causes:
        effects = pd.DataFrame([{**c, "ci_low": c["ci"][0], "ci_high": c["ci"][1]}
                                for c in inputs.causes])
        section["forest_source"] = "the ranked causes (no effects table was given)"
    if effects is None or effects.empty:
        section["forests"] = [page.missing("causes", "no ablation effects to plot")]
        return section
    plots.check_columns(effects, plots.EFFECT_COLUMNS, "effects")
    notes = []
    if "kind" in effects:
        interactions = int((effects["kind"] != "main").sum())
        effects = effects[effects["kind"] == "main"]
        notes.append(f"{interactions} interaction effect(s) are in the effects "
                     "table, not drawn")
    finite = effects["effect"].astype(float).notna()
    if (~finite).any():
        page.missing("causes", f"{int((~finite).sum())} effect(s) are NaN (a cell "
                     "without a finite value, e.g. every seed diverged)")
    section["forests"] = [_forest(rows, metric) for metric, rows in
                          effects[finite].groupby("metric", sort=False)]
    if "design" in effects:
        designs = effects["design"].dropna().unique()
        notes.append(f"designs: {', '.join(map(str, designs))}")
    section["notes"] = notes
    return section


def _causes_table(causes: list[dict[str, Any]]) -> dict[str, Any]:
    """Causes by rank, with ``design`` and ``share_of_gap`` when given."""
    extra = [k for k in ("design", "share_of_gap") if any(k in c for c in causes)]
    rows = []
    for c in sorted(causes, key=lambda c: c["rank"]):
        effect = c["effect"]
        measured = effect is not None and not pd.isna(effect)
        rows.append([c["rank"], c["axis"], _fmt(c["from"]), _fmt(c["to"]),
                     c["metric"], _fmt(effect) if measured else "not measured",
                     _fmt(list(c["ci"])), *(_fmt(c.get(k)) for k in extra)])
    columns = ["rank", "axis", "from", "to", "metric", "effect", "interval", *extra]
    return {"columns": columns, "rows": rows}


def _forest(rows: pd.DataFrame, metric: str) -> dict[str, Any]:
    fig, (ax,) = plots.new_figure(7.5, 0.32 * len(rows) + 1.0)
    plots.plot_effects(rows, ax)
    ax.set_title(str(metric), fontsize=9)
    return {"metric": metric, "image": plots.to_data_uri(fig)}


def findings_section(inputs: ReportInputs, records: pd.DataFrame | None,
              page: Page) -> dict[str, Any]:
    for entry in inputs.not_checked or []:
        page.missing("findings", f"rule {entry['rule']} did not check "
                     f"{entry['what']}: {entry['why']}")
    if inputs.findings is None:
        return page.missing("findings", "the detectors did not run")
    cards = [_finding_card(f, inputs, records, page) for f in inputs.findings]
    return {"cards": cards, "not_checked": len(inputs.not_checked or [])}


def _finding_card(finding: dict[str, Any], inputs: ReportInputs,
                  records: pd.DataFrame | None, page: Page) -> dict[str, Any]:
    key = finding_key(finding)
    card = {
        "key": key,
        "title": finding.get("title") or finding["rule"],
        "rule": finding["rule"],
        "severity": finding.get("severity"),
        "run": finding["run"],
        "where": plots.location(finding["block"], finding["half"],
                                finding["circulation"]),
        "step": finding["step"],
        "evidence": [(k, _fmt(v)) for k, v in finding["evidence"].items()],
        "message": finding["message"],
    }

    # The evidence plot: the finding's tags over steps, in its own run.
    label = _run_label(finding["run"], inputs.run_dirs)
    tags = _finding_tags(finding, records, label)
    if label is None:
        card["plot"] = page.missing("findings", f"{key}: run {finding['run']!r} is "
                                    "not among the report's runs")
    elif not tags:
        card["plot"] = page.missing("findings", f"{key}: no recorded tag matches the "
                                    "finding (it names no tags and no evidence key "
                                    "is a recorded quantity at its location)")
    else:
        rows = records[records["run"] == label]
        fig, (ax,) = plots.new_figure(5.0, 2.4)
        step = finding["step"]
        plots.plot_tags_over_steps(rows, tags, ax, mark_step=step)
        card["plot"] = {"image": plots.to_data_uri(fig), "tags": tags}

    # Which axis change removed it in the ablation.
    axes = _removed_by(inputs.removed_by, finding)
    if inputs.removed_by is None:
        card["removed_by"] = page.missing("findings", f"{key}: which ablation axis "
                                          "removes it was not computed")
    elif axes is None:
        card["removed_by"] = page.missing("findings", f"{key}: the ablation did not "
                                          "check this finding")
    else:
        card["removed_by"] = {"axes": list(axes)}
    return card


def _removed_by(removed_by: dict[Any, list[str]] | None,
                finding: dict[str, Any]) -> list[str] | None:
    """The axes that removed ``finding``; None when it was not checked.

    Keys are :func:`finding_key` strings or, run-agnostic, the tuples
    ``(rule, block, half, circulation)``.
    """
    if removed_by is None:
        return None
    where = tuple(finding.get(k) for k in ("rule", "block", "half", "circulation"))
    for key in (finding_key(finding), where):
        if key in removed_by:
            return removed_by[key]
    return None


def _finding_tags(finding: dict[str, Any], records: pd.DataFrame | None,
                  label: str | None) -> list[str]:
    """Tags the finding is about: its ``tags``, else evidence keys found in the
    records (as tags, or as quantities at the finding's location)."""
    if records is None or label is None:
        return []
    rows = records[records["run"] == label]
    recorded = set(rows["tag"])
    named = finding.get("tags") or ([finding["tag"]] if finding.get("tag") else [])
    if named:
        return [t for t in named if t in recorded]
    evidence = set(finding["evidence"])
    tags = [t for t in evidence if t in recorded]
    at = rows["quantity"].isin(evidence).to_numpy(bool)
    for column in ("block", "half", "circulation"):
        if finding.get(column) is not None:
            at = at & (rows[column] == finding[column]).fillna(False).to_numpy(bool)
    return sorted(set(tags) | set(rows.loc[at, "tag"]))


def learning_curves_section(inputs: ReportInputs, page: Page) -> dict[str, Any]:
    section: dict[str, Any] = {}
    if inputs.runs is not None:
        plots.check_columns(inputs.runs, ("cell", "seed", "run_dir"), "runs")
        keys = [str(i) for i in range(len(inputs.runs))]
        dirs = dict(zip(keys, map(Path, inputs.runs["run_dir"])))
        cells = dict(zip(keys, inputs.runs["cell"].astype(str)))
        seeds = dict(zip(keys, inputs.runs["seed"]))
        section["source"] = f"{len(keys)} ablation runs"
        section["summary"] = _run_summary(inputs.runs)
    else:
        dirs, cells, seeds = dict(inputs.run_dirs), None, None
        page.not_measured.append((SECTIONS["learning-curves"], "no ablation runs: "
                                  "the curves show only the labelled runs"))
        section["source"] = "the labelled runs (no ablation runs were given)"
    metrics = metrics_frame(dirs, cells, seeds)
    if metrics.empty:
        section["plot"] = page.missing("learning-curves", "no run has metrics.jsonl")
        return section
    drawn = [m for m in LEARNING_METRICS
             if m in metrics and metrics[m].notna().any()]
    for m in LEARNING_METRICS:
        if m not in drawn:
            page.missing("learning-curves", f"no run reports {m}")
    # Tall enough for one legend line per cell (a full design has ~30).
    height = max(2.8, 0.17 * metrics["cell"].nunique() + 1.0)
    fig, axes = plots.new_figure(3.6 * len(drawn), height, ncols=len(drawn))
    for ax, metric in zip(axes, drawn):
        plots.plot_learning_curve(metrics, metric, ax)
    section["plot"] = {"image": plots.to_data_uri(fig)}
    return section


def _run_summary(runs: pd.DataFrame) -> dict[str, Any]:
    """Per cell: runs, mean of each final metric, diverged runs."""
    present = [m for m in RUN_SUMMARY if m in runs]
    table = runs.groupby("cell", sort=False).agg(
        runs=("seed", "size"), **{m: (m, "mean") for m in present})
    if "diverged" in runs:
        table["diverged"] = runs.groupby("cell", sort=False)["diverged"].sum()
    table = table.reset_index()
    return {"columns": list(table.columns),
            "rows": [[_fmt(v) for v in row] for row in table.itertuples(index=False)]}


def batch_spread_section(inputs: ReportInputs, records: pd.DataFrame | None,
                  page: Page) -> dict[str, Any]:
    items = []
    for label in inputs.run_dirs:
        rows = None if records is None else records[records["run"] == label]
        table = pd.DataFrame() if rows is None else plots.batch_spread_table(rows)
        if table.empty:
            items.append({"run": label, **page.missing(
                "batch-spread", f"run {label!r} recorded no batch_std")})
            continue
        fig, (ax,) = plots.new_figure(9.0, 0.3 * len(table) + 1.6)
        plots.plot_batch_spread(table, ax)
        ax.set_title(f"{label}: batch_std per block/half/circulation", fontsize=9)
        items.append({"run": label, "image": plots.to_data_uri(fig)})
    return {"entries": items}


def curves_section(records: pd.DataFrame | None, page: Page) -> dict[str, Any]:
    items = []
    for quantity, caption in CURVE_QUANTITIES.items():
        rows = None if records is None else records[records["quantity"] == quantity]
        if rows is None or rows.empty:
            items.append({"caption": caption, **page.missing(
                "curves", f"no run recorded {quantity}")})
            continue
        fig, (ax,) = plots.new_figure(7.0, 2.8)
        plots.plot_quantity_curves(rows, quantity, ax)
        items.append({"caption": caption, "image": plots.to_data_uri(fig)})
    return {"entries": items}


def per_run_section(inputs: ReportInputs, page: Page, section: str,
             make: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """One item per labelled run from ``make(label, model, info, inputs, page)``."""
    items = []
    for label, run_dir in inputs.run_dirs.items():
        user = Path(run_dir) / USER_MODEL
        loaded = None if user.exists() else load_model(Path(run_dir))
        if user.exists():
            spec = json.loads(user.read_text()).get("factory")
            why = (f"run {label!r} is the user model {spec}; this section walks a "
                   "Tourbillon stack's loop, which a user model need not expose")
        elif loaded is None:
            why = f"run {label!r} has no checkpoint.pt in {run_dir}"
        elif inputs.data is None:
            why = f"run {label!r}: no data set was given"
        else:
            items.append({"run": label, **make(label, *loaded, inputs, page)})
            continue
        items.append({"run": label, **page.missing(section, why)})
    return {"entries": items}


def _test_batch(model: Any, data: Dataset, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` test examples, shaped as the model's input."""
    x = data.x_test[:n].reshape(-1, *model.input_shape)  # (n, *input_shape)
    return x, data.y_test[:n]


def reconstruction_item(label: str, model: Any, info: dict[str, Any],
                    inputs: ReportInputs, page: Page) -> dict[str, Any]:
    if not len(model.blocks):
        return page.missing("reconstructions", f"run {label!r}: the model has no block")
    x, _ = _test_batch(model, inputs.data, inputs.images)
    images = circulation_images(model, x, inputs.data.image_shape)
    R, N, C, H, W = images.shape
    labels = ["input"] + [f"c{i}" for i in range(R - 1)]
    fig, (ax,) = plots.new_figure(0.75 * N + 0.8, 0.75 * R + 0.3)
    plots.plot_image_grid(images, labels, ax)
    ax.set_title(f"{label}: {info['config'].get('name')}, step {info.get('step')}",
                 fontsize=9)
    clipped = float(np.mean((images[1:] < 0) | (images[1:] > 1))) if R > 1 else 0.0
    return {"image": plots.to_data_uri(fig), "clipped": _fmt(clipped)}


def attribution_item(label: str, model: Any, info: dict[str, Any],
                 inputs: ReportInputs, page: Page) -> dict[str, Any]:
    if model.head is None:
        return page.missing("attributions", f"run {label!r}: the model has no head")
    if not info.get("head_trained", True):
        return page.missing("attributions", f"run {label!r}: the head was not trained "
                            "when the checkpoint was written")
    x, y = _test_batch(model, inputs.data, inputs.attributed)
    result = integrated_gradients(model, x, y, n_steps=inputs.ig_steps)
    N = x.shape[0]
    C, H, W = inputs.data.image_shape
    images = x.reshape(N, C, H, W).mean(1).numpy()  # (N, H, W)
    maps = result.attributions.reshape(N, C, H, W).sum(1).numpy()  # (N, H, W)
    fig, axes = plots.new_figure(1.6 * N, 1.9, ncols=N)
    rows = []
    for i, ax in enumerate(axes):
        label_i, predicted = int(y[i]), int(result.predicted[i])
        change = float(result.score[i] - result.baseline_score[i])
        delta = float(result.delta[i])
        title = f"label {label_i}, pred {predicted}\n\u0394={delta:.1e}"
        plots.plot_attribution(images[i], maps[i], title, ax)
        rows.append([i, label_i, predicted, _fmt(change),
                     _fmt(float(result.attributions[i].sum())), _fmt(delta)])
    return {"image": plots.to_data_uri(fig), "rows": rows, "n_steps": result.n_steps,
            "max_delta": _fmt(float(result.delta.abs().max()))}


def config_diff_section(inputs: ReportInputs, page: Page) -> dict[str, Any]:
    if inputs.config_diff is None:
        return page.missing("config-diff", "no config diff was given")
    rows = [(k, _fmt(a), _fmt(b)) for k, (a, b) in inputs.config_diff.items()]
    return {"rows": rows}


def environment_section(inputs: ReportInputs, page: Page) -> dict[str, Any]:
    if not inputs.environment:
        return page.missing("environment", "no environment was given")
    return {"rows": [(k, _fmt(v)) for k, v in inputs.environment.items()]}


def _fmt(value: Any) -> str:
    """A short text form of a number, list or other value for tables."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    return str(value)
