"""Static facts of a protocol model: output ranges, targets, observed inputs.

The rules compare recorded quantities with what a block can do at all: the
range its decoder's final activation can produce, the spread and range of
the input it must reconstruct, and which circulation each rule takes its
target from. :func:`facts_from_model` reads these from the modules and from
one no-grad forward of a batch; :class:`ModelFacts` saves them as
``facts.json`` in the run directory.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor, nn

from tourbillon.errors import DataError

from ..placement import locate_blocks

FACTS = "facts.json"
PROTOCOL_KEYS = ("enc_target", "enc_output", "dec_target", "dec_output")
SATURATION_MARGIN = 0.01  # of the range, as the recorder's ``saturated``
CONSTANT_TOLERANCE = 1e-6  # batch std at or below which a unit is constant

Range = tuple[float, float]
Circulation = Union[int, str, None]  # an index, "input", or unknown

_INF = math.inf
# Output ranges of final modules; None marks a class read from its fields.
_RANGES: dict[type, Range] = {
    nn.Sigmoid: (0.0, 1.0), nn.Tanh: (-1.0, 1.0), nn.Softsign: (-1.0, 1.0),
    nn.Hardsigmoid: (0.0, 1.0), nn.Softmax: (0.0, 1.0), nn.ReLU: (0.0, _INF),
    nn.Softplus: (0.0, _INF), nn.SiLU: (-0.2785, _INF), nn.GELU: (-0.1700, _INF),
    nn.Mish: (-0.3089, _INF), nn.SELU: (-1.7581, _INF), nn.Identity: (-_INF, _INF),
    nn.LeakyReLU: (-_INF, _INF), nn.PReLU: (-_INF, _INF), nn.Linear: (-_INF, _INF),
    nn.Conv1d: (-_INF, _INF), nn.Conv2d: (-_INF, _INF), nn.Conv3d: (-_INF, _INF),
    nn.ConvTranspose1d: (-_INF, _INF), nn.ConvTranspose2d: (-_INF, _INF),
    nn.ConvTranspose3d: (-_INF, _INF),
}


def final_module(half: nn.Module) -> nn.Module:
    """The module whose result a half returns, through nested Sequentials."""
    module = half
    while isinstance(module, nn.Sequential) and len(module) > 0:
        module = module[-1]
    return module


def output_range(half: nn.Module) -> Range | None:
    """The range a half's result can take, from its final module; None if unknown.

    Known: bounded activations (Sigmoid, Tanh, Softsign, Hardtanh and
    subclasses such as ReLU6, Hardsigmoid, Softmax), one-sided ones (ReLU,
    Softplus, ELU, CELU, SELU, GELU, SiLU, Mish) and unbounded ones
    (Identity, LeakyReLU, PReLU, Linear, convolutions). Any other module,
    such as a custom module whose ``forward`` applies a function, is unknown:
    its last registered child need not be the last thing it computes.
    """
    last = final_module(half)
    if isinstance(last, nn.Hardtanh):  # ReLU6 too
        return (float(last.min_val), float(last.max_val))
    if isinstance(last, (nn.ELU, nn.CELU)):
        return (-float(last.alpha), _INF)
    for kind, bounds in _RANGES.items():
        if type(last) is kind:
            return bounds
    return None


@dataclass(frozen=True)
class BlockFacts:
    """What one block can produce and what it is asked to reconstruct.

    Attributes:
        block: block number ``k``.
        name: the block's qualified module name.
        encoder_module, decoder_module: class names of each half's final
            module.
        encoder_range, decoder_range: ``(low, high)`` output ranges (may be
            infinite), or None when unknown.
        circulations: encoder calls in one forward.
        enc_target, enc_output, dec_target, dec_output, code: the circulation
            each protocol tensor (and the code passed up) was taken from,
            ``"input"`` for the block input, None when it matched no call.
        parameters: parameter names per half (``{"enc": [...], "dec": [...]}``).
        input_source: the call whose result is the block input, as a tag
            prefix (``block0/enc/c0``), or None (the data, or no match).
        examples: batch size the input was observed on.
        input_min, input_max: the block input's observed range.
        input_batch_std: mean over units of the input's std across the batch
            (the recorder's ``batch_std`` of the input).
        input_mean_mse: MSE of predicting every unit by its batch mean.
        input_constant: share of input units constant over the batch.
        input_outside_decoder: share of input elements outside the
            decoder's range (None when the range is unknown).
        input_clamp_mse: mean squared distance from the input to the decoder
            range: no reconstruction inside the range can do better.
        input_at_decoder_bounds: share of input elements within 1% of the
            range of a bound of a bounded decoder.
        decoder_min, decoder_max: observed range of the first reconstruction.
    """

    block: int
    name: str = ""
    encoder_module: str = ""
    decoder_module: str = ""
    encoder_range: Range | None = None
    decoder_range: Range | None = None
    circulations: int | None = None
    enc_target: Circulation = None
    enc_output: Circulation = None
    dec_target: Circulation = None
    dec_output: Circulation = None
    code: Circulation = None
    parameters: dict[str, tuple[str, ...]] = field(default_factory=dict)
    input_source: str | None = None
    examples: int = 0
    input_min: float = math.nan
    input_max: float = math.nan
    input_batch_std: float = math.nan
    input_mean_mse: float = math.nan
    input_constant: float = math.nan
    input_outside_decoder: float | None = None
    input_clamp_mse: float | None = None
    input_at_decoder_bounds: float | None = None
    decoder_min: float = math.nan
    decoder_max: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["parameters"] = {h: list(v) for h, v in self.parameters.items()}
        return _encode(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BlockFacts":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DataError(f"unknown block fact(s) {unknown}")
        values = _decode(dict(data))
        for name in ("encoder_range", "decoder_range"):
            if values.get(name) is not None:
                values[name] = tuple(float(v) for v in values[name])
        values["parameters"] = {h: tuple(v) for h, v in
                                (values.get("parameters") or {}).items()}
        return cls(**values)


@dataclass(frozen=True)
class ModelFacts:
    """Static facts of every block of one model.

    Attributes:
        model: the model's class name.
        blocks: one :class:`BlockFacts` per block, in block order.
    """

    model: str
    blocks: tuple[BlockFacts, ...]

    def block(self, k: int) -> BlockFacts | None:
        for b in self.blocks:
            if b.block == k:
                return b
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "blocks": [b.to_dict() for b in self.blocks]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelFacts":
        if not isinstance(data, Mapping) or "blocks" not in data:
            raise DataError("model facts need a 'blocks' list")
        return cls(str(data.get("model", "")),
                   tuple(BlockFacts.from_dict(b) for b in data["blocks"]))

    def save(self, path: str | Path) -> Path:
        """Write JSON to ``path``; a path not ending in ``.json`` is a directory
        (created if missing) that gets ``facts.json``."""
        path = Path(path)
        if path.suffix != ".json":
            path.mkdir(parents=True, exist_ok=True)
            path = path / FACTS
        path.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ModelFacts":
        """Read what :meth:`save` wrote (a directory means its ``facts.json``)."""
        path = Path(path)
        if path.suffix != ".json":
            path = path / FACTS
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(f"no model facts at {path}") from None
        except json.JSONDecodeError as error:
            raise DataError(f"{path} is not valid JSON ({error})") from None
        return cls.from_dict(data)


# -- JSON has no infinities or NaN: they are written as strings ----------------------


def _encode(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "inf", "-inf", "nan"
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if value in ("inf", "-inf", "nan"):
        return float(value)
    return value


# -- observing a model ----------------------------------------------------------------


def facts_from_model(model: nn.Module, x: Tensor, *, encoder_name: str = "encoder",
                     decoder_name: str = "decoder") -> ModelFacts:
    """Facts of every block of a protocol model, from its modules and one forward.

    The forward runs in eval mode under ``no_grad`` (modes are restored);
    every encoder and decoder call is numbered with its circulation, each
    protocol tensor is matched to the call (or the block input) it equals,
    and the block input's spread and range are measured.

    Args:
        model: a ``Tourbillon``-like stack or block; blocks are the modules
            with both an ``encoder_name`` and a ``decoder_name`` child.
        x: a batch the model accepts, ``(B, ...)`` with ``B >= 2``.
    """
    if x.shape[0] < 2:
        raise DataError(f"facts need a batch of at least 2 examples, got {x.shape[0]}")
    sites, _ = locate_blocks(model, encoder_name, decoder_name)
    seen = _observe(model, x, sites)
    blocks = []
    for site in sites:
        calls = seen["calls"].get(site.index, {"enc": [], "dec": []})
        inputs = seen["inputs"].get(site.index)
        output = seen["outputs"].get(site.index)
        if not isinstance(output, Mapping):
            output = _suffixed(seen["model"], site.index, len(sites))
        facts = _block_facts(site, calls, inputs, output)
        source = _source(inputs, seen["calls"], site.index)
        blocks.append(dataclasses.replace(facts, input_source=source))
    return ModelFacts(type(model).__name__, tuple(blocks))


def _observe(model: nn.Module, x: Tensor, sites: list) -> dict[str, Any]:
    """Block inputs and outputs and every half call of one no-grad forward."""
    seen: dict[str, Any] = {"inputs": {}, "outputs": {}, "calls": {}}
    handles = []

    def block_start(k, module, args):
        if k not in seen["inputs"] and args and isinstance(args[0], Tensor):
            seen["inputs"][k] = args[0].detach()
        seen["calls"].setdefault(k, {"enc": [], "dec": []})

    def block_end(k, module, args, output):
        seen["outputs"].setdefault(k, output)

    def half_call(k, half, module, args, output):
        if isinstance(output, Tensor):
            seen["calls"].setdefault(k, {"enc": [], "dec": []})[half].append(
                output.detach())

    modes = [(m, m.training) for m in model.modules()]
    try:
        for site in sites:
            k = site.index
            handles.append(site.module.register_forward_pre_hook(
                lambda m, a, k=k: block_start(k, m, a)))
            handles.append(site.module.register_forward_hook(
                lambda m, a, o, k=k: block_end(k, m, a, o)))
            for half, part in site.halves.items():
                handles.append(part.register_forward_hook(
                    lambda m, a, o, k=k, h=half: half_call(k, h, m, a, o)))
        model.eval()
        with torch.no_grad():
            seen["model"] = model(x)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:
            module.training = training
    return seen


def _suffixed(out: Any, k: int, blocks: int) -> dict[str, Tensor]:
    """Block ``k``'s protocol tensors from a stack's output dict."""
    if not isinstance(out, Mapping):
        return {}
    suffix = f"_{k}"
    found = {key: out[key + suffix] for key in PROTOCOL_KEYS if key + suffix in out}
    if not found and blocks == 1:
        found = {key: out[key] for key in PROTOCOL_KEYS if key in out}
    return found


def _match(tensor: Any, calls: list[Tensor], x: Tensor | None) -> Circulation:
    """The circulation whose call equals ``tensor``, or ``"input"``, or None."""
    if not isinstance(tensor, Tensor):
        return None
    for i, call in enumerate(calls):
        if call.shape == tensor.shape and torch.equal(call, tensor.detach()):
            return i
    if x is not None and x.shape == tensor.shape and torch.equal(x, tensor.detach()):
        return "input"
    return None


def _source(x: Tensor | None, calls: dict[int, dict[str, list[Tensor]]],
            block: int) -> str | None:
    """The tag prefix of a lower block's call whose result equals ``x``."""
    if x is None:
        return None
    for k in sorted(calls):
        if k >= block:
            continue
        for half in ("enc", "dec"):
            circulation = _match(x, calls[k][half], None)
            if isinstance(circulation, int):
                return f"block{k}/{half}/c{circulation}"
    return None


def _block_facts(site, calls: dict[str, list[Tensor]], x: Tensor | None,
                 output: Mapping[str, Any]) -> BlockFacts:
    enc, dec = site.halves["enc"], site.halves["dec"]
    decoder_range = output_range(dec)
    values: dict[str, Any] = dict(
        block=site.index, name=site.name,
        encoder_module=type(final_module(enc)).__name__,
        decoder_module=type(final_module(dec)).__name__,
        encoder_range=output_range(enc), decoder_range=decoder_range,
        circulations=len(calls["enc"]),
        parameters={"enc": tuple(n for n, _ in enc.named_parameters()),
                    "dec": tuple(n for n, _ in dec.named_parameters())},
    )
    for key in PROTOCOL_KEYS:
        values[key] = _match(output.get(key), calls[key[:3]], x)
    values["code"] = _match(output.get("code"), calls["enc"], x)
    if calls["dec"]:
        first = calls["dec"][0].float()
        values.update(decoder_min=float(first.min()), decoder_max=float(first.max()))
    if x is not None:
        values.update(input_stats(x, decoder_range))
    return BlockFacts(**values)


def input_stats(x: Tensor, decoder_range: Range | None) -> dict[str, Any]:
    """Range and spread of a block input, and how it sits in the decoder range.

    Args:
        x: ``(B, ...)`` block input; a *unit* is one element of an example.
        decoder_range: the decoder's ``(low, high)``, or None.
    """
    B = x.shape[0]
    units = x.detach().flatten(1).double()  # (B, U)
    unit_std = units.std(dim=0, correction=0)  # (U,)
    stats: dict[str, Any] = {
        "examples": B,
        "input_min": float(units.min()), "input_max": float(units.max()),
        "input_batch_std": float(unit_std.mean()),
        "input_mean_mse": float(unit_std.pow(2).mean()),
        "input_constant": float((unit_std <= CONSTANT_TOLERANCE).double().mean()),
    }
    if decoder_range is not None:
        low, high = decoder_range
        clamped = units.clamp(min=low, max=high)
        stats["input_outside_decoder"] = float((clamped != units).double().mean())
        stats["input_clamp_mse"] = float((clamped - units).pow(2).mean())
        if math.isfinite(low) and math.isfinite(high):
            margin = SATURATION_MARGIN * (high - low)
            near = (units <= low + margin) | (units >= high - margin)
            stats["input_at_decoder_bounds"] = float(near.double().mean())
    return stats
