"""What a quantity sees and where it sends its values.

A quantity is one small class with a :class:`~diagnostics.schedule.Schedule`
and the phases it computes in; the recorder calls a phase only for the
quantities due at the current step. Phases, in the order they run in a step:

1. ``on_call``: an encoder or decoder call of a training forward.
2. ``on_block``: a block's training forward finished.
3. ``before_update``: gradients are in ``.grad``; weights not yet updated.
4. ``after_update``: the optimizer has stepped.
5. ``on_capture``: a no-grad forward of the fixed probe batch, captured.

Values go to a :class:`Sink` as 0-d tensors or floats; the recorder turns
them into numbers once per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from torch import Tensor, nn

from ..placement import BlockSite
from ..schedule import Schedule


class Sink(Protocol):
    """Where quantities put their results (the recorder)."""

    def scalar(self, tag: str, value: Tensor | float) -> None: ...

    def histogram(self, tag: str, values: Tensor) -> None: ...

    def image(self, tag: str, image: Tensor) -> None: ...

    def report_not_measured(self, what: str, why: str) -> None: ...

    def event(self, record: dict[str, Any]) -> None: ...


@dataclass(slots=True)
class Call:
    """One encoder or decoder call inside a block's training forward.

    Attributes:
        block: block number.
        half: ``enc`` or ``dec``.
        circulation: which walk around the loop (from 0, restarts per forward).
        module: qualified module name, e.g. ``blocks.0.encoder``.
        output: the call's result, with its graph.
        bounds: the output range of a bounded output activation, else None.
    """

    block: int
    half: str
    circulation: int
    module: str
    output: Tensor
    bounds: tuple[float, float] | None


@dataclass
class BlockPass:
    """Everything one forward of a block produced.

    Attributes:
        block: block number.
        input: the block's input ``x`` (detached).
        codes: encoder results, one per circulation walked (detached).
        reconstructions: decoder results, one per circulation (detached).
        output: what the block returned (the protocol dict), or None.
    """

    block: int
    input: Tensor
    codes: list[Tensor] = field(default_factory=list)
    reconstructions: list[Tensor] = field(default_factory=list)
    output: Any = None


@dataclass
class Capture:
    """A no-grad forward of the probe batch, one :class:`BlockPass` per block."""

    passes: dict[int, BlockPass]
    labels: Tensor | None
    image_shape: tuple[int, int, int] | None


@dataclass
class UpdateContext:
    """The blocks, their parameters and the step, around an update.

    Attributes:
        sites: the blocks.
        params: ``{block: {half: {name: parameter}}}``.
        module_names: ``{block: {half: qualified module name}}``.
        step: the step in progress (from 1).
        loss: the step's loss when the training loop gave it, else None.
    """

    sites: list[BlockSite]
    params: dict[int, dict[str, dict[str, nn.Parameter]]]
    module_names: dict[int, dict[str, str]]
    step: int = 0
    loss: Tensor | float | None = None


class Quantity:
    """Base class: a schedule and no-op phases."""

    name: ClassVar[str] = ""

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule

    def should_compute(self, step: int) -> bool:
        """Whether this quantity is due at ``step``."""
        return self.schedule.should_compute(step)

    def implements(self, phase: str) -> bool:
        """Whether the subclass overrides the phase method ``phase``."""
        return getattr(type(self), phase) is not getattr(Quantity, phase)

    def on_call(self, call: Call, sink: Sink) -> None: ...

    def on_block(self, block: BlockPass, sink: Sink) -> None: ...

    def before_update(self, ctx: UpdateContext, sink: Sink) -> None: ...

    def after_update(self, ctx: UpdateContext, sink: Sink) -> None: ...

    def on_capture(self, capture: Capture, sink: Sink) -> None: ...


PHASES = ("on_call", "on_block", "before_update", "after_update", "on_capture")
