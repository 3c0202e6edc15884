"""Local learning rules, as autograd objectives and as explicit updates.

Each objective's gradient is exactly the rule's weight update (with the sign
of a gradient): targets and presynaptic inputs are detached, so no gradient
leaves the block or reaches a circulation the rule does not name.

:func:`rule_gradients` gives the same updates of linear blocks without
autograd, as the authors' code computes them: per layer, the error at the
pre-activation (``delta``) and the presynaptic activity, whose product is the
weight's gradient. The trainer uses it under ``update='explicit'``; tests hold
it to the objectives' gradients.

With ``loss_reduction='sum'`` the objective is half the squared error summed
over units and averaged over the batch, so ``-grad W`` equals
``(target - output) * f'(output pre-activation) @ presynaptic / B``: the
delta rule as the authors write it. With ``mean`` it is PyTorch's MSE.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import Config
from .model import RandomFeedback, decoder_activation_for


def squared_error(output: Tensor, target: Tensor, reduction: str) -> Tensor:
    """MSE (``mean``) or half the summed squared error per example (``sum``).

    Args:
        output, target: same shape, batch first.
    """
    return _half_squared(output - target, _error_scale(output, reduction))


def _error_scale(output: Tensor, reduction: str) -> float:
    """d(squared_error)/d(output) per unit of (output - target)."""
    if reduction == "mean":
        return 2.0 / output.numel()
    return 1.0 / output.shape[0]


def _weighted_error(error: Tensor, weight: Tensor, scale: float) -> Tensor:
    """``scale * sum(error * weight)``: every rule's objective has this form."""
    return torch.dot(error.flatten(), weight.flatten()) * scale


def _half_squared(error: Tensor, scale: float) -> Tensor:
    """The squared-error objective of ``error``: ``scale / 2 * sum(error ** 2)``."""
    return _weighted_error(error, error, 0.5 * scale)


def encoder_objective(out: dict[str, Tensor], config: Config,
                      suffix: str = "") -> Tensor:
    """The encoder rule of one block's output ``out`` (keys may carry ``suffix``).

    ``autograd``: squared error of the output code against the target code.
    ``authors``: surrogate ``sum((h_o - h_t) * h_t)`` with the error detached,
    so the update uses the presynaptic input and f' of the target circulation.
    """
    output, target = out[f"enc_output{suffix}"], out[f"enc_target{suffix}"]
    if config.encoder_rule == "none":
        return output.new_zeros(())
    if config.encoder_rule == "autograd":
        return squared_error(output, target, config.loss_reduction)
    error = output.detach() - target  # h_o - h_t
    presyn = out[f"enc_presyn{suffix}"]  # h_t with its graph
    return _weighted_error(error, presyn, _error_scale(output, config.loss_reduction))


def decoder_objective(out: dict[str, Tensor], config: Config,
                      suffix: str = "") -> Tensor:
    """The decoder's delta rule: squared error of its output against its target."""
    output = out[f"dec_output{suffix}"]
    if config.decoder_rule == "none":
        return output.new_zeros(())
    return squared_error(output, out[f"dec_target{suffix}"], config.loss_reduction)


def drift(out: dict[str, Tensor], config: Config, suffix: str = "") -> dict[str, float]:
    """Squared error between each rule's output and target, as plain numbers."""
    with torch.no_grad():
        return {
            half: squared_error(out[f"{half}_output{suffix}"],
                                out[f"{half}_target{suffix}"],
                                config.loss_reduction).item()
            for half in ("enc", "dec")
        }


def feedback_objective(model: torch.nn.Module, out: dict[str, Tensor],
                       labels: Tensor, blocks: list[int]) -> Tensor:
    """Direct random feedback of the head's error to each block in ``blocks``.

    The head's cross-entropy error at the logits, ``(softmax - onehot) / B``,
    reaches block ``k``'s passed-up code through the fixed random matrix
    ``model.feedback_k`` (shape ``(classes, code numel)``) in place of the
    head's and upper blocks' transposes. The surrogate ``sum(e_k * code_k)``
    gives each encoder the update ``(e_k * f') @ input``.
    """
    logits = out["output"].detach()
    B, C = logits.shape
    onehot = F.one_hot(labels, C).to(logits.dtype)
    delta = (logits.softmax(dim=1) - onehot) / B  # (B, C)
    total = logits.new_zeros(())
    for k in blocks:
        code = out[f"code_{k}"]
        matrix = getattr(model, f"feedback_{k}")
        error = (delta @ matrix).view_as(code)  # (B, *code shape)
        total = total + (error * code).sum()
    return total


# -- the same rules as explicit updates -----------------------------------------------


class LayerGradient(NamedTuple):
    """One rule's update of a linear layer, as a product: the weight's
    gradient is ``scale * delta.T @ presyn`` and the bias's
    ``scale * delta.sum(0)``. (A named tuple: one is made per layer and
    step, and it is the cheapest immutable record to make.)

    Attributes:
        layer: the ``nn.Linear`` the rule updates.
        delta: ``(B, out_features)``, the error at the layer's pre-activation
            (``(output - target) * f'``).
        presyn: ``(B, in_features)``, the layer's (detached) input.
        scale: the objective's derivative per unit of error (1/B for summed
            errors, 2/numel for MSE).
        objective: the rule's objective, the value the autograd form
            minimises (0-dim).
    """

    layer: nn.Linear
    delta: Tensor
    presyn: Tensor
    scale: float
    objective: Tensor

    def weight_grad(self) -> Tensor:
        return torch.mm(self.delta.t(), self.presyn).mul_(self.scale)

    def bias_grad(self) -> Tensor:
        return self.delta.sum(0).mul_(self.scale)


def times_slope(name: str, error: Tensor, y: Tensor) -> Tensor:
    """``error * f'`` for the activation ``name``, with f' read from its output
    ``y = f(z)``; ``error`` is overwritten where that saves a pass."""
    if name == "tanh":  # f' = 1 - y^2
        return torch.addcmul(error, error * y, y, value=-1)
    if name == "sigmoid":  # f' = y (1 - y)
        return error.mul_(y).mul_(1 - y)
    if name == "relu":
        return error.mul_(y > 0)
    if name == "identity":
        return error
    raise ValueError(f"no slope for activation {name!r}")


def _layer_gradient(layer: nn.Linear, output: Tensor, target: Tensor,
                    presyn: Tensor, activation: str, reduction: str,
                    authors: bool = False) -> LayerGradient:
    """The update pulling ``output`` toward ``target``: the squared error's, or
    with ``authors`` the surrogate's, with f' at the target."""
    error = output - target
    scale = _error_scale(output, reduction)
    if authors:
        objective = _weighted_error(error, target, scale)
    else:
        objective = _half_squared(error, scale)
    delta = times_slope(activation, error, target if authors else output)
    return LayerGradient(layer, delta, presyn, scale, objective)


def rule_gradients(model: nn.Module, out: dict[str, Tensor], config: Config,
                   blocks: list[int]) -> list[LayerGradient]:
    """The encoder and decoder rules of each block in ``blocks``, as products.

    ``model`` is a linear :class:`~tourbillon.model.Tourbillon` and ``out``
    its forward's result. The gradients and objectives equal those of
    :func:`encoder_objective` and :func:`decoder_objective` when no graph
    leaves a block (``code_graph`` and, above block 0, ``input_graph`` set to
    ``detach``), which ``Config`` checks for ``update='explicit'``.
    """
    c = config
    result = []
    with torch.no_grad():
        for k in blocks:
            s = f"_{k}"
            block = model.blocks[k]
            if c.encoder_rule != "none":
                result.append(_layer_gradient(
                    _linear(block.encoder), out[f"enc_output{s}"],
                    out[f"enc_target{s}"], out[f"enc_input{s}"],
                    c.encoder_activation, c.loss_reduction,
                    authors=c.encoder_rule == "authors"))
            if c.decoder_rule != "none":
                result.append(_layer_gradient(
                    _linear(block.decoder), out[f"dec_output{s}"],
                    out[f"dec_target{s}"], out[f"dec_input{s}"],
                    decoder_activation_for(c, k), c.loss_reduction))
    return result


def _linear(half: nn.Module) -> nn.Linear:
    """The ``nn.Linear`` of a block's encoder or decoder."""
    layer = next(iter(half))  # (indexing a Sequential costs several times more)
    if isinstance(layer, RandomFeedback):
        layer = layer.layer
    if not isinstance(layer, nn.Linear):
        raise TypeError(
            f"explicit updates cover linear layers, not {type(layer).__name__}")
    return layer
