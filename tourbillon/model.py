"""Circular autoencoder blocks and the Tourbillon stack, for every variant.

One block walks its loop ``circulations`` times: circulation ``i`` encodes the
visible state into a code and decodes the code into a reconstruction. Which
results become the rules' targets and outputs, and which graphs are kept, is
read from a :class:`~tourbillon.config.Config`; there is no other copy of the
model per variant.

Every block returns the original output protocol (``enc_target``,
``enc_output``, ``dec_target``, ``dec_output``) plus ``code``, the code passed
up (with its graph to this block's encoder), for the authors' encoder rule
``enc_presyn``: the target circulation's code with its graph, and the rules'
detached presynaptic inputs: ``enc_input``, the visible state the encoder
rule's circulation encodes (the target's for the authors' rule, the
output's otherwise), and ``dec_input``, the code decoded at ``decoder_output``.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import Config, expand_per_block
from .errors import ConfigError, DataError

log = logging.getLogger(__name__)

PROTOCOL_KEYS = ("enc_target", "enc_output", "dec_target", "dec_output")
ACTIVATION_RANGES = {
    "tanh": (-1.0, 1.0),
    "sigmoid": (0.0, 1.0),
    "relu": (0.0, math.inf),
    "identity": (-math.inf, math.inf),
}


def make_activation(name: str) -> nn.Module:
    """The unit nonlinearity called ``name``."""
    table = {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "identity": nn.Identity,
             "relu": nn.ReLU}
    if name not in table:
        raise ConfigError(
            f"unknown activation {name!r}; choose one of {', '.join(table)}")
    return table[name]()


def _cut(t: Tensor) -> Tensor:
    """``t`` without its graph; ``t`` itself when it has none (no alias made)."""
    return t.detach() if t.requires_grad else t


def decoder_activation_for(config: Config, block: int) -> str:
    """The decoder activation of ``block``, resolving ``match`` to the input range."""
    if config.decoder_activation != "match":
        return config.decoder_activation
    return "sigmoid" if block == 0 else config.encoder_activation


class RandomFeedback(nn.Module):
    """A Linear or ConvTranspose2d whose input gets its error through fixed weights.

    The forward value is the wrapped layer's; the weight gradient is the exact
    one; only the error sent back to the layer's input uses ``feedback``, a
    fixed Xavier-uniform matrix of the weight's shape (feedback alignment).
    """

    def __init__(self, layer: nn.Linear | nn.ConvTranspose2d) -> None:
        super().__init__()
        if not isinstance(layer, (nn.Linear, nn.ConvTranspose2d)):
            raise ConfigError(
                "random feedback supports Linear and ConvTranspose2d, "
                f"not {type(layer)}"
            )
        self.layer = layer
        feedback = torch.empty_like(layer.weight)
        nn.init.xavier_uniform_(feedback)
        self.register_buffer("feedback", feedback)

    @property
    def weight(self) -> Tensor:
        return self.layer.weight

    def _apply_weight(self, h: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        layer = self.layer
        if isinstance(layer, nn.Linear):
            return F.linear(h, weight, bias)
        return F.conv_transpose2d(h, weight, bias, layer.stride, layer.padding,
                                  layer.output_padding, layer.groups, layer.dilation)

    def forward(self, h: Tensor) -> Tensor:
        out = self._apply_weight(h.detach(), self.layer.weight, self.layer.bias)
        if h.requires_grad:
            # Same value, but d out / d h goes through the fixed random weights.
            through_feedback = self._apply_weight(h, self.feedback, None)
            out = out + (through_feedback - through_feedback.detach())
        return out


class CircularBlock(nn.Module):
    """One circular autoencoder: ``encoder`` and ``decoder`` walked as a loop.

    Args:
        encoder: maps the visible state to a code (a layer then an activation).
        decoder: maps a code back to the visible space.
        config: the rule (circulations, target/output indices, regression,
            which graphs are kept).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, config: Config) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.config = config
        c = config
        dec_target = c.decoder_target if c.decoder_target != "input" else -1
        self._last = max(c.encoder_target, c.encoder_output, c.decoder_output,
                         dec_target, c.feed_from)
        self._decoded = {c.decoder_output, dec_target}
        self._encoder_rule_at = (c.encoder_target if c.encoder_rule == "authors"
                                 else c.encoder_output)

    def forward(self, x: Tensor, keep_all: bool = False) -> dict[str, Tensor]:
        """Walk the loop from ``x``.

        Args:
            x: block input, ``(B, D)`` or ``(B, C, H, W)``.
            keep_all: walk every circulation and also return ``codes`` and
                ``reconstructions`` (lists, one entry per circulation).

        Returns:
            The protocol tensors, ``code``, ``enc_input``, ``dec_input`` and
            (authors' rule) ``enc_presyn``.
        """
        self._check_input(x)
        c = self.config
        encoder, decoder = self.encoder, self.decoder
        last = c.circulations - 1 if keep_all else self._last
        lam = c.regression
        out: dict[str, Tensor] = {}
        codes, reconstructions = [], []
        visible = x if c.input_graph == "keep" else _cut(x)
        for i in range(last + 1):
            # Encoder half: the code of the visible state.
            code = encoder(visible)
            if i == self._encoder_rule_at:
                out["enc_input"] = _cut(visible)
            if i == c.encoder_output:
                out["enc_output"] = code
            if i == c.feed_from:
                out["code"] = code
            if i == c.encoder_target:
                out["enc_target"] = _cut(code)
                if c.encoder_rule == "authors":
                    out["enc_presyn"] = code
            codes.append(code)
            if not keep_all and i == last and i not in self._decoded:
                break

            # Decoder half: reconstruct from the (detached) code.
            code_in = code if c.code_graph == "keep" else _cut(code)
            reconstruction = decoder(code_in)
            if i == c.decoder_output:
                out["dec_input"] = _cut(code_in)
                out["dec_output"] = reconstruction
            if i == c.decoder_target:
                out["dec_target"] = _cut(reconstruction)
            reconstructions.append(reconstruction)

            # The next circulation starts from the detached (regressed) state.
            next_visible = _cut(reconstruction)
            if lam > 0.0:
                next_visible = lam * _cut(visible) + (1 - lam) * next_visible
            visible = next_visible
        if c.decoder_target == "input":
            out["dec_target"] = _cut(x)
        if keep_all:
            out["codes"] = codes  # type: ignore[assignment]
            out["reconstructions"] = reconstructions  # type: ignore[assignment]
        return out

    def _check_input(self, x: Tensor) -> None:
        # (iterating a Sequential is cheaper than indexing it)
        half = self.encoder
        layer = next(iter(half)) if isinstance(half, nn.Sequential) else None
        if isinstance(layer, nn.Linear):
            if x.dim() != 2 or x.shape[1] != layer.in_features:
                raise DataError(f"expected block input of shape "
                                f"(B, {layer.in_features}), got {tuple(x.shape)}")
        elif isinstance(layer, nn.Conv2d):
            if x.dim() != 4 or x.shape[1] != layer.in_channels:
                raise DataError(f"expected block input of shape "
                                f"(B, {layer.in_channels}, H, W), got {tuple(x.shape)}")

    @property
    def encoder_weight(self) -> Tensor:
        """The encoder's weight (A)."""
        return _first_weight(self.encoder)

    @property
    def decoder_weight(self) -> Tensor:
        """The decoder's weight (B)."""
        return _first_weight(self.decoder)


def _first_weight(module: nn.Module) -> Tensor:
    for name, p in module.named_parameters():
        if name.endswith("weight"):
            return p
    raise ConfigError(f"{type(module).__name__} has no weight parameter")


# -- builders -----------------------------------------------------------------------


def linear_block(config: Config, block: int, d_in: int, d_hidden: int) -> CircularBlock:
    """A fully connected block: Linear+activation each way."""
    decoder_layer: nn.Module = nn.Linear(d_hidden, d_in)
    if config.decoder_backward == "random":
        decoder_layer = RandomFeedback(decoder_layer)
    encoder = nn.Sequential(nn.Linear(d_in, d_hidden),
                            make_activation(config.encoder_activation))
    decoder = nn.Sequential(decoder_layer,
                            make_activation(decoder_activation_for(config, block)))
    return CircularBlock(encoder, decoder, config)


def conv_block(config: Config, block: int, c_in: int, c_hidden: int,
               output_padding: tuple[int, int] = (0, 0)) -> CircularBlock:
    """A convolutional block: Conv2d+activation, ConvTranspose2d+activation."""
    kernel = config.per_block("kernel_sizes")[block]
    stride = config.per_block("strides")[block]
    padding = config.per_block("paddings")[block]
    decoder_layer: nn.Module = nn.ConvTranspose2d(
        c_hidden, c_in, kernel, stride, padding, output_padding)
    if config.decoder_backward == "random":
        decoder_layer = RandomFeedback(decoder_layer)
    encoder = nn.Sequential(nn.Conv2d(c_in, c_hidden, kernel, stride, padding),
                            make_activation(config.encoder_activation))
    decoder = nn.Sequential(decoder_layer,
                            make_activation(decoder_activation_for(config, block)))
    return CircularBlock(encoder, decoder, config)


class Tourbillon(nn.Module):
    """A stack of circular autoencoders with an optional linear head.

    Each block's input is the code passed up by the block below (``code``,
    detached unless ``input_graph='keep'``); the head reads the top code,
    flattened, detached unless ``head_graph='keep'``.

    Args:
        config: the variant.

    Shape:
        input ``(B, sizes[0])`` for linear stacks, ``(B, C, H, W)`` for conv.
    """

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList(self._build_blocks(config))
        self.code_shapes = self._probe_code_shapes()
        features = math.prod(self.code_shapes[-1])
        self.head: nn.Linear | None = None
        if config.classes > 0:
            self.head = nn.Linear(features, config.classes)
            nn.init.xavier_uniform_(self.head.weight)
        if config.feedback == "random":
            for k, shape in enumerate(self.code_shapes[1:]):
                matrix = torch.empty(config.classes, math.prod(shape))
                nn.init.xavier_uniform_(matrix)
                self.register_buffer(f"feedback_{k}", matrix)

    @staticmethod
    def _build_blocks(config: Config) -> list[CircularBlock]:
        if config.arch == "linear":
            s = config.sizes
            return [linear_block(config, k, s[k], s[k + 1]) for k in range(len(s) - 1)]
        ch, size, blocks = config.channels, config.input_size, []
        for k in range(len(ch) - 1):
            size, extra = _conv_sizes(config, k, size)
            blocks.append(conv_block(config, k, ch[k], ch[k + 1], extra))
        return blocks

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, without the batch dimension."""
        if self.config.arch == "linear":
            return (self.config.sizes[0],)
        return (self.config.channels[0], *self.config.input_size)

    def _probe_code_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the input and of every block's code, from a real forward."""
        shapes = [self.input_shape]
        x = torch.zeros(1, *self.input_shape)
        with torch.no_grad():
            for k, block in enumerate(self.blocks):
                code = block.encoder(x)
                back = block.decoder(code)
                if back.shape != x.shape:
                    raise ConfigError(
                        f"block {k} maps inputs of shape {tuple(x.shape[1:])} to codes "
                        f"{tuple(code.shape[1:])} and back to {tuple(back.shape[1:])}; "
                        "choose kernel_sizes, strides and paddings whose transposed "
                        "convolution restores the input size")
                x = code
                shapes.append(tuple(x.shape[1:]))
        return shapes

    def check_input(self, x: Tensor) -> None:
        """Raise DataError unless ``x`` is a batch of this model's inputs."""
        expected = self.input_shape
        if x.dim() != len(expected) + 1 or tuple(x.shape[1:]) != expected:
            raise DataError(
                f"expected input of shape (B, {', '.join(map(str, expected))}), "
                f"got {tuple(x.shape)}"
            )

    def forward(self, x: Tensor, upto: int | None = None) -> dict[str, Tensor]:
        """Run blocks ``0..upto``, or all blocks and the head when ``upto`` is None.

        Returns:
            ``{key}_{k}`` for every block output key, and ``output`` (head
            logits, or the flattened top code when there is no head).
        """
        self.check_input(x)
        blocks = self.blocks
        if upto is not None and not 0 <= upto < len(blocks):
            raise ValueError(f"upto={upto}, but the blocks are 0 to {len(blocks) - 1}")
        top = len(blocks) - 1 if upto is None else upto
        detach = self.config.input_graph == "detach"
        out: dict[str, Tensor] = {}
        code = x
        for k, block in enumerate(blocks):  # (slicing a ModuleList makes a module)
            if k > top:
                break
            result = block(code)
            suffix = f"_{k}"
            for key, value in result.items():
                out[key + suffix] = value
            code = _cut(result["code"]) if detach else result["code"]
        if upto is None:
            features = out[f"code_{top}"] if self.blocks else x
            if self.config.head_graph == "detach":
                features = features.detach()
            features = features.flatten(1)
            out["output"] = self.head(features) if self.head is not None else features
        return out

    def codes(self, x: Tensor) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Per block: (first-pass code, code passed up, first reconstruction).

        Computed without gradients; the first entry's input is ``x``.
        """
        self.check_input(x)
        result = []
        with torch.no_grad():
            code = x
            for block in self.blocks:
                out = block(code, keep_all=True)
                result.append((out["codes"][0], out["code"], out["reconstructions"][0]))
                code = out["code"]
        return result


# -- the original API -----------------------------------------------------------------


def _original_rule(num_circulations: int, target: int, output: int, **arch) -> Config:
    return Config(
        name="reference",
        circulations=num_circulations,
        encoder_target=target,
        encoder_output=output,
        decoder_target=target,
        decoder_output=output,
        feed_from=output,
        **arch,
    )


class _ProtocolOnly:
    """Mixin: forward returns exactly the original output keys."""

    def _protocol(self, out: dict[str, Tensor],
                  suffixes: list[str]) -> dict[str, Tensor]:
        keys = [f"{k}{s}" for s in suffixes for k in PROTOCOL_KEYS]
        if "output" in out:
            keys.append("output")
        return {k: out[k] for k in keys}


class TourbillonBuildingBlockLinear(_ProtocolOnly, CircularBlock):
    """The original linear circular autoencoder (Linear+tanh, Linear+sigmoid)."""

    def __init__(self, in_features: int, hidden_features: int,
                 num_circulations: int = 2, target_circulation: int = 0,
                 output_circulation: int = 1) -> None:
        config = _original_rule(num_circulations, target_circulation,
                                output_circulation,
                                sizes=(in_features, hidden_features))
        block = linear_block(config, 0, in_features, hidden_features)
        super().__init__(block.encoder, block.decoder, config)

    def forward(self, x: Tensor) -> dict[str, Tensor]:  # type: ignore[override]
        return self._protocol(super().forward(x), [""])


class TourbillonBuildingBlockConv(_ProtocolOnly, CircularBlock):
    """The original convolutional circular autoencoder (Conv2d+tanh, ConvT+sigmoid)."""

    def __init__(self, in_channels: int, hidden_channels: int,
                 kernel_size: int | tuple[int, int], stride: int | tuple[int, int] = 1,
                 padding: int | tuple[int, int] = 0, num_circulations: int = 2,
                 target_circulation: int = 0, output_circulation: int = 1) -> None:
        config = _original_rule(
            num_circulations, target_circulation, output_circulation, arch="conv",
            channels=(in_channels, hidden_channels), kernel_sizes=[kernel_size],
            strides=[stride], paddings=[padding],
        )
        block = conv_block(config, 0, in_channels, hidden_channels)
        super().__init__(block.encoder, block.decoder, config)

    def forward(self, x: Tensor) -> dict[str, Tensor]:  # type: ignore[override]
        return self._protocol(super().forward(x), [""])


class TourbillonLinear(_ProtocolOnly, Tourbillon):
    """The original linear stack: ``sizes=[input, hidden, ...]`` and a linear head."""

    def __init__(self, sizes: list[int], classes: int, num_circulations: int = 2,
                 target_circulation: int = 0, output_circulation: int = 1) -> None:
        super().__init__(_original_rule(num_circulations, target_circulation,
                                        output_circulation, sizes=tuple(sizes),
                                        classes=classes))

    def forward(self, x: Tensor) -> dict[str, Tensor]:  # type: ignore[override]
        out = super().forward(x)
        return self._protocol(out, [f"_{k}" for k in range(len(self.blocks))])


class TourbillonConv(_ProtocolOnly, Tourbillon):
    """The original convolutional stack.

    ``kernel_sizes``, ``strides`` and ``paddings`` are one value for every block
    (an int or an ``(h, w)`` tuple) or a list with one value per block.
    """

    def __init__(self, input_size: tuple[int, int], channels: list[int],
                 kernel_sizes, strides, paddings, classes: int,
                 num_circulations: int = 2, target_circulation: int = 0,
                 output_circulation: int = 1) -> None:
        blocks = len(channels) - 1
        geometry = {
            name: _per_block_list(name, value, blocks)
            for name, value in (("kernel_sizes", kernel_sizes), ("strides", strides),
                                ("paddings", paddings))
        }
        super().__init__(_original_rule(
            num_circulations, target_circulation, output_circulation, arch="conv",
            channels=tuple(channels), input_size=tuple(input_size), classes=classes,
            **geometry,
        ))

    def forward(self, x: Tensor) -> dict[str, Tensor]:  # type: ignore[override]
        out = super().forward(x)
        return self._protocol(out, [f"_{k}" for k in range(len(self.blocks))])


def _conv_sizes(config: Config, k: int, size: tuple[int, int]
                ) -> tuple[tuple[int, int], tuple[int, int]]:
    """Block ``k``'s code size from input ``size``, and the transposed
    convolution's output padding that restores ``size``."""
    kernel = config.per_block("kernel_sizes")[k]
    stride = config.per_block("strides")[k]
    padding = config.per_block("paddings")[k]
    code, extra = [], []
    for n, kk, s, p in zip(size, kernel, stride, padding):
        c = (n + 2 * p - kk) // s + 1
        back = (c - 1) * s - 2 * p + kk
        if c < 1 or not 0 <= n - back < s:
            raise ConfigError(
                f"block {k}: kernel_sizes={kernel}, strides={stride}, "
                f"paddings={padding} "
                f"cannot map a {size[0]}x{size[1]} input to a code and back to the "
                "same size")
        code.append(c)
        extra.append(n - back)
    return (code[0], code[1]), (extra[0], extra[1])


def _per_block_list(name: str, value, blocks: int) -> list[tuple[int, int]]:
    """A tuple or int means one value for all blocks; a list means one per block."""
    if isinstance(value, (int, tuple)):
        value = [value] * blocks
    return expand_per_block(name, list(value), blocks)
