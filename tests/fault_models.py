"""Protocol models with planted faults, for end-to-end tests of the detectors.

Every factory takes no required argument and returns a two-block stack
(784 -> 64 -> 32, ten-class linear head) that follows the output protocol:
``model.blocks[k]`` has ``encoder`` and ``decoder`` children, returns
``enc_target``, ``enc_output``, ``dec_target``, ``dec_output`` and ``code``,
and the stack returns those keys with a ``_{k}`` suffix plus ``output``
(logits). Trained with the original README recipe (sum of the MSE of every
protocol pair plus cross-entropy, Adam at lr 1e-3), each fault is found by
one rule at a known place (``EXPECTED``).

Blocks are tanh encoders and linear (identity) decoders, as in the
authors' code. Each block walks two circulations: ``h0 = E(x)``, ``x1 = D(h0)``,
``h1 = E(x1)``, ``x2 = D(h1)``. The decoder rule pulls ``x1`` toward the
block input with the code's graph kept, so the healthy stack learns as an
autoencoder; the encoder rule pulls ``h1`` toward ``h0`` (detached).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

PROTOCOL = ("enc_target", "enc_output", "dec_target", "dec_output")
SIZES = (784, 64, 32)
CLASSES = 10


class LoopBlock(nn.Module):
    """One circular autoencoder walked twice.

    Args:
        encoder, decoder: the halves.
        detach_encoder: detach the encoder's output before its rule and
            before the decoder, so no loss reaches the encoder.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module,
                 detach_encoder: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.detach_encoder = detach_encoder

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h0 = self.encoder(x)
        if self.detach_encoder:
            h0 = h0.detach()
        x1 = self.decoder(h0)
        h1 = self.encoder(x1.detach())
        if self.detach_encoder:
            h1 = h1.detach()
        self.decoder(h1.detach())  # circulation 1's reconstruction (recorded only)
        return {"enc_target": h0.detach(), "enc_output": h1,
                "dec_target": x.detach(), "dec_output": x1, "code": h0}


class StepCounter:
    """Counts the stack's training forwards (one per training step)."""

    def __init__(self) -> None:
        self.value = 0


class Stack(nn.Module):
    """Blocks fed bottom-up with detached codes, and a linear head on the top code."""

    def __init__(self, blocks: list[LoopBlock], counter: StepCounter | None = None
                 ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(SIZES[-1], CLASSES)
        self.counter = counter or StepCounter()

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if self.training and torch.is_grad_enabled():
            self.counter.value += 1
        out: dict[str, Tensor] = {}
        code = x
        for k, block in enumerate(self.blocks):
            result = block(code)
            for key in PROTOCOL:
                out[f"{key}_{k}"] = result[key]
            code = result["code"].detach()
        out["output"] = self.head(code)
        return out


class IgnoreInput(nn.Module):
    """Multiplies its input by zero: whatever follows sees the same input."""

    def forward(self, x: Tensor) -> Tensor:
        return x * 0.0


class NaNAfter(nn.Module):
    """Passes its input through until training forward ``after``, then gives NaN.

    Forwards are counted by the stack (training mode with gradients only), so
    evaluation, probe forwards and any extra call of the module within a
    step do not move the onset: every call from training step ``after + 1``
    on returns NaN, the first of them at circulation 0.
    """

    def __init__(self, counter: StepCounter, after: int) -> None:
        super().__init__()
        self.counter = counter
        self.after = after

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self.counter.value > self.after:
            return x * math.nan
        return x


def _halves(k: int, decoder_activation: type[nn.Module] | None = None
            ) -> tuple[nn.Sequential, nn.Sequential]:
    """Linear + tanh encoder; linear decoder + ``decoder_activation`` (identity)."""
    d_in, d_hidden = SIZES[k], SIZES[k + 1]
    activation = decoder_activation or nn.Identity
    encoder = nn.Sequential(nn.Linear(d_in, d_hidden), nn.Tanh())
    decoder = nn.Sequential(nn.Linear(d_hidden, d_in), activation())
    return encoder, decoder


def _stack(counter: StepCounter | None = None, **changes: LoopBlock) -> Stack:
    """The healthy stack with block ``block{k}`` replaced where given."""
    torch.manual_seed(0)
    blocks = [LoopBlock(*_halves(k)) for k in range(len(SIZES) - 1)]
    for name, block in changes.items():
        blocks[int(name.removeprefix("block"))] = block
    return Stack(blocks, counter)


def healthy() -> Stack:
    """No fault: reconstruction error falls and codes keep label information."""
    return _stack()


def detached_encoder() -> Stack:
    """Block 0's encoder output is detached before every rule: it never learns."""
    torch.manual_seed(0)
    return _stack(block0=LoopBlock(*_halves(0), detach_encoder=True))


def constant_decoder() -> Stack:
    """Block 1's decoder ignores its code: every reconstruction is the same."""
    torch.manual_seed(0)
    encoder, decoder = _halves(1)
    return _stack(block1=LoopBlock(encoder, nn.Sequential(IgnoreInput(), *decoder)))


def saturating_init(scale: float = 30.0) -> Stack:
    """Block 0's encoder weights multiplied by ``scale``: tanh saturated."""
    torch.manual_seed(0)
    encoder, decoder = _halves(0)
    with torch.no_grad():
        encoder[0].weight.mul_(scale)
        encoder[0].bias.mul_(scale)
    return _stack(block0=LoopBlock(encoder, decoder))


def nan_mid_training(after_steps: int = 12) -> Stack:
    """Block 1's encoder gives NaN from training step ``after_steps + 1`` on.

    A :class:`NaNAfter` sits between its linear layer and its tanh.
    """
    torch.manual_seed(0)
    counter = StepCounter()
    encoder, decoder = _halves(1)
    encoder = nn.Sequential(encoder[0], NaNAfter(counter, after_steps), encoder[1])
    return _stack(counter, block1=LoopBlock(encoder, decoder))


def sigmoid_decoder_on_codes() -> Stack:
    """Block 1's decoder ends in a sigmoid but must reconstruct tanh codes."""
    torch.manual_seed(0)
    return _stack(block1=LoopBlock(*_halves(1, decoder_activation=nn.Sigmoid)))


# factory name -> (rule, block, half, circulation) that must be found.
EXPECTED = {
    "detached_encoder": ("frozen_weights", 0, "enc", None),
    "constant_decoder": ("collapse", 1, "dec", 0),
    "saturating_init": ("saturation", 0, "enc", 0),
    "nan_mid_training": ("nonfinite", 1, "enc", 0),
    "sigmoid_decoder_on_codes": ("range_mismatch", 1, "dec", None),
}
FACTORIES = {name: globals()[name] for name in ("healthy", *EXPECTED)}
