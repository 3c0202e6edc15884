"""Linear classifiers on frozen features: the probe and the ``after`` head.

The probe is one linear layer trained by cross-entropy with Adam (lr 1e-3,
batch 64, no feature scaling) for 100 epochs: the recipe of the authors'
own classifier (CONTEXT.md). CONTEXT.md's table used 30 epochs; 100 is the
stronger probe on this data (``benchmarks/probe_strength.py`` prints both
side by side), so ``probe_accuracy`` compares against the authors' figures
with their classifier's training length.

The minibatch gradient of the mean cross-entropy is formed directly,
``(softmax(z) - onehot(y))^T [x, 1] / B`` for the weight and bias packed into
one ``(C, F + 1)`` tensor, and Adam steps that tensor. Adam is elementwise,
so this is Adam on the separate weight and bias; it needs a handful of
kernels per minibatch instead of an autograd graph, which is most of the
probe's time at these sizes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .optim import fused_available

PROBE_EPOCHS = 100
PROBE_LR = 1e-3
PROBE_BATCH = 64


def cross_entropy_grad(packed: Tensor, inputs: Tensor, labels: Tensor) -> Tensor:
    """Gradient of the batch-mean cross-entropy of ``inputs @ packed.T``.

    Args:
        packed: ``(C, F + 1)``, the weight with the bias as its last column.
        inputs: ``(B, F + 1)``, features with a trailing column of ones.
        labels: ``(B,)`` int64.
    """
    delta = torch.mm(inputs, packed.t()).softmax(dim=1)  # (B, C)
    delta[torch.arange(labels.shape[0], device=labels.device), labels] -= 1.0
    return torch.mm(delta.t(), inputs).div_(labels.shape[0])


def fit_linear(layer: nn.Linear, features: Tensor, labels: Tensor, *,
               epochs: int = PROBE_EPOCHS, lr: float = PROBE_LR,
               batch_size: int = PROBE_BATCH, seed: int = 0) -> nn.Linear:
    """Train ``layer`` on frozen ``features`` by cross-entropy with Adam.

    Args:
        layer: the classifier, with a bias, trained in place from its
            current weights.
        features: ``(N, F)``, detached.
        labels: ``(N,)`` int64.
        seed: seeds the minibatch order (the global RNG is not touched).
    """
    if layer.bias is None:
        raise ValueError("fit_linear needs a layer with a bias")
    N = features.shape[0]
    ones = features.new_ones(N, 1)
    inputs = torch.cat([features.detach().flatten(1), ones], dim=1)  # (N, F + 1)
    with torch.no_grad():
        packed = torch.cat([layer.weight, layer.bias[:, None]], dim=1)
    packed.requires_grad_(True)
    optimizer = torch.optim.Adam(
        [packed], lr=lr, fused=fused_available(torch.optim.Adam, [packed]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(epochs):
            order = torch.randperm(N, generator=generator).to(features.device)
            for start in range(0, N, batch_size):
                index = order[start:start + batch_size]
                packed.grad = cross_entropy_grad(packed, inputs[index], labels[index])
                optimizer.step()
        layer.weight.copy_(packed[:, :-1])
        layer.bias.copy_(packed[:, -1])
    return layer


def accuracy(layer, features: Tensor, labels: Tensor) -> float:
    """Fraction of ``features`` that ``layer`` (any callable to logits) gets right."""
    with torch.no_grad():
        return (layer(features).argmax(dim=1) == labels).float().mean().item()


def probe_accuracy(train_features: Tensor, train_labels: Tensor,
                   test_features: Tensor, test_labels: Tensor, *,
                   classes: int = 10, epochs: int = PROBE_EPOCHS,
                   seed: int = 0) -> float:
    """Test accuracy of a fresh linear probe trained on frozen train features.

    Features of any shape are flattened to ``(N, F)``. The probe's initial
    weights come from a generator seeded with ``seed``.
    """
    train_features = train_features.flatten(1)
    test_features = test_features.flatten(1)
    layer = nn.Linear(train_features.shape[1], classes).to(train_features.device)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed)
        bound = 1.0 / train_features.shape[1] ** 0.5
        for p in (layer.weight, layer.bias):
            p.copy_(torch.rand(p.shape, generator=generator) * 2 * bound - bound)
    fit_linear(layer, train_features, train_labels, epochs=epochs, seed=seed)
    return accuracy(layer, test_features, test_labels)
