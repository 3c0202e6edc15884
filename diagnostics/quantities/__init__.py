"""One small class per recorded quantity; ``build`` makes them from schedules."""

from __future__ import annotations

from ..schedule import Schedule
from .activations import Activations, Histograms
from .base import PHASES, BlockPass, Call, Capture, Quantity, Sink, UpdateContext
from .gradients import DescentAlignment, GradNorm, UpdateRatio, WeightAlignment
from .images import Images
from .nonfinite import Nonfinite, NonfiniteGrads
from .probe import Probes
from .reconstruction import Drift, TrueError

KINDS: dict[str, type[Quantity]] = {
    cls.name: cls
    for cls in (Nonfinite, NonfiniteGrads, Activations, Drift, TrueError, GradNorm,
                UpdateRatio, WeightAlignment, Histograms, Images, Probes,
                DescentAlignment)
}


def build(schedules: dict[str, Schedule]) -> list[Quantity]:
    """One quantity per scheduled name that is computed at some step."""
    return [KINDS[name](schedule) for name, schedule in schedules.items()
            if name in KINDS and schedule.every > 0]


__all__ = ["KINDS", "PHASES", "BlockPass", "Call", "Capture", "Quantity", "Sink",
           "UpdateContext", "build"]
