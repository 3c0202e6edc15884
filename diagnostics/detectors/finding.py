"""What a rule reports: findings, and the checks it could not make."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SEVERITIES = ("error", "warning", "info")
PUBLIC_KEYS = ("rule", "run", "block", "half", "circulation", "step", "evidence",
               "message")


@dataclass(frozen=True)
class Finding:
    """One rule's condition, found in one place of one run.

    Attributes:
        rule: the rule's name (see ``diagnostics.detectors.RULES``).
        run: the run's name.
        block, half, circulation: where (None where the rule has no such
            part, e.g. weights belong to no circulation).
        step: the first recorded step from which the condition held
            persistently; for static facts, the first recorded step (None
            without records).
        evidence: the measured numbers, the thresholds and the steps.
        message: what the condition means for a circular autoencoder, from
            the evidence.
        severity: ``error``, ``warning`` or ``info``.
        title: the rule's one-line title.
        tags: the recorded tags the finding is about (its evidence plot).
    """

    rule: str
    run: str
    block: int | None
    half: str | None
    circulation: int | None
    step: int | None
    evidence: dict[str, float | int | None]
    message: str
    severity: str = "warning"
    title: str = ""
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, "
                             f"got {self.severity!r}")

    def to_dict(self) -> dict[str, Any]:
        """The public keys plus ``severity``, ``title`` and ``tags``."""
        return {"rule": self.rule, "run": self.run, "block": self.block,
                "half": self.half, "circulation": self.circulation,
                "step": self.step, "evidence": dict(self.evidence),
                "message": self.message, "severity": self.severity,
                "title": self.title, "tags": list(self.tags)}

    def sort_key(self) -> tuple:
        """Severity first, then step (static findings first), then place."""
        return (SEVERITIES.index(self.severity),
                -1 if self.step is None else self.step, self.rule,
                -1 if self.block is None else self.block, self.half or "",
                -1 if self.circulation is None else self.circulation)


@dataclass(frozen=True)
class NotChecked:
    """A rule, or one place of it, that could not run, and why.

    Attributes:
        rule: the rule's name.
        what: the place not checked (``block0/dec``, ``all``, ...).
        why: what was missing.
    """

    rule: str
    what: str
    why: str

    def to_dict(self) -> dict[str, str]:
        return {"rule": self.rule, "what": self.what, "why": self.why}


@dataclass
class DetectionResult:
    """The findings of every rule on one run and what was not checked.

    Attributes:
        run: the run's name.
        findings: sorted by severity, then step.
        not_checked: rules or places the rules could not check.
        not_measured: the recorder's own ``not_measured`` events, as given.
    """

    run: str
    findings: list[Finding] = field(default_factory=list)
    not_checked: list[NotChecked] = field(default_factory=list)
    not_measured: list[dict[str, Any]] = field(default_factory=list)

    def by_rule(self, rule: str) -> list[Finding]:
        """The findings of one rule."""
        return [f for f in self.findings if f.rule == rule]

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run,
                "findings": [f.to_dict() for f in self.findings],
                "not_checked": [n.to_dict() for n in self.not_checked],
                "not_measured": list(self.not_measured)}
