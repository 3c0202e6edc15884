"""The ablation engine: which differences between two configs make one fail.

Given a failing config and a working one, ``run_ablation`` finds the axes on
which they differ (``axes``), trains a screening design and a factorial
over the axes that matter most at the failing config's architecture
(``design``, trained by ``runner`` in worker processes, resumably),
estimates main effects and two-way interactions with bootstrap intervals
over seeds and ranks the causes (``effects``); ``run_grid`` does the same
for an explicit grid (``grid`` reads it from TOML). Everything lands in the
sweep directory (``sweep``); ``load_ablation`` reads it back.

Example (tiny data, one epoch; see the tests for more)::

    from tourbillon.config import resolve
    from diagnostics.ablation import run_ablation
    result = run_ablation(resolve("reference"), resolve("authors"), "sweep",
                          epochs=2, workers=2)
    result.causes[0]  # {"axis": ..., "from": ..., "to": ..., "effect": ...}
"""

from .axes import Axis, axes_between
from .effects import bootstrap_contrasts
from .grid import load_grid
from .runner import METRICS, RunOptions
from .sweep import AblationResult, load_ablation, run_ablation, run_grid

__all__ = [
    "AblationResult", "Axis", "METRICS", "RunOptions", "axes_between",
    "bootstrap_contrasts", "load_ablation", "load_grid", "run_ablation", "run_grid",
]
