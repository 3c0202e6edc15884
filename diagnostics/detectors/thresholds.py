"""Every threshold the stall detectors use, with its documented default."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from tourbillon.errors import ConfigError

# Allowed values per field: (low, high, low inclusive, high inclusive).
_INT_FIELDS = ("persist_steps", "smooth_steps")
_BOUNDS: dict[str, tuple[float, float, bool, bool]] = {
    "persist_fraction": (0.0, 1.0, False, True),
    "window_fraction": (0.0, 0.5, False, True),
    "explode_grad_norm": (0.0, float("inf"), False, False),
    "explode_growth": (1.0, float("inf"), False, False),
    "vanish_grad_norm": (0.0, float("inf"), False, False),
    "vanish_decay": (0.0, 1.0, False, False),
    "zero_tolerance": (0.0, float("inf"), True, False),
    "update_ratio_low": (0.0, float("inf"), True, False),
    "update_ratio_high": (0.0, float("inf"), False, False),
    "saturated_fraction": (0.0, 1.0, False, True),
    "dead_fraction": (0.0, 1.0, False, True),
    "loss_min_decrease": (0.0, 1.0, True, False),
    "plateau_fraction": (0.0, 1.0, False, True),
    "collapse_ratio": (0.0, 1.0, False, False),
    "target_spread_ratio": (0.0, 1.0, False, False),
    "proxy_drift_fall": (0.0, 1.0, False, False),
    "proxy_true_flat": (0.0, 1.0, False, True),
    "range_outside_fraction": (0.0, 1.0, False, True),
    "chance_accuracy": (0.0, 1.0, False, False),
    "probe_margin": (0.0, 1.0, True, False),
    "align_max": (-1.0, 1.0, True, False),
    "unsettled_ratio": (0.0, float("inf"), False, False),
    "settled_ratio": (0.0, 1.0, False, False),
    "far_fraction": (0.0, float("inf"), False, False),
}


@dataclass(frozen=True)
class Thresholds:
    """The limits the rules compare recorded quantities with.

    *Persistent* (used by every rule that reads a series): the condition
    holds at ``persist_steps`` consecutive recorded steps and at no less than
    ``persist_fraction`` of the recorded steps from the first of them to the
    end of the record. The finding's step is the first step from which that
    is true. A series shorter than ``persist_steps`` cannot show persistence:
    the rule reports it as not checked.

    Attributes:
        persist_steps: consecutive recorded steps a condition must hold (3).
        persist_fraction: share of the remaining recorded steps at which it
            must hold from there on (0.8); a transient that clears up is not
            reported.
        smooth_steps: trailing median window (in recorded steps) applied to
            noisy series (alignments, probes, drift, true error) before
            thresholding (5).
        window_fraction: share of the recorded steps that makes the *early*
            window (first) and the chunks of the loss-plateau rule (0.1); a
            window has at least ``persist_steps`` steps.
        explode_grad_norm: a gradient norm above this explodes (1e3).
        explode_growth: so does one grown by more than this factor since its
            first recorded value (1e3).
        vanish_grad_norm: a non-zero gradient norm below this vanishes (1e-7).
        vanish_decay: so does one shrunk below this share of its first
            recorded value (1e-4).
        zero_tolerance: a gradient norm or update ratio at or below this is
            zero: the weights do not change (1e-12).
        update_ratio_low, update_ratio_high: the range of ``||update|| /
            ||weight||`` per step outside which updates are too small or too
            large (1e-6 and 0.3; Adam at lr 1e-3 gives about
            ``lr * sqrt(3 * fan_in)``, 0.05 for 784 inputs). Weights only.
        saturated_fraction: share of elements near a bound of a bounded
            activation beyond which a half is saturated (0.5); for decoders,
            in excess of the share of the block input at the same bounds.
        dead_fraction: share of units constant over the batch beyond which a
            half has dead units (0.5); for decoders, in excess of the share
            of constant input units.
        loss_min_decrease: relative fall of the training loss below which it
            has stopped falling (0.01).
        plateau_fraction: share of the recorded steps a loss plateau must
            last to be reported (0.5).
        collapse_ratio: reconstructions whose batch spread is at most this
            share of the block input's have collapsed (0.05).
        target_spread_ratio: a target whose batch spread is at most this
            share of its reference carries no information (0.05).
        proxy_drift_fall: a local rule's drift fallen to this share of its
            early value has been satisfied (0.5) ...
        proxy_true_flat: ... while a true error still at this share of its
            early value has not fallen (0.9).
        range_outside_fraction: share of the block input outside the
            decoder's output range from which the range cannot be reached
            (0.01).
        chance_accuracy: chance level of the probes (0.1, ten classes; set
            ``1 / classes``).
        probe_margin: probe accuracy at most this above chance is near
            chance (0.1).
        align_max: a local update whose cosine with the true error's descent
            direction is at most this is not a descent direction (0.0).
        unsettled_ratio: the last circulation's displacement at least this
            share of the one before: the loop does not settle (1.0).
        settled_ratio: the last displacement at most this share of the first
            reconstruction's error: the loop has settled (0.1) ...
        far_fraction: ... far from the input when its true error is at least
            this share of the error of predicting each unit's batch mean
            (1.0: no better than the mean input).
    """

    persist_steps: int = 3
    persist_fraction: float = 0.8
    smooth_steps: int = 5
    window_fraction: float = 0.1
    explode_grad_norm: float = 1e3
    explode_growth: float = 1e3
    vanish_grad_norm: float = 1e-7
    vanish_decay: float = 1e-4
    zero_tolerance: float = 1e-12
    update_ratio_low: float = 1e-6
    update_ratio_high: float = 0.3
    saturated_fraction: float = 0.5
    dead_fraction: float = 0.5
    loss_min_decrease: float = 0.01
    plateau_fraction: float = 0.5
    collapse_ratio: float = 0.05
    target_spread_ratio: float = 0.05
    proxy_drift_fall: float = 0.5
    proxy_true_flat: float = 0.9
    range_outside_fraction: float = 0.01
    chance_accuracy: float = 0.1
    probe_margin: float = 0.1
    align_max: float = 0.0
    unsettled_ratio: float = 1.0
    settled_ratio: float = 0.1
    far_fraction: float = 1.0

    def __post_init__(self) -> None:
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"threshold {name} must be an integer >= 1, "
                                  f"got {value!r}")
        for name, (low, high, low_in, high_in) in _BOUNDS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"threshold {name} must be a number, got {value!r}")
            above = value >= low if low_in else value > low
            below = value <= high if high_in else value < high
            if not (above and below):
                raise ConfigError(
                    f"threshold {name}={value!r} is outside "
                    f"{'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}")
            object.__setattr__(self, name, float(value))
        if self.update_ratio_low >= self.update_ratio_high:
            raise ConfigError("update_ratio_low must be below update_ratio_high, got "
                              f"{self.update_ratio_low} and {self.update_ratio_high}")

    def replace(self, **changes: Any) -> "Thresholds":
        """A copy with ``changes`` applied and validated."""
        _check_names(changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, float | int]:
        """Every threshold by name."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Thresholds":
        """Defaults overridden by ``values``; unknown names are an error."""
        _check_names(values)
        return cls(**values)


def _check_names(values: dict[str, Any]) -> None:
    known = [f.name for f in dataclasses.fields(Thresholds)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown threshold(s) {unknown}; known: {', '.join(known)}")
