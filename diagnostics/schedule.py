"""When each recorded quantity is computed.

Steps count optimizer updates from 1. A quantity with ``every=N`` is computed
at steps 1, 1 + N, 1 + 2N, ..., so the first step is always recorded. Cheap
quantities (one reduction per tensor) share one interval and expensive ones
(histograms, images, probes, descent alignment) another; ``full`` computes
everything at every step and ``off`` nothing.

At the default cheap interval the cheap quantities are also computed at the
powers of four below it (steps 4 and 16), so the start of training is seen
more densely; an interval given explicitly is taken literally.

The default intervals keep the recorder's cost under 10% of the reference
model's training time on a CPU (``benchmarks/recorder_overhead.py`` checks
it): a step where the cheap quantities are due costs under a training step's
time on top, and one with the expensive ones about five. On the bundled MNIST
sample (63 steps an epoch) the first epoch is recorded at steps 1, 4, 16
and 51.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tourbillon.errors import ConfigError

MODES = ("off", "default", "full")
CHEAP = ("nonfinite", "nonfinite_grads", "activations", "drift", "true_error",
         "grad_norm", "update_ratio", "weight_alignment", "loss")
EXPENSIVE = ("histograms", "images", "probes", "descent_alignment")
QUANTITIES = CHEAP + EXPENSIVE

DEFAULT_CHEAP_EVERY = 50
DEFAULT_EXPENSIVE_EVERY = 500
# Non-finite values are looked for at every step: they must be reported at once.
DEFAULT_NONFINITE_EVERY = 1


@dataclass(frozen=True)
class Schedule:
    """Compute at steps ``first``, ``first + every``, ... (``every=0``: never).

    With ``log_start`` the steps before ``every`` that are powers of four
    (1, 4, 16, 64, ...) are computed too, so early training, where a stall
    forms, is seen more densely at a cost that does not grow with the run.
    """

    every: int
    first: int = 1
    log_start: bool = False

    def __post_init__(self) -> None:
        if self.every < 0 or self.first < 1:
            raise ConfigError(
                f"a schedule needs every >= 0 and first >= 1, got {self}")

    def should_compute(self, step: int) -> bool:
        """Whether the quantity is due at ``step`` (1-based)."""
        if self.every == 0 or step < 1:
            return False
        if self.log_start and step < self.every and _power_of_four(step):
            return True
        return step >= self.first and (step - self.first) % self.every == 0


def _power_of_four(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0 and (n.bit_length() - 1) % 2 == 0


def make_schedules(mode: str = "default", cheap_every: int | None = None,
                   expensive_every: int | None = None,
                   every: Mapping[str, int] | None = None) -> dict[str, Schedule]:
    """One schedule per quantity name in ``QUANTITIES``.

    Args:
        mode: ``off`` (never), ``default`` or ``full`` (every step).
        cheap_every: interval of the cheap quantities (mode default if None).
        expensive_every: interval of the expensive quantities.
        every: per-quantity intervals that override the two above.

    Only the default cheap interval adds the denser start (steps 4, 16).
    """
    if mode not in MODES:
        raise ConfigError(f"mode={mode!r} is not allowed; choose one of {MODES}")
    unknown = sorted(set(every or {}) - set(QUANTITIES))
    if unknown:
        raise ConfigError(
            f"unknown quantities {unknown}; known: {', '.join(QUANTITIES)}")
    if mode == "off":
        return {name: Schedule(0) for name in QUANTITIES}
    base = 1 if mode == "full" else None
    cheap = cheap_every if cheap_every is not None else base or DEFAULT_CHEAP_EVERY
    expensive = (expensive_every if expensive_every is not None
                 else base or DEFAULT_EXPENSIVE_EVERY)
    intervals = {name: cheap for name in CHEAP}
    intervals.update({name: expensive for name in EXPENSIVE})
    intervals["nonfinite"] = base or DEFAULT_NONFINITE_EVERY
    intervals.update(every or {})
    # Only the default cheap interval gets the dense start; an interval given
    # explicitly is taken literally.
    dense = {name for name in CHEAP if name != "nonfinite"}
    if mode != "default" or cheap_every is not None:
        dense = set()
    dense -= set(every or {})
    return {name: Schedule(n, log_start=name in dense)
            for name, n in intervals.items()}
