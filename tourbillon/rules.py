"""Local learning rules as autograd objectives.

Each objective's gradient is exactly the rule's weight update (with the sign
of a gradient): targets and presynaptic inputs are detached, so no gradient
leaves the block or reaches a circulation the rule does not name.

With ``loss_reduction='sum'`` the objective is half the squared error summed
over units and averaged over the batch, so ``-grad W`` equals
``(target - output) * f'(output pre-activation) @ presynaptic / B``: the
delta rule as the authors write it. With ``mean`` it is PyTorch's MSE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import Config


def squared_error(output: Tensor, target: Tensor, reduction: str) -> Tensor:
    """MSE (``mean``) or half the summed squared error per example (``sum``).

    Args:
        output, target: same shape, batch first.
    """
    if reduction == "mean":
        return F.mse_loss(output, target)
    return F.mse_loss(output, target, reduction="sum") * (0.5 / output.shape[0])


def _error_scale(output: Tensor, reduction: str) -> float:
    """d(squared_error)/d(output) per unit of (output - target)."""
    if reduction == "mean":
        return 2.0 / output.numel()
    return 1.0 / output.shape[0]


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
    error = (output.detach() - target).flatten()  # h_o - h_t
    presyn = out[f"enc_presyn{suffix}"].flatten()  # h_t with its graph
    return torch.dot(error, presyn) * _error_scale(output, config.loss_reduction)


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
