"""The rules; importing this package registers each in ``RULES``."""

from . import (alignment, collapse, frozen, gradients, loop, loss, nonfinite,
               probe, proxy, range, targets, units, updates)

__all__ = ["alignment", "collapse", "frozen", "gradients", "loop", "loss",
           "nonfinite", "probe", "proxy", "range", "targets", "units", "updates"]
