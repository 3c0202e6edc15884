"""One function per report figure; each draws given data on given Axes.

Every function takes its data as a DataFrame (or arrays) and the Axes to draw
on, checks the columns it needs, and returns nothing; :func:`to_data_uri`
turns a finished figure into an inline PNG. Figures are plain
``matplotlib.figure.Figure`` objects rendered by the Agg canvas, outside
pyplot, so no backend is switched and no figure is left open.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DPI = 80
RECORD_COLUMNS = ("step", "tag", "value", "block", "half", "circulation", "quantity")
EFFECT_COLUMNS = ("axis", "metric", "effect", "ci_low", "ci_high")


def check_columns(frame: pd.DataFrame, needed: Iterable[str], what: str) -> None:
    """Raise ValueError naming the columns of ``needed`` that ``frame`` lacks."""
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{what} needs columns {missing}; it has {list(frame.columns)}"
        )


def new_figure(width: float, height: float,
               ncols: int = 1) -> tuple[Figure, list[Axes]]:
    """A figure of ``width`` x ``height`` inches with ``ncols`` Axes in a row."""
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)
    return fig, list(axes[0])


def to_data_uri(fig: Figure) -> str:
    """The figure as a ``data:image/png;base64,...`` URI."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# -- causes ------------------------------------------------------------------


def plot_effects(effects: pd.DataFrame, ax: Axes) -> None:
    """Forest plot: one row per effect, its estimate and interval.

    Args:
        effects: rows of one metric with finite ``effect``, columns
            ``EFFECT_COLUMNS``; optional ``design`` groups the rows (named in
            the labels when there are several) and ``rank`` orders them
            within a design (rank 1 on top). A missing interval end is drawn
            as no bar on that side.
        ax: where to draw.
    """
    check_columns(effects, EFFECT_COLUMNS, "plot_effects")
    if effects.empty:
        raise ValueError("plot_effects needs at least one effect")
    keys = [c for c in ("design", "rank") if c in effects]
    rows = effects.sort_values(keys, na_position="last") if keys else effects
    y = np.arange(len(rows))[::-1]  # the first row on top
    effect = rows["effect"].to_numpy(float)
    low = rows["ci_low"].to_numpy(float)
    high = rows["ci_high"].to_numpy(float)
    below = np.nan_to_num(effect - low, nan=0.0)
    above = np.nan_to_num(high - effect, nan=0.0)
    ax.errorbar(effect, y, xerr=[below, above], fmt="o", color="tab:blue",
                ecolor="tab:gray", capsize=3)
    ax.axvline(0.0, color="black", linewidth=0.8, linestyle="--")
    labels = rows["axis"].astype(str)
    if "design" in rows and rows["design"].nunique() > 1:
        labels = labels + " (" + rows["design"].astype(str) + ")"
    ax.set_yticks(y, list(labels), fontsize=8)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    metrics = rows["metric"].unique()
    ax.set_xlabel(f"effect on {', '.join(map(str, metrics))} (interval)")


# -- records -----------------------------------------------------------------


def plot_tags_over_steps(records: pd.DataFrame, tags: Sequence[str], ax: Axes,
                         mark_step: float | None = None) -> None:
    """Values of ``tags`` against the training step, one line per tag.

    Args:
        records: long-format records (``step``, ``tag``, ``value``).
        tags: the tags to draw.
        ax: where to draw.
        mark_step: a step to mark with a vertical line (the finding's first
            step), or None.
    """
    check_columns(records, ("step", "tag", "value"), "plot_tags_over_steps")
    rows = records[records["tag"].isin(tags)].sort_values("step")
    for tag, group in rows.groupby("tag", sort=True):
        ax.plot(group["step"], group["value"], marker=".", markersize=3, label=tag)
    if mark_step is not None:
        ax.axvline(mark_step, color="tab:red", linewidth=1.0, linestyle=":",
                   label=f"first step {mark_step:g}")
    ax.set_xlabel("step")
    ax.legend(fontsize=7, loc="best")


def batch_spread_table(records: pd.DataFrame) -> pd.DataFrame:
    """``batch_std`` as a table: one row per block/half/circulation, one column
    per step (the mean when a step was recorded more than once).

    Rows are labelled ``block{k}/{half}/c{i}`` and sorted by block, half
    (encoder first) and circulation; missing cells are NaN.
    """
    check_columns(records, RECORD_COLUMNS, "batch_spread_table")
    rows = records[records["quantity"] == "batch_std"].copy()
    if rows.empty:
        return pd.DataFrame()
    rows["half_order"] = rows["half"].map({"enc": 0, "dec": 1})
    rows["where"] = [f"block{int(b)}/{h}/c{int(c)}" for b, h, c in
                     zip(rows["block"], rows["half"], rows["circulation"])]
    order = (rows.sort_values(["block", "half_order", "circulation"])["where"]
             .drop_duplicates().tolist())
    table = rows.pivot_table(index="where", columns="step", values="value",
                             aggfunc="mean")
    return table.loc[order]


def plot_batch_spread(table: pd.DataFrame, ax: Axes) -> None:
    """Heatmap of :func:`batch_spread_table` (log colour scale when positive)."""
    if table.empty:
        raise ValueError("plot_batch_spread needs a non-empty batch_std table")
    values = table.to_numpy(float)
    positive = values[np.isfinite(values) & (values > 0)]
    norm = None
    if positive.size and positive.min() < positive.max():
        norm = LogNorm(positive.min(), positive.max())
    sns.heatmap(table, ax=ax, cmap="viridis", norm=norm, xticklabels="auto",
                cbar_kws={"label": "batch_std"})
    ax.set_xlabel("step")
    ax.set_ylabel("block/half/circulation")


def plot_quantity_curves(records: pd.DataFrame, quantity: str, ax: Axes) -> None:
    """One quantity (``drift``, ``true_error``, ``align``, ...) over steps.

    Args:
        records: long-format records with a ``run`` column (the run label);
            colour is the run, line style the block/half/circulation.
        quantity: the value of the ``quantity`` column to draw.
        ax: where to draw.
    """
    check_columns(records, (*RECORD_COLUMNS, "run"), "plot_quantity_curves")
    rows = records[records["quantity"] == quantity].copy()
    if rows.empty:
        raise ValueError(f"no records of quantity {quantity!r}")
    rows["where"] = [location(b, h, c) for b, h, c in
                     zip(rows["block"], rows["half"], rows["circulation"])]
    sns.lineplot(data=rows, x="step", y="value", hue="run", style="where", ax=ax,
                 errorbar=None, linewidth=1.2)
    ax.set_ylabel(quantity)
    ax.legend(fontsize=7, loc="best")


def location(block: object, half: object, circulation: object) -> str:
    """``block{k}/{half}/c{i}``, leaving out the parts that are None."""
    parts = [f"block{int(block)}"] if pd.notna(block) else []
    if isinstance(half, str):
        parts.append(half)
    if pd.notna(circulation):
        parts.append(f"c{int(circulation)}")
    return "/".join(parts) or "-"


# -- learning curves ----------------------------------------------------------


def plot_learning_curve(metrics: pd.DataFrame, metric: str, ax: Axes) -> None:
    """``metric`` against the epoch per ablation cell (mean and range over seeds).

    Args:
        metrics: one row per run and epoch, columns ``cell``, ``seed``,
            ``epoch`` and ``metric``.
        metric: the metrics.jsonl field to draw.
        ax: where to draw.
    """
    check_columns(metrics, ("cell", "seed", "epoch", metric), "plot_learning_curve")
    rows = metrics.dropna(subset=[metric])
    if rows.empty:
        raise ValueError(f"no run reports {metric!r}")
    sns.lineplot(data=rows, x="epoch", y=metric, hue="cell", marker="o", ax=ax,
                 errorbar=("pi", 100))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric)
    ax.legend(fontsize=7, loc="best")


# -- images ------------------------------------------------------------------


def plot_image_grid(images: np.ndarray, row_labels: Sequence[str], ax: Axes,
                    clip: tuple[float, float] = (0.0, 1.0)) -> None:
    """A grid of images: one row per entry of ``row_labels``.

    Args:
        images: ``(R, N, C, H, W)``, R rows of N images each; C is 1 or 3.
        row_labels: R labels written left of the rows.
        ax: where to draw.
        clip: pixel values outside this range are shown at its ends.
    """
    R, N, C, H, W = images.shape
    if len(row_labels) != R:
        raise ValueError(f"{R} rows of images but {len(row_labels)} labels")
    if C not in (1, 3):
        raise ValueError(f"images need 1 or 3 channels, got {C}")
    canvas = images.transpose(0, 3, 1, 4, 2)  # (R, H, N, W, C)
    canvas = canvas.reshape(R * H, N * W, C)  # (R * H, N * W, C)
    canvas = np.clip(canvas, *clip)
    ax.imshow(canvas[..., 0] if C == 1 else canvas, cmap="gray",
              vmin=clip[0], vmax=clip[1], interpolation="nearest")
    ax.set_yticks(np.arange(R) * H + H / 2, row_labels, fontsize=8)
    ax.set_xticks([])
    for r in range(1, R):
        ax.axhline(r * H - 0.5, color="tab:red", linewidth=0.6)


def plot_attribution(image: np.ndarray, attribution: np.ndarray, title: str,
                     ax: Axes) -> None:
    """An attribution map in red/blue with the input's outline in black.

    Args:
        image: ``(H, W)`` pixels in [0, 1]; its 0.5 level is outlined.
        attribution: ``(H, W)``, summed over channels; red is positive,
            white zero.
        title: written above.
        ax: where to draw.
    """
    if image.shape != attribution.shape:
        raise ValueError(f"image {image.shape} and attribution {attribution.shape}"
                         " differ in shape")
    bound = float(np.abs(attribution).max()) or 1.0
    ax.imshow(attribution, cmap="bwr", vmin=-bound, vmax=bound)
    if image.min() < 0.5 < image.max():
        ax.contour(image, levels=[0.5], colors="black", linewidths=0.6)
    ax.set_title(title, fontsize=7)
    ax.set_axis_off()
