"""The linear probe: its direct gradient and Adam against autograd and torch's Adam."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tourbillon.probe import cross_entropy_grad, fit_linear, probe_accuracy


def _reference_fit(layer: nn.Linear, x, y, epochs: int, batch: int, seed: int):
    """The obvious version: autograd on the separate weight and bias, torch's
    single-tensor Adam, the same minibatch order."""
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-3, foreach=False)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=generator)
        for start in range(0, x.shape[0], batch):
            index = order[start:start + batch]
            loss = F.cross_entropy(layer(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return layer


def test_cross_entropy_grad_is_autograds():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(17, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (17,), generator=g)
    layer = nn.Linear(6, 4).double()
    F.cross_entropy(layer(x), y).backward()
    packed = torch.cat([layer.weight, layer.bias[:, None]], 1).detach()
    inputs = torch.cat([x, torch.ones(17, 1, dtype=torch.float64)], 1)
    got = cross_entropy_grad(packed, inputs, y)
    torch.testing.assert_close(got[:, :-1], layer.weight.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(got[:, -1], layer.bias.grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", [64, 100])  # whole and ragged last minibatch
def test_fit_linear_follows_autograd_and_torch_adam(n):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    fast, slow = nn.Linear(5, 3).double(), nn.Linear(5, 3).double()
    slow.load_state_dict(fast.state_dict())
    fit_linear(fast, x, y, epochs=4, batch_size=16, seed=7)
    _reference_fit(slow, x, y, epochs=4, batch=16, seed=7)
    # float64: the two differ only by rounding over 4 * ceil(n / 16) Adam steps.
    torch.testing.assert_close(fast.weight, slow.weight, rtol=0, atol=1e-10)
    torch.testing.assert_close(fast.bias, slow.bias, rtol=0, atol=1e-10)


def test_probe_separates_separable_classes_and_not_noise():
    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 3, (300,), generator=g)
    signal = F.one_hot(y, 3).float() * 3 + 0.3 * torch.randn(300, 3, generator=g)
    noise = torch.randn(300, 3, generator=g)
    split = 200
    good = probe_accuracy(signal[:split], y[:split], signal[split:], y[split:],
                          classes=3, epochs=300)
    chance = probe_accuracy(noise[:split], y[:split], noise[split:], y[split:],
                            classes=3, epochs=300)
    assert good > 0.95
    assert chance < 0.55


def test_fit_linear_needs_a_bias():
    with pytest.raises(ValueError, match="bias"):
        fit_linear(nn.Linear(3, 2, bias=False), torch.randn(4, 3),
                   torch.tensor([0, 1, 0, 1]), epochs=1)
