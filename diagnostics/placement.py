"""Find the blocks of a protocol model and say what could not be placed.

A *block* is any module with an encoder child and a decoder child (named
``encoder`` and ``decoder`` unless told otherwise). Blocks are numbered in
registration order, which for ``Tourbillon`` and the original stacks is
their index in ``.blocks`` and the ``_{k}`` suffix of the stack's output.
Blocks are not searched for nested blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from tourbillon.errors import ConfigError

ACTIVATION_BOUNDS: dict[type, tuple[float, float]] = {
    nn.Tanh: (-1.0, 1.0),
    nn.Sigmoid: (0.0, 1.0),
    nn.Softsign: (-1.0, 1.0),
}


@dataclass(frozen=True)
class BlockSite:
    """One block found in a model.

    Attributes:
        index: block number ``k`` (tags say ``block{k}``).
        name: qualified name in the model (``""`` when the model is a block).
        module: the block.
        halves: ``{"enc": encoder, "dec": decoder}``.
    """

    index: int
    name: str
    module: nn.Module
    halves: dict[str, nn.Module]

    def half_name(self, half: str, encoder_name: str, decoder_name: str) -> str:
        """Qualified module name of one half, e.g. ``blocks.0.encoder``."""
        child = encoder_name if half == "enc" else decoder_name
        return f"{self.name}.{child}" if self.name else child


@dataclass(frozen=True)
class Unplaced:
    """Something the recorder cannot measure, and why."""

    what: str
    why: str


def locate_blocks(model: nn.Module, encoder_name: str = "encoder",
                  decoder_name: str = "decoder"
                  ) -> tuple[list[BlockSite], list[Unplaced]]:
    """The blocks of ``model`` and the parameterised modules outside them.

    Raises:
        ConfigError: no module of ``model`` has both halves.
    """
    sites: list[BlockSite] = []
    unplaced: list[Unplaced] = []
    inside: set[str] = set()
    for name, module in model.named_modules():
        if any(_within(name, block) for block in inside):
            continue
        children = dict(module.named_children())
        has_enc, has_dec = encoder_name in children, decoder_name in children
        if has_enc and has_dec:
            halves = {"enc": children[encoder_name], "dec": children[decoder_name]}
            sites.append(BlockSite(len(sites), name, module, halves))
            inside.add(name)
        elif has_enc or has_dec:
            found, missing = ((encoder_name, decoder_name) if has_enc
                              else (decoder_name, encoder_name))
            unplaced.append(Unplaced(
                f"module {name or type(module).__name__!r}",
                f"has a {found!r} child but no {missing!r} child, so it is not a "
                "block; pass encoder_name/decoder_name if its halves are named "
                "otherwise"))
    if not sites:
        raise ConfigError(
            f"{type(model).__name__} has no module with both an {encoder_name!r} "
            f"and a {decoder_name!r} child; the recorder needs blocks that follow "
            "the output protocol (pass encoder_name/decoder_name if the halves "
            "are named otherwise)")
    unplaced += _outside_blocks(model, {s.name for s in sites})
    return sites, unplaced


def _outside_blocks(model: nn.Module, block_names: set[str]) -> list[Unplaced]:
    """Modules with their own parameters that lie in no block."""
    found = []
    for name, module in model.named_modules():
        in_block = any(_within(name, block) for block in block_names)
        if in_block or not any(True for _ in module.parameters(recurse=False)):
            continue
        found.append(Unplaced(
            f"module {name!r}",
            "its parameters lie outside every block's encoder and decoder, so "
            "its activations and gradients are not recorded"))
    return found


def _within(name: str, prefix: str) -> bool:
    """Whether module ``name`` is ``prefix`` or lies inside it."""
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def activation_bounds(half: nn.Module) -> tuple[float, float] | None:
    """The output range of a half whose last module is a bounded activation."""
    last = list(half.modules())[-1]
    if isinstance(last, nn.Hardtanh):
        return (float(last.min_val), float(last.max_val))
    return ACTIVATION_BOUNDS.get(type(last))
