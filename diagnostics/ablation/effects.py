"""Effects of axes on the final metrics, with bootstrap confidence intervals.

Every effect is a linear contrast of *cell means*, a cell mean being the
mean of a metric over the seeds of one cell:

- screening fix of axis a: mean(failing with a fixed) - mean(failing);
- screening break of axis a: mean(working with a broken) - mean(working);
- factorial main effect of axis a at level v (``working`` in an ablation, a
  grid value otherwise): the mean over the cells with a = v minus the mean
  over the cells with a at its reference level (``failing``, or the base
  config's value in a grid). The design is a full crossing, so these are
  the usual marginal means;
- two-way interaction of a at v and b at u: half of [(effect of a at v
  where b = u) - (effect of a at v where b is at its reference)], the
  usual 2^k definition: positive when fixing both does more than the sum
  of fixing each.

Confidence intervals are percentile bootstraps: each resample draws, for
every cell in turn, as many seeds as the cell has, with replacement, from a
``numpy`` generator seeded with ``seed`` (default 2000 resamples, 95%).
Limits: with three seeds a cell has only ten distinct resamples and the
percentile interval is narrower than the true one (it ignores the
``(n - 1) / n`` shrinkage of the resampled variance); read the intervals as
rough. Runs with a missing or non-finite metric (diverged runs) are left
out of that metric's cell and counted in ``n_missing``; a contrast that
needs a cell without any finite value is NaN.

Columns of the effects table (``effects.csv``), one row per effect and
metric: ``design`` (``screening-fix``, ``screening-break``, ``factorial``
or ``grid``), ``kind`` (``main`` or ``interaction``), ``axis`` (``a`` or
``a:b``), ``from`` and ``to`` (JSON of the fields' values), ``metric``,
``effect``, ``ci_low``, ``ci_high``, ``standardised`` (effect over the
pooled within-cell standard deviation of the design's cells),
``share_of_gap`` (see below), ``rank``, ``n_runs``, ``n_missing``.

Ranking rule, ablation. The *ranking metric* is the one whose failing and
working baselines (screening cells) differ by the most pooled seed standard
deviations, ``|mean_w - mean_f| / sqrt((var_f + var_w) / 2)``; ties, and
metrics with fewer than two finite seeds per baseline, are ordered by the
relative gap ``|mean_w - mean_f| / max(|mean_f|, |mean_w|)``. An effect's
``share_of_gap`` is the part of that failing-to-working gap it accounts for:
``effect / gap`` when ``to`` is the working value (fixes, factorial),
``-effect / gap`` for breaks; 1 means the axis alone explains the whole
difference, a negative share means it moves the other way. Within each
design, kind and metric, ``rank`` 1 is the largest share. The causes are
every axis, scored by the share of its factorial main effect if it was in
the factorial, else by the share of its screening fix, on the ranking
metric, largest first. Interactions are in the effects table, not in the
causes.

Ranking rule, grid. Without a failing and a working side, ``rank`` orders
by ``|standardised|``; the ranking metric is the one with the largest
``|standardised|`` main effect, and the causes are the main effects on it.
"""

from __future__ import annotations

import itertools
import json
import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from tourbillon.errors import ConfigError

from .axes import FAILING, WORKING, Axis
from .design import AXIS_PREFIX

RESAMPLES = 2000
LEVEL = 0.95
EFFECT_COLUMNS: tuple[str, ...] = (
    "design", "kind", "axis", "from", "to", "metric", "effect", "ci_low", "ci_high",
    "standardised", "share_of_gap", "rank", "n_runs", "n_missing",
)


def bootstrap_contrasts(cells: Sequence[np.ndarray], weights: np.ndarray, *,
                        resamples: int = RESAMPLES, seed: int = 0,
                        level: float = LEVEL
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear contrasts of cell means with percentile bootstrap intervals.

    Args:
        cells: C arrays of finite values, one per cell (its seeds).
        weights: ``(K, C)``: contrast k is ``sum_c weights[k, c] * mean_c``.
        resamples: bootstrap resamples.
        seed: seeds the resampling.
        level: coverage of the interval.

    Returns:
        ``(estimate, low, high)``, each ``(K,)``; NaN where a contrast needs a
        cell without values.

    Examples:
        >>> cells = [np.array([1.0, 1.2, 0.8]), np.array([2.0, 2.1, 1.9])]
        >>> estimate, low, high = bootstrap_contrasts(cells, np.array([[-1.0, 1.0]]))
        >>> round(float(estimate[0]), 6), bool(low[0] <= 1.0 <= high[0])
        (1.0, True)
    """
    W = np.asarray(weights, dtype=float)
    K, C = W.shape
    if C != len(cells):
        raise ValueError(f"weights have {C} columns but there are {len(cells)} cells")
    if resamples < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"need resamples >= 1 and 0 < level < 1, "
                         f"got {resamples} and {level}")
    rng = np.random.default_rng(seed)

    # Cell means and their resampled means, (C,) and (B, C).
    means = np.full(C, np.nan)
    draws = np.full((resamples, C), np.nan)
    for c, values in enumerate(cells):
        values = np.asarray(values, dtype=float)
        if values.size == 0:
            continue
        if not np.isfinite(values).all():
            raise ValueError(f"cell {c} has non-finite values; drop them first")
        means[c] = values.mean()
        index = rng.integers(0, values.size, size=(resamples, values.size))
        draws[:, c] = values[index].mean(axis=1)  # (B,)

    # Contrasts; those touching an empty cell are NaN.
    missing = ((W != 0) & np.isnan(means)[None, :]).any(axis=1)  # (K,)
    estimate = np.nan_to_num(means) @ W.T  # (K,)
    boot = np.nan_to_num(draws) @ W.T  # (B, K)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(boot, [tail, 100 - tail], axis=0)  # (K,) each
    for a in (estimate, low, high):
        a[missing] = np.nan
    return estimate, low, high


def _finite(runs: pd.DataFrame, metric: str) -> tuple[np.ndarray, int]:
    values = pd.to_numeric(runs[metric], errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(values)
    return values[ok], int((~ok).sum())


def _pooled_sd(cells: Sequence[np.ndarray]) -> float:
    variances = [np.var(v, ddof=1) for v in cells if len(v) >= 2]
    return math.sqrt(float(np.mean(variances))) if variances else math.nan


def _rows(design: str, kind: str, names: list[str], ends: list[tuple[dict, dict]],
          weights: np.ndarray, cells: list[pd.DataFrame], metrics: Sequence[str],
          resamples: int, seed: int, level: float) -> list[dict[str, Any]]:
    """Effect rows of the contrasts ``weights`` over ``cells`` for each metric."""
    rows = []
    for metric in metrics:
        finite = [_finite(c, metric) for c in cells]
        values = [v for v, _ in finite]
        estimate, low, high = bootstrap_contrasts(values, weights, resamples=resamples,
                                                  seed=seed, level=level)
        sd = _pooled_sd(values)
        for k, (name, (start, end)) in enumerate(zip(names, ends)):
            used = weights[k] != 0
            rows.append({
                "design": design, "kind": kind, "axis": name,
                "from": json.dumps(start), "to": json.dumps(end), "metric": metric,
                "effect": estimate[k], "ci_low": low[k], "ci_high": high[k],
                "standardised": estimate[k] / sd if sd > 0 else math.nan,
                "share_of_gap": math.nan, "rank": pd.NA,
                "n_runs": sum(len(values[c]) for c in np.flatnonzero(used)),
                "n_missing": sum(finite[c][1] for c in np.flatnonzero(used)),
            })
    return rows


def _table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=list(EFFECT_COLUMNS))
    return table.astype({"rank": "Int64", "n_runs": "int64", "n_missing": "int64"})


def select_runs(runs: pd.DataFrame, settings: dict[str, str]) -> pd.DataFrame:
    """The runs whose setting columns have the given levels."""
    mask = np.ones(len(runs), dtype=bool)
    for column, level in settings.items():
        mask &= (runs[column] == level).to_numpy()
    return runs[mask]


def screening_effects(runs: pd.DataFrame, axes: list[Axis], metrics: Sequence[str], *,
                      resamples: int = RESAMPLES, seed: int = 0,
                      level: float = LEVEL) -> pd.DataFrame:
    """Each axis's single fix and single break effect (see the module doc).

    ``runs`` has one ``axis:<name>`` column per axis and one per metric.
    """
    columns = [AXIS_PREFIX + a.name for a in axes]
    frames = []
    for design, base, other in (("screening-fix", FAILING, WORKING),
                                ("screening-break", WORKING, FAILING)):
        start = select_runs(runs, {c: base for c in columns})
        ends = [select_runs(runs, {**{c: base for c in columns}, col: other})
                for col in columns]
        cells = [start] + ends
        weights = np.zeros((len(axes), len(cells)))  # (K, C)
        weights[:, 0] = -1.0
        weights[np.arange(len(axes)), np.arange(1, len(cells))] = 1.0
        pairs = [(a.values(base), a.values(other)) for a in axes]
        frames.append(_rows(design, "main", [a.name for a in axes], pairs, weights,
                            cells, metrics, resamples, seed, level))
    return _table(frames[0] + frames[1])


def factorial_effects(runs: pd.DataFrame, factors: dict[str, dict[str, dict]],
                      reference: dict[str, str], metrics: Sequence[str], *,
                      design: str = "factorial", resamples: int = RESAMPLES,
                      seed: int = 0, level: float = LEVEL) -> pd.DataFrame:
    """Main effects and two-way interactions of a full crossing.

    Args:
        runs: one row per run with a column per factor (its level) and per
            metric; exactly the runs of the crossing.
        factors: ``{column: {level: {field: value}}}`` for every factor.
        reference: ``{column: level}`` that the effects are measured from.
        metrics: metric columns.
        design: the ``design`` column of the rows.

    Raises:
        ConfigError: a combination of levels has no run.
    """
    names = list(factors)
    combos = list(itertools.product(*(list(factors[f]) for f in names)))
    cells = [select_runs(runs, dict(zip(names, combo))) for combo in combos]
    absent = [dict(zip(names, c)) for c, cell in zip(combos, cells) if cell.empty]
    if absent:
        raise ConfigError(f"the {design} design lacks runs for {absent[:3]}")
    levels = np.array(combos, dtype=object).reshape(len(combos), len(names))  # (C, F)

    def mean_over(conditions: dict[int, str]) -> np.ndarray:
        mask = np.ones(len(combos), dtype=bool)
        for j, value in conditions.items():
            mask &= levels[:, j] == value
        return mask / mask.sum()  # (C,)

    # Main effects: every non-reference level against the reference.
    rows, weights, labels, ends = [], [], [], []
    for j, f in enumerate(names):
        ref = reference[f]
        for v in factors[f]:
            if v != ref:
                weights.append(mean_over({j: v}) - mean_over({j: ref}))
                labels.append(_short(f))
                ends.append((factors[f][ref], factors[f][v]))
    if weights:
        rows += _rows(design, "main", labels, ends, np.array(weights), cells, metrics,
                      resamples, seed, level)

    # Two-way interactions of every pair of non-reference levels.
    weights, labels, ends = [], [], []
    for (i, f), (j, g) in itertools.combinations(enumerate(names), 2):
        rf, rg = reference[f], reference[g]
        for v, u in itertools.product(factors[f], factors[g]):
            if v == rf or u == rg:
                continue
            w = (mean_over({i: v, j: u}) - mean_over({i: rf, j: u})
                 - mean_over({i: v, j: rg}) + mean_over({i: rf, j: rg})) / 2
            weights.append(w)
            labels.append(f"{_short(f)}:{_short(g)}")
            ends.append(({**factors[f][rf], **factors[g][rg]},
                         {**factors[f][v], **factors[g][u]}))
    if weights:
        rows += _rows(design, "interaction", labels, ends, np.array(weights), cells,
                      metrics, resamples, seed, level)
    return _table(rows)


def _short(column: str) -> str:
    return column.removeprefix(AXIS_PREFIX)


# -- baselines, ranking and causes ---------------------------------------------------


def baselines(runs: pd.DataFrame, axes: list[Axis],
              metrics: Sequence[str]) -> dict[str, dict[str, float]]:
    """Failing and working baseline means, gap and separation per metric."""
    columns = [AXIS_PREFIX + a.name for a in axes]
    failing = select_runs(runs, {c: FAILING for c in columns})
    working = select_runs(runs, {c: WORKING for c in columns})
    out = {}
    for metric in metrics:
        f, _ = _finite(failing, metric)
        w, _ = _finite(working, metric)
        mf = float(f.mean()) if f.size else math.nan
        mw = float(w.mean()) if w.size else math.nan
        gap = mw - mf
        sd = math.sqrt((np.var(f, ddof=1) + np.var(w, ddof=1)) / 2) \
            if f.size >= 2 and w.size >= 2 else math.nan
        separation = abs(gap) / sd if sd > 0 else (math.inf if gap and sd == 0
                                                   else math.nan)
        scale = max(abs(mf), abs(mw))
        out[metric] = {"failing": mf, "working": mw, "gap": gap,
                       "separation": separation,
                       "relative_gap": abs(gap) / scale if scale > 0 else math.nan}
    return out


def ranking_metric(base: dict[str, dict[str, float]]) -> str | None:
    """The metric that separates failing from working most clearly, or None."""
    usable = [m for m, b in base.items() if math.isfinite(b["gap"]) and b["gap"] != 0]
    if not usable:
        return None

    def key(m: str) -> tuple[float, float]:
        s, r = base[m]["separation"], base[m]["relative_gap"]
        return (s if not math.isnan(s) else -1.0, r if not math.isnan(r) else -1.0)

    return max(usable, key=key)


def add_shares(effects: pd.DataFrame, base: dict[str, dict[str, float]],
               axes: list[Axis]) -> pd.DataFrame:
    """Fill ``share_of_gap``: the part of each metric's gap an effect accounts for."""
    effects = effects.copy()
    working = {a.name: json.dumps(a.values(WORKING)) for a in axes}
    for i, row in effects.iterrows():
        gap = base.get(row["metric"], {}).get("gap", math.nan)
        if not math.isfinite(gap) or gap == 0:
            continue
        toward = row["design"] != "screening-break"
        if row["kind"] == "main" and row["axis"] in working:
            toward = row["to"] == working[row["axis"]]
        effects.at[i, "share_of_gap"] = (1 if toward else -1) * row["effect"] / gap
    return effects


def add_ranks(effects: pd.DataFrame) -> pd.DataFrame:
    """Fill ``rank`` within each design, kind and metric (see the module doc)."""
    effects = effects.copy()
    for _, group in effects.groupby(["design", "kind", "metric"], sort=False):
        share = group["share_of_gap"].astype(float)
        if share.notna().any():
            score = share
        else:
            score = group["standardised"].astype(float).abs()
            score = score.where(score.notna(), group["effect"].astype(float).abs())
        order = score.rank(ascending=False, method="first", na_option="keep")
        effects.loc[group.index, "rank"] = order.astype("Int64")
    return effects


def _cause(row: pd.Series, rank: int) -> dict[str, Any]:
    def number(x: Any) -> float | None:
        return None if pd.isna(x) else float(x)

    return {"axis": row["axis"], "from": json.loads(row["from"]),
            "to": json.loads(row["to"]), "metric": row["metric"],
            "effect": number(row["effect"]),
            "ci": [number(row["ci_low"]), number(row["ci_high"])], "rank": rank,
            "design": row["design"], "share_of_gap": number(row["share_of_gap"])}


def ablation_causes(effects: pd.DataFrame, metric: str | None,
                    factorial_axes: list[str]) -> list[dict[str, Any]]:
    """Every axis on the ranking metric, most of the gap closed first."""
    if metric is None:
        return []
    on = effects[(effects["metric"] == metric) & (effects["kind"] == "main")]
    chosen = on[(on["design"] == "factorial") & on["axis"].isin(factorial_axes)]
    rest = on[(on["design"] == "screening-fix") & ~on["axis"].isin(factorial_axes)]
    rows = pd.concat([chosen, rest])
    score = rows["share_of_gap"].astype(float).fillna(-math.inf)
    rows = rows.assign(_score=score).sort_values("_score", ascending=False,
                                                 kind="stable")
    return [_cause(row, k) for k, (_, row) in enumerate(rows.iterrows(), 1)]


def grid_causes(effects: pd.DataFrame) -> tuple[str | None, list[dict[str, Any]]]:
    """The ranking metric of a grid and its main effects, largest first."""
    main = effects[effects["kind"] == "main"]
    strength = main["standardised"].astype(float).abs()
    if main.empty or strength.isna().all():
        return None, []
    metric = main.loc[strength.idxmax(), "metric"]
    rows = main[main["metric"] == metric]
    score = rows["standardised"].astype(float).abs().fillna(-math.inf)
    rows = rows.assign(_score=score).sort_values("_score", ascending=False,
                                                 kind="stable")
    return metric, [_cause(row, k) for k, (_, row) in enumerate(rows.iterrows(), 1)]
