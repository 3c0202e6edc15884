"""Integrated-gradients attributions of the class score, with captum.

The model's head reads detached codes, so the input gets no gradient through
``Tourbillon.forward``. :class:`ClassScore` recomputes the same logits with
the graph kept: every block walks its loop up to the circulation it passes
up (``feed_from``) without detaching, and the head reads that code. Its
values equal ``Tourbillon.forward(x)["output"]``; only the graph differs,
and it exists for attribution only.

Integrated gradients satisfy completeness: the attributions of one example
sum to ``F(x) - F(baseline)``. Captum's convergence delta is the gap between
the two, the error of the path integral's quadrature; the report shows it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from captum.attr import IntegratedGradients
from torch import Tensor, nn

from tourbillon.model import CircularBlock, RandomFeedback, Tourbillon

N_STEPS = 64


class ClassScore(nn.Module):
    """``x -> head(flatten(code passed up))`` with the graph through the encoders.

    Args:
        model: a Tourbillon with a head.

    Shape:
        input: the model's input, ``(B, D)`` or ``(B, C, H, W)``; output
        ``(B, classes)`` logits.
    """

    def __init__(self, model: Tourbillon) -> None:
        super().__init__()
        if model.head is None:
            raise ValueError("the model has no head (classes=0): no class score "
                             "to attribute")
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        self.model.check_input(x)
        code = x
        for block in self.model.blocks:
            code = passed_code(block, code)
        return self.model.head(code.flatten(1))


def passed_code(block: CircularBlock, x: Tensor) -> Tensor:
    """The code ``block`` passes up, computed from ``x`` with the graph kept.

    Walks circulations ``0..feed_from`` as ``CircularBlock.forward`` does
    (regression included) but detaches nothing, and sends reconstructions
    through the decoder's own weights even where training uses random
    feedback, so the gradient is the true derivative of the value.
    """
    c = block.config
    decoder = _true_decoder(block.decoder)
    visible = x
    for _ in range(c.feed_from):
        reconstruction = decoder(block.encoder(visible))
        if c.regression > 0.0:
            lam = c.regression
            reconstruction = lam * visible + (1 - lam) * reconstruction
        visible = reconstruction
    return block.encoder(visible)


def _true_decoder(decoder: nn.Module) -> nn.Module:
    if isinstance(decoder, RandomFeedback):
        return decoder.layer
    if isinstance(decoder, nn.Sequential):
        return nn.Sequential(*(_true_decoder(m) for m in decoder))
    return decoder


@dataclass
class Attribution:
    """Integrated gradients of a batch.

    Attributes:
        inputs: ``(N, *input_shape)`` the examples.
        attributions: same shape as ``inputs``.
        target: ``(N,)`` the class whose score is attributed.
        predicted: ``(N,)`` the model's predicted class.
        score: ``(N,)`` F(x), the target's logit at the input.
        baseline_score: ``(N,)`` F(baseline).
        delta: ``(N,)`` captum's convergence delta,
            ``sum(attributions) - (score - baseline_score)``.
        n_steps: quadrature points of the path integral.
    """

    inputs: Tensor
    attributions: Tensor
    target: Tensor
    predicted: Tensor
    score: Tensor
    baseline_score: Tensor
    delta: Tensor
    n_steps: int


def integrated_gradients(model: Tourbillon, x: Tensor, target: Tensor,
                         baseline: Tensor | None = None,
                         n_steps: int = N_STEPS) -> Attribution:
    """Integrated gradients of the ``target`` logits with respect to ``x``.

    Args:
        model: a Tourbillon with a head (put in eval mode by the caller).
        x: ``(N, *input_shape)`` examples.
        target: ``(N,)`` class indices.
        baseline: same shape as ``x``; all zeros (a black image) by default.
        n_steps: Gauss-Legendre points of captum's path integral.
    """
    score_fn = ClassScore(model)
    x = x.detach()
    baseline = torch.zeros_like(x) if baseline is None else baseline.detach()
    attributions, delta = IntegratedGradients(score_fn).attribute(
        x, baselines=baseline, target=target, n_steps=n_steps,
        return_convergence_delta=True)
    with torch.no_grad():
        logits = score_fn(x)
        score = logits.gather(1, target[:, None])[:, 0]
        baseline_score = score_fn(baseline).gather(1, target[:, None])[:, 0]
    return Attribution(x, attributions.detach(), target, logits.argmax(1), score,
                       baseline_score, delta.detach(), n_steps)
