"""The authors' hand-written SGD, as a torch optimizer."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .config import Config

if TYPE_CHECKING:
    from .rules import LayerGradient


class AveragedMomentumSGD(torch.optim.SGD):
    """SGD whose momentum is a running average of gradients.

    ``m = momentum * m + (1 - momentum) * g`` with ``m`` starting at zero, and
    ``w -= lr_t * m`` with ``lr_t = lr / (1 + decay * t)``, ``t`` the number of
    earlier steps of the parameter group.

    This is torch's SGD with ``dampening = momentum`` and a zero initial
    buffer (torch's own first step would copy the gradient instead), so the
    update runs in torch's fused kernel where the device has one. The group
    keeps ``lr0``, ``decay`` and ``step``, so they are saved with the state;
    its ``lr`` is the rate of the latest step.

    :meth:`step_products` takes the gradients as products instead of from
    ``.grad`` and folds each weight's product into its momentum in one matrix
    multiply.

    Args:
        params: parameters to update.
        lr: initial learning rate.
        momentum: averaging coefficient in [0, 1).
        decay: ``k`` in the lr schedule; 0 keeps lr constant.
    """

    def __init__(self, params: Iterable[Tensor], lr: float, momentum: float = 0.8,
                 decay: float = 0.0) -> None:
        params = list(params)
        super().__init__(params, lr=lr, momentum=momentum, dampening=momentum,
                         fused=fused_available(torch.optim.SGD, params))
        for group in self.param_groups:
            group.update(lr0=lr, decay=decay, step=0)

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a state saved by this class (raises ValueError otherwise)."""
        for group in state_dict.get("param_groups", []):
            missing = sorted({"lr0", "decay", "step", "dampening"} - set(group))
            if missing:
                raise ValueError(
                    f"the optimizer state lacks {', '.join(missing)}: it was not "
                    "saved by this version's AveragedMomentumSGD")
        super().load_state_dict(state_dict)

    @torch.no_grad()
    def step(self, closure=None) -> None:  # type: ignore[override]
        stepped = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p)
            group["lr"] = group["lr0"] / (1.0 + group["decay"] * group["step"])
            if params:  # a group without gradients keeps its step count
                stepped.append(group)
        super().step()
        for group in stepped:
            group["step"] += 1

    @torch.no_grad()
    def step_products(self, gradients: Sequence["LayerGradient"]) -> None:
        """The same step, with the gradients of linear layers given as products.

        ``m = momentum * m + (1 - momentum) * scale * delta.T @ presyn`` runs as
        one ``addmm`` into the buffer, so no gradient tensor is made. Parameters
        without a product are not updated; a group with none keeps its step
        count, as in :meth:`step`. Every layer may appear once.
        """
        groups = self._groups_by_param()
        rates: dict[int, float] = {}  # id(group) -> this step's lr
        seen: set[int] = set()
        for g in gradients:
            layer = g.layer
            for p, presyn in ((layer.bias, None), (layer.weight, g.presyn)):
                if p is None:
                    continue
                if id(p) in seen:
                    raise ValueError("step_products takes each layer at most once")
                seen.add(id(p))
                group = groups.get(id(p))
                if group is None:
                    raise ValueError("a layer's parameters are not in this optimizer")
                if id(group) not in rates:
                    if group["nesterov"] or group["weight_decay"] or group["maximize"]:
                        raise ValueError("step_products covers the authors' SGD only")
                    group["lr"] = group["lr0"] / (1.0 + group["decay"] * group["step"])
                    rates[id(group)] = group["lr"]
                state = self.state[p]
                m = state.get("momentum_buffer")
                if m is None:
                    m = state["momentum_buffer"] = torch.zeros_like(p)
                beta = group["momentum"]
                alpha = (1 - beta) * g.scale
                if presyn is not None:
                    torch.addmm(m, g.delta.t(), presyn, beta=beta, alpha=alpha, out=m)
                else:  # the bias: the delta's column sums, as a row
                    row = m.unsqueeze(0)
                    torch.addmm(row, self._ones(g.delta), g.delta, beta=beta,
                                alpha=alpha, out=row)
                p.add_(m, alpha=-rates[id(group)])  # while the buffer is in cache
        for group in self.param_groups:
            if id(group) in rates:
                group["step"] += 1

    def _groups_by_param(self) -> dict[int, dict]:
        """``id(parameter) -> its group``, kept while ``param_groups`` is the
        same list of the same length (``add_param_group`` appends to it;
        ``load_state_dict`` replaces it)."""
        groups = self.param_groups
        cache = getattr(self, "_group_of", None)
        if cache is None or cache[0] is not groups or cache[1] != len(groups):
            by_param = {id(p): group for group in groups for p in group["params"]}
            cache = self._group_of = (groups, len(groups), by_param)
        return cache[2]

    def _ones(self, delta: Tensor) -> Tensor:
        """A ``(1, B)`` row of ones over ``delta``'s batch (kept between steps)."""
        ones = getattr(self, "_batch_ones", None)
        if (ones is None or ones.shape[1] != delta.shape[0]
                or ones.dtype is not delta.dtype or ones.device != delta.device):
            ones = self._batch_ones = delta.new_ones(1, delta.shape[0])
        return ones


def fused_available(optimizer: type[torch.optim.Optimizer],
                    params: list[Tensor]) -> bool:
    """Whether ``optimizer(..., fused=True)`` takes tensors like ``params``
    (torch's fused kernels cover only some devices and dtypes)."""
    return bool(params) and _fused_available(optimizer, params[0].device,
                                             params[0].dtype)


@functools.lru_cache(maxsize=None)
def _fused_available(optimizer: type[torch.optim.Optimizer], device: torch.device,
                     dtype: torch.dtype) -> bool:
    try:
        optimizer([torch.zeros(1, device=device, dtype=dtype, requires_grad=True)],
                  lr=0.1, fused=True)
    except (RuntimeError, ValueError):
        return False
    return True


def make_optimizer(params: Iterable[Tensor], config: Config) -> torch.optim.Optimizer:
    """The optimizer a config names (``adam`` or the authors' ``sgd``)."""
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr)
    decay = config.lr / max(config.epochs, 1) if config.lr_decay else 0.0
    return AveragedMomentumSGD(params, config.lr, config.momentum, decay)
