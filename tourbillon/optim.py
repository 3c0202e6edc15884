"""The authors' hand-written SGD, as a torch optimizer."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from .config import Config


class AveragedMomentumSGD(torch.optim.Optimizer):
    """SGD whose momentum is a running average of gradients.

    ``m = momentum * m + (1 - momentum) * g`` and ``w -= lr_t * m`` with
    ``lr_t = lr / (1 + decay * t)``, ``t`` the number of earlier steps of the
    parameter group (kept in the group, so it is saved with the state).

    Args:
        params: parameters to update.
        lr: initial learning rate.
        momentum: averaging coefficient in [0, 1).
        decay: ``k`` in the lr schedule; 0 keeps lr constant.
    """

    def __init__(self, params: Iterable[Tensor], lr: float, momentum: float = 0.8,
                 decay: float = 0.0) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, decay=decay))

    @torch.no_grad()
    def step(self, closure=None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            averages = []
            for p in params:
                state = self.state[p]
                if "average" not in state:
                    state["average"] = torch.zeros_like(p)
                averages.append(state["average"])
            t = group.setdefault("step", 0)
            lr_t = group["lr"] / (1.0 + group["decay"] * t)
            # m <- m + (1 - momentum) (g - m), then w <- w - lr_t m.
            torch._foreach_lerp_(averages, grads, 1.0 - group["momentum"])
            torch._foreach_add_(params, averages, alpha=-lr_t)
            group["step"] = t + 1


def make_optimizer(params: Iterable[Tensor], config: Config) -> torch.optim.Optimizer:
    """The optimizer a config names (``adam`` or the authors' ``sgd``)."""
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr)
    decay = config.lr / max(config.epochs, 1) if config.lr_decay else 0.0
    return AveragedMomentumSGD(params, config.lr, config.momentum, decay)
