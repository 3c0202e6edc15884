"""The variant space: one frozen, validated config describes a Tourbillon variant.

Every field is part of the public interface (the CLI sets them with
``--set field=value``). The named variants at the bottom are points in this
space; the baselines are points too, so every run goes through the same model
and trainer code.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Union

from .errors import ConfigError

ACTIVATIONS = ("tanh", "sigmoid", "identity", "relu")
DECODER_ACTIVATIONS = ACTIVATIONS + ("match",)
ENCODER_RULES = ("autograd", "authors", "none")
DECODER_RULES = ("delta", "none")
GRAPHS = ("detach", "keep")
BACKWARD_WEIGHTS = ("transpose", "random")
REDUCTIONS = ("mean", "sum")
SCHEDULES = ("joint", "sequential", "asynchronous")
HEADS = ("joint", "after")
FEEDBACKS = ("none", "random")
OPTIMIZERS = ("adam", "sgd")
UPDATES = ("auto", "autograd", "explicit")
ARCHS = ("linear", "conv")

Pair = tuple[int, int]
PerBlock = Union[int, tuple[Union[int, Pair], ...]]


@dataclass(frozen=True)
class Config:
    """A Tourbillon variant: architecture, recirculation rule and training recipe.

    Circulation ``i`` applies the encoder and then the decoder; indices below
    count circulations from 0. Fields that do not apply to ``arch`` are ignored.

    Attributes:
        name: label of the variant (informational).
        arch: ``linear`` (fully connected blocks) or ``conv``.
        sizes: linear widths ``[input, hidden_1, ...]``; one block per pair.
            A single entry means no block (the head reads the raw input).
        channels: conv channels ``[input, hidden_1, ...]``.
        kernel_sizes, strides, paddings: conv geometry, one int for all
            blocks or a list with one entry per block (an int or an
            ``(h, w)`` pair each).
        input_size: ``(h, w)`` of conv inputs.
        classes: head outputs; 0 means no head.
        circulations: passes around each block's loop (>= 1).
        encoder_target, encoder_output: circulations whose codes are the
            encoder rule's target and output.
        decoder_target: ``"input"`` (the block's input) or the circulation
            whose reconstruction is the decoder rule's target.
        decoder_output: circulation whose reconstruction the decoder rule
            pulls toward its target.
        regression: lambda; the visible state entering circulation ``i + 1``
            is ``lambda * visible_i + (1 - lambda) * D(code_i)``.
        feed_from: circulation whose code goes to the next block and head.
        encoder_activation, decoder_activation: unit nonlinearities;
            ``match`` picks the activation whose range matches the block's
            input (sigmoid for [0, 1] data, the encoder's own above).
        encoder_rule: ``autograd``: the squared error between the output and
            target codes, so the update is (presynaptic input at the output
            circulation) x (target - output) x f' at the output circulation;
            ``authors``: the authors' explicit rule, presynaptic input and f'
            taken at the target circulation; ``none``: no encoder rule.
        decoder_rule: ``delta`` (squared error between decoder output and
            target) or ``none``.
        code_graph: ``detach`` (the decoder sees a detached code, the
            recirculation setting) or ``keep`` (the reconstruction error
            reaches the encoder: end-to-end autoencoder training).
        decoder_backward: ``transpose`` (exact backprop through the decoder)
            or ``random`` (a fixed random matrix carries the error back:
            feedback alignment). Only matters with ``code_graph=keep``.
        input_graph: ``keep`` leaves a block's input attached to the block
            below, as the original code does, so a rule that reads the code of
            circulation 0 with its graph (an output at circulation 0, or the
            authors' rule with its target at circulation 0) sends gradient
            into the lower block; ``detach`` makes every block strictly local.
        head_graph: ``detach`` (the head reads frozen codes) or ``keep`` (the
            head's error trains the stack by backprop: the supervised MLP).
        loss_reduction: ``mean`` over elements, or ``sum``: half the squared
            error summed over units and averaged over the batch, whose
            gradient is exactly presynaptic activity times error.
        schedule: ``joint`` (all blocks every step), ``sequential`` (each
            block for ``epochs`` epochs, bottom first), ``asynchronous`` (one
            random block per minibatch).
        head: ``joint`` (trained with the blocks from step 0) or ``after``
            (trained on frozen codes for ``head_epochs`` once blocks are done,
            with Adam at lr 1e-3).
        head_epochs: epochs of head training when ``head=after``.
        feedback: ``none`` or ``random``: the head's error reaches each block
            through its own fixed random matrix (direct feedback alignment)
            and is added to the block's local update.
        optimizer: ``adam`` or ``sgd`` (the authors' SGD: momentum as an
            average ``m = momentum * m + (1 - momentum) * g`` and, with
            ``lr_decay``, ``lr_t = lr / (1 + (lr / epochs) * t)``, t counted
            in minibatches).
        update: how the trainer computes the rules' updates: ``autograd``
            (backward through the objectives of ``tourbillon.rules``),
            ``explicit`` (each layer's error times its presynaptic input,
            written into the SGD momentum without autograd, as the authors'
            code does; the same update, faster) or ``auto`` (``explicit``
            where the variant allows it, see :meth:`explicit_update_needs`).
        lr, momentum, lr_decay, batch_size, epochs, seed: the recipe.
        dataset: data set name (see ``tourbillon.data.DATASETS``).
    """

    name: str = "custom"
    arch: str = "linear"
    sizes: tuple[int, ...] = (784, 256, 64)
    channels: tuple[int, ...] = (1, 6, 6)
    kernel_sizes: PerBlock = 5
    strides: PerBlock = 1
    paddings: PerBlock = 2
    input_size: Pair = (28, 28)
    classes: int = 10
    circulations: int = 2
    encoder_target: int = 0
    encoder_output: int = 1
    decoder_target: Union[str, int] = 0
    decoder_output: int = 1
    regression: float = 0.0
    feed_from: int = 1
    encoder_activation: str = "tanh"
    decoder_activation: str = "sigmoid"
    encoder_rule: str = "autograd"
    decoder_rule: str = "delta"
    code_graph: str = "detach"
    decoder_backward: str = "transpose"
    input_graph: str = "keep"
    head_graph: str = "detach"
    loss_reduction: str = "mean"
    schedule: str = "joint"
    head: str = "joint"
    head_epochs: int = 30
    feedback: str = "none"
    optimizer: str = "adam"
    update: str = "auto"
    lr: float = 1e-3
    momentum: float = 0.8
    lr_decay: bool = False
    batch_size: int = 64
    epochs: int = 5
    seed: int = 0
    dataset: str = "mnist-sample"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name)))
        _validate(self)

    # -- derived ---------------------------------------------------------------

    @property
    def num_blocks(self) -> int:
        """Number of circular autoencoders in the stack."""
        widths = self.sizes if self.arch == "linear" else self.channels
        return len(widths) - 1

    @property
    def explicit_update(self) -> bool:
        """Whether the trainer computes this variant's updates explicitly."""
        return self.update == "explicit" or (
            self.update == "auto" and not self.explicit_update_needs())

    def explicit_update_needs(self) -> list[str]:
        """What this config lacks for ``update='explicit'`` (empty: nothing).

        The explicit update covers linear blocks whose rules stay inside the
        block, trained by the authors' SGD, with no head trained jointly.
        """
        needs = []
        if self.arch != "linear":
            needs.append("arch='linear' (conv layers go through autograd)")
        if self.optimizer != "sgd":
            needs.append("optimizer='sgd' (the authors' SGD takes the products)")
        if self.code_graph != "detach":
            needs.append("code_graph='detach' (with 'keep' the decoder's error "
                         "trains the encoder by backprop)")
        if self.input_graph != "detach" and self.num_blocks > 1:
            needs.append("input_graph='detach' (with 'keep' a rule can reach the "
                         "block below)")
        if self.head == "joint" and self.classes > 0:
            needs.append("head='after' or classes=0 (a joint head trains by "
                         "cross-entropy through autograd)")
        return needs

    def per_block(self, name: str) -> list[Pair]:
        """Conv geometry field ``name`` expanded to one ``(h, w)`` pair per block."""
        return expand_per_block(name, getattr(self, name), self.num_blocks)

    def replace(self, **changes: Any) -> "Config":
        """A copy with ``changes`` applied and validated."""
        unknown = sorted(set(changes) - set(field_names()))
        if unknown:
            raise ConfigError(_unknown_fields_message(unknown))
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        """Inverse of ``to_dict``; rejects unknown fields."""
        unknown = sorted(set(data) - set(field_names()))
        if unknown:
            raise ConfigError(_unknown_fields_message(unknown))
        return cls(**data)

    def diff(self, other: "Config") -> dict[str, tuple[Any, Any]]:
        """Fields whose values differ, as ``{field: (self_value, other_value)}``."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if a[k] != b[k] and k != "name"}


def field_names() -> list[str]:
    """Every config field, in declaration order."""
    return [f.name for f in dataclasses.fields(Config)]


def _unknown_fields_message(unknown: list[str]) -> str:
    known = ", ".join(field_names())
    return f"unknown config field(s) {unknown}; known fields: {known}"


# -- coercion and validation -----------------------------------------------------

_CHOICES = {
    "arch": ARCHS,
    "encoder_activation": ACTIVATIONS,
    "decoder_activation": DECODER_ACTIVATIONS,
    "encoder_rule": ENCODER_RULES,
    "decoder_rule": DECODER_RULES,
    "code_graph": GRAPHS,
    "decoder_backward": BACKWARD_WEIGHTS,
    "input_graph": GRAPHS,
    "head_graph": GRAPHS,
    "loss_reduction": REDUCTIONS,
    "schedule": SCHEDULES,
    "head": HEADS,
    "feedback": FEEDBACKS,
    "optimizer": OPTIMIZERS,
    "update": UPDATES,
}
_INTS = (
    "classes", "circulations", "encoder_target", "encoder_output", "decoder_output",
    "feed_from", "head_epochs", "batch_size", "epochs", "seed",
)
_FLOATS = ("regression", "lr", "momentum")
_GEOMETRY = ("kernel_sizes", "strides", "paddings")


def _coerce(name: str, value: Any) -> Any:
    """Normalise a field value (lists to tuples, numeric strings to numbers)."""
    if name in _INTS:
        return _as_int(name, value)
    if name in _FLOATS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        return float(value)
    if name == "lr_decay":
        if not isinstance(value, bool):
            raise ConfigError(f"lr_decay must be true or false, got {value!r}")
        return value
    if name in ("sizes", "channels"):
        if isinstance(value, int) or not hasattr(value, "__iter__"):
            raise ConfigError(f"{name} must be a list of ints, got {value!r}")
        return tuple(_as_int(name, v) for v in value)
    if name == "input_size":
        return _as_pair(name, value)
    if name in _GEOMETRY:
        if isinstance(value, (list, tuple)):
            return tuple(_as_int(name, v) if isinstance(v, int) else _as_pair(name, v)
                         for v in value)
        return _as_int(name, value)
    if name == "decoder_target":
        if value == "input":
            return value
        if isinstance(value, str) and value.lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(
                f"decoder_target must be 'input' or a circulation index, got {value!r}"
            )
        return value
    if name in _CHOICES or name in ("name", "dataset"):
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
    return value


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    return value


def _as_pair(name: str, value: Any) -> Pair:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return (_as_int(name, value[0]), _as_int(name, value[1]))
    raise ConfigError(f"{name} entries must be an int or an (h, w) pair, got {value!r}")


def expand_per_block(name: str, value: PerBlock, blocks: int) -> list[Pair]:
    """One ``(h, w)`` pair per block from an int, a pair or a per-block list."""
    if isinstance(value, int):
        return [(value, value)] * blocks
    values = list(value)
    if len(values) != blocks:
        raise ConfigError(
            f"{name} has {len(values)} entries but the stack has {blocks} block(s); "
            "give one value for all blocks or exactly one per block"
        )
    return [_as_pair(name, v) for v in values]


def _validate(c: Config) -> None:
    for name, allowed in _CHOICES.items():
        if getattr(c, name) not in allowed:
            raise ConfigError(
                f"{name}={getattr(c, name)!r} is not allowed; choose one of "
                f"{', '.join(allowed)}"
            )
    _validate_architecture(c)
    _validate_rule(c)
    _validate_recipe(c)
    if c.update == "explicit" and c.explicit_update_needs():
        raise ConfigError(
            "update='explicit' needs " + "; ".join(c.explicit_update_needs())
            + ". Use update='auto' or 'autograd'")


def _validate_architecture(c: Config) -> None:
    widths = c.sizes if c.arch == "linear" else c.channels
    name = "sizes" if c.arch == "linear" else "channels"
    if len(widths) < 1 or any(w < 1 for w in widths):
        raise ConfigError(
            f"{name} must be one or more positive ints, got {list(widths)}")
    if c.classes < 0:
        raise ConfigError(f"classes must be >= 0, got {c.classes}")
    if c.arch == "conv":
        if any(v < 1 for v in c.input_size):
            raise ConfigError(f"input_size must be positive, got {c.input_size}")
        for geometry in _GEOMETRY:
            pairs = c.per_block(geometry)
            low = 1 if geometry != "paddings" else 0
            if any(v < low for p in pairs for v in p):
                raise ConfigError(f"{geometry} must be >= {low}, got {pairs}")


def _validate_rule(c: Config) -> None:
    if c.circulations < 1:
        raise ConfigError(f"circulations must be >= 1, got {c.circulations}")
    indices = {
        "encoder_target": c.encoder_target,
        "encoder_output": c.encoder_output,
        "decoder_output": c.decoder_output,
        "feed_from": c.feed_from,
    }
    if c.decoder_target != "input":
        indices["decoder_target"] = c.decoder_target
    for name, index in indices.items():
        if not 0 <= index < c.circulations:
            raise ConfigError(
                f"{name}={index} is not a circulation index; with circulations="
                f"{c.circulations} allowed values are 0..{c.circulations - 1}"
                + (" or 'input'" if name == "decoder_target" else "")
            )
    if not 0.0 <= c.regression < 1.0:
        raise ConfigError(f"regression must be in [0, 1), got {c.regression}")
    if c.feedback == "random" and c.input_graph == "keep":
        raise ConfigError(
            "feedback='random' needs input_graph='detach': with an attached input "
            "the head's error would reach lower blocks by backprop, not by feedback"
        )
    if c.feedback == "random" and c.classes == 0:
        raise ConfigError("feedback='random' needs a head (classes > 0)")
    if c.head_graph == "keep" and c.head == "after":
        raise ConfigError(
            "head_graph='keep' trains the stack with the head: use head='joint'")


def _validate_recipe(c: Config) -> None:
    from .data import DATASETS

    if c.dataset not in DATASETS:
        raise ConfigError(f"dataset={c.dataset!r} is not allowed; choose one of "
                          f"{', '.join(DATASETS)}")
    if not math.isfinite(c.lr) or c.lr <= 0:
        raise ConfigError(f"lr must be a finite number > 0, got {c.lr}")
    if not 0.0 <= c.momentum < 1.0:
        raise ConfigError(f"momentum must be in [0, 1), got {c.momentum}")
    if c.batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {c.batch_size}")
    if c.epochs < 0 or c.head_epochs < 0:
        raise ConfigError("epochs and head_epochs must be >= 0")
    if c.lr_decay and c.optimizer != "sgd":
        raise ConfigError("lr_decay is part of the authors' SGD: set optimizer='sgd'")


# -- named variants ----------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """A named point in the variant space and where it comes from."""

    name: str
    source: str
    fields: dict[str, Any] = field(default_factory=dict)

    def config(self, **overrides: Any) -> Config:
        """The variant's config, with ``overrides`` applied on top."""
        unknown = sorted(set(overrides) - set(field_names()))
        if unknown:
            raise ConfigError(_unknown_fields_message(unknown))
        return Config(**{"name": self.name, **self.fields, **overrides})


_AUTHORS = dict(
    sizes=(784, 256),
    encoder_activation="tanh",
    decoder_activation="identity",
    circulations=2,
    encoder_target=0,
    encoder_output=1,
    encoder_rule="authors",
    decoder_target="input",
    decoder_output=0,
    feed_from=0,
    input_graph="detach",
    loss_reduction="sum",
    schedule="sequential",
    head="after",
    optimizer="sgd",
    lr=0.01,
    momentum=0.8,
    lr_decay=True,
    epochs=10,
    head_epochs=100,
)
_BP_AE = dict(
    sizes=(784, 256),
    encoder_activation="tanh",
    decoder_activation="identity",
    circulations=1,
    encoder_target=0,
    encoder_output=0,
    encoder_rule="none",
    decoder_target="input",
    decoder_output=0,
    feed_from=0,
    code_graph="keep",
    input_graph="detach",
    head="after",
    optimizer="sgd",
    lr=0.01,
    momentum=0.8,
    epochs=10,
)

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            "reference",
            "The public unofficial implementation as its README trains it: "
            "784-256-64 tanh/sigmoid blocks, two circulations, targets from "
            "circulation 0 and outputs from circulation 1 for both halves, the "
            "circulation-1 code passed up with its graph, every loss summed with "
            "cross-entropy and trained jointly by Adam (lr 1e-3).",
        ),
        Variant(
            "authors",
            "The authors' stacked scripts (CONTEXT.md): 784-256 tanh encoder, "
            "identity decoder, one recirculation; decoder delta rule against the "
            "data with presynaptic first-pass code; encoder rule (h0 - h1) f'(h0) "
            "with presynaptic data (encoder_rule='authors'); first-pass code "
            "passed up; their averaged-momentum SGD at lr 0.01 with decay, summed "
            "errors; linear classifier trained afterwards on frozen codes (Adam, "
            "100 epochs, as their classifier).",
            _AUTHORS,
        ),
        Variant(
            "hinton88",
            "Classic recirculation (Hinton and McClelland 1987) on the authors' "
            "block: regression 0.75 keeps the second pass near the data; decoder "
            "rule against the data, encoder rule from the reconstruction's code "
            "to the data's code.",
            {**_AUTHORS, "regression": 0.75, "encoder_rule": "autograd"},
        ),
        Variant(
            "feedback",
            "The authors' block trained jointly with its head, the head's error "
            "sent down through a fixed random matrix and added to the local "
            "rules (the paper's optional error feedback); mean-reduced local "
            "errors, so the head's error is not drowned by the summed "
            "reconstruction errors; Adam at lr 2e-3, the best of 1e-3, 2e-3 "
            "and 3e-3 after 10 epochs on the bundled sample.",
            {**_AUTHORS, "feedback": "random", "head": "joint", "schedule": "joint",
             "optimizer": "adam", "lr": 2e-3, "lr_decay": False,
             "loss_reduction": "mean"},
        ),
        Variant(
            "tuned",
            "The authors' rule with a constant learning rate of 0.1 (no decay): "
            "the lowest reconstruction error of a small sweep over learning "
            "rate, decay and momentum on the bundled sample (lr 0.2 diverges).",
            {**_AUTHORS, "lr": 0.1, "lr_decay": False},
        ),
        Variant(
            "bp",
            "Baseline: the same 784-256 autoencoder trained end to end by "
            "backprop on reconstruction, with the authors' SGD.",
            _BP_AE,
        ),
        Variant(
            "fa",
            "Baseline: the same autoencoder with the error sent to the encoder "
            "through a fixed random matrix instead of the decoder's transpose "
            "(feedback alignment).",
            {**_BP_AE, "decoder_backward": "random"},
        ),
        Variant(
            "bp-mlp",
            "Baseline: a supervised 784-256-10 tanh MLP trained by backprop on "
            "labels with Adam (lr 1e-3); its decoder is not trained.",
            {
                **_BP_AE,
                "encoder_rule": "none",
                "decoder_rule": "none",
                "code_graph": "detach",
                "head": "joint",
                "head_graph": "keep",
                "optimizer": "adam",
                "lr": 1e-3,
            },
        ),
        Variant(
            "probe-pixels",
            "Baseline: a linear classifier on the raw pixels (no block).",
            {"sizes": (784,), "head": "after", "epochs": 0},
        ),
        Variant(
            "probe-random",
            "Baseline: a linear classifier on an untrained 784-256 tanh encoder.",
            {**_AUTHORS, "epochs": 0},
        ),
    )
}


def get_variant(name: str) -> Variant:
    """The named variant, or a ConfigError listing the known names."""
    if name not in VARIANTS:
        raise ConfigError(
            f"unknown variant {name!r}; known variants: {', '.join(VARIANTS)}"
        )
    return VARIANTS[name]


def parse_value(text: str) -> Any:
    """Parse a ``--set`` value: JSON (numbers, lists, true/false) or a bare string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        if "," in text:
            return [parse_value(part.strip()) for part in text.split(",")]
        return text


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["field=value", ...]`` as a dict, with unknown fields rejected."""
    overrides: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects field=value, got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        if key not in field_names():
            raise ConfigError(_unknown_fields_message([key]))
        overrides[key] = parse_value(text.strip())
    return overrides


def resolve(variant: str = "reference",
            overrides: dict[str, Any] | None = None) -> Config:
    """The config of a named variant with field overrides applied."""
    return get_variant(variant).config(**(overrides or {}))
