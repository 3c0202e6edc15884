"""Linear classifiers on frozen features: the probe and the ``after`` head.

The probe is the one behind CONTEXT.md's figures: one linear layer on frozen
features, Adam at lr 1e-3, batch 64, 30 epochs, no feature scaling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PROBE_EPOCHS = 30
PROBE_LR = 1e-3
PROBE_BATCH = 64


def fit_linear(layer: nn.Linear, features: Tensor, labels: Tensor, *,
               epochs: int = PROBE_EPOCHS, lr: float = PROBE_LR,
               batch_size: int = PROBE_BATCH, seed: int = 0) -> nn.Linear:
    """Train ``layer`` on frozen ``features`` by cross-entropy with Adam.

    Args:
        layer: the classifier, trained in place.
        features: ``(N, F)``, detached.
        labels: ``(N,)`` int64.
        seed: seeds the minibatch order (the global RNG is not touched).
    """
    N = features.shape[0]
    features = features.detach()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(layer.parameters(), lr=lr)
    for _ in range(epochs):
        order = torch.randperm(N, generator=generator).to(features.device)
        for start in range(0, N, batch_size):
            index = order[start:start + batch_size]
            loss = F.cross_entropy(layer(features[index]), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
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
