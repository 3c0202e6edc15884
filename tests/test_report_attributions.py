"""The differentiable class score and integrated gradients, against slow references.

Models are small (784-32 blocks), untrained and seeded; checks run in float64
where they compare gradients, so the tolerances below are tight.
"""

from __future__ import annotations

import pytest
import torch

from diagnostics.report.attributions import (ClassScore, integrated_gradients,
                                             passed_code)
from tourbillon.config import resolve
from tourbillon.model import Tourbillon

SMALL = {
    "reference": {"sizes": (784, 32, 16)},
    "authors": {"sizes": (784, 32)},
    "hinton88": {"sizes": (784, 32)},
    "regressed-feed-1": {"sizes": (784, 32), "feed_from": 1, "regression": 0.5,
                         "decoder_backward": "random", "code_graph": "keep"},
}


def small_model(name: str) -> Tourbillon:
    variant = "authors" if name == "regressed-feed-1" else name
    torch.manual_seed(0)
    model = Tourbillon(resolve(variant, SMALL[name])).double().eval()
    with torch.no_grad():  # a head whose scores differ visibly between inputs
        model.head.weight.mul_(10.0)
    return model


def inputs(n: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(n, 784, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("name", list(SMALL))
def test_class_score_equals_the_model_output(name):
    model, x = small_model(name), inputs()
    with torch.no_grad():
        expected = model(x)["output"]
        assert torch.allclose(ClassScore(model)(x), expected, atol=1e-12)


@pytest.mark.parametrize("name", list(SMALL))
def test_class_score_gradient_is_the_true_derivative(name):
    # The model's own forward detaches the head's input; the wrapper does not,
    # and its gradient passes finite differences (so no random feedback).
    model, x = small_model(name), inputs(2).requires_grad_(True)
    (unconnected,) = torch.autograd.grad(model(x)["output"].sum(), x,
                                         allow_unused=True)
    assert unconnected is None
    score = ClassScore(model)
    assert torch.autograd.gradcheck(lambda v: score(v)[:, 3], (x,), eps=1e-6,
                                    atol=1e-6, fast_mode=True)


def test_passed_code_walks_the_loop_with_regression():
    model, x = small_model("regressed-feed-1"), inputs()
    block = model.blocks[0]
    with torch.no_grad():
        h0 = block.encoder(x)
        x1 = 0.5 * x + 0.5 * block.decoder[1](block.decoder[0].layer(h0))
        expected = block.encoder(x1)
        assert torch.allclose(passed_code(block, x), expected, atol=1e-12)


def slow_integrated_gradients(score, x, baseline, target, steps):
    """Midpoint Riemann sum, one path point and one backward pass at a time."""
    total = torch.zeros_like(x)
    for k in range(steps):
        alpha = (k + 0.5) / steps
        point = (baseline + alpha * (x - baseline)).detach().requires_grad_(True)
        value = score(point).gather(1, target[:, None]).sum()
        (grad,) = torch.autograd.grad(value, point)
        total += grad
    return (x - baseline) * total / steps


@pytest.mark.parametrize("name", ["reference", "authors"])
def test_integrated_gradients_match_a_slow_reference(name):
    model, x = small_model(name), inputs()
    target = torch.tensor([0, 4, 9])
    baseline = torch.zeros_like(x)
    slow = slow_integrated_gradients(ClassScore(model), x, baseline, target, 400)
    fast = integrated_gradients(model, x, target, n_steps=64)
    scale = slow.abs().max()
    assert torch.allclose(fast.attributions, slow, atol=1e-4 * scale)


@pytest.mark.parametrize("name", ["reference", "authors", "hinton88"])
def test_convergence_delta_is_the_completeness_gap_and_small(name):
    model, x = small_model(name), inputs()
    target = torch.tensor([1, 2, 3])
    result = integrated_gradients(model, x, target, n_steps=64)
    change = result.score - result.baseline_score
    gap = result.attributions.sum(1) - change
    assert torch.allclose(result.delta, gap, atol=1e-10)
    # Tolerance: 64 Gauss-Legendre points on a smooth tanh network.
    assert (result.delta.abs() <= 1e-6 + 1e-3 * change.abs()).all()
    with torch.no_grad():
        logits = model(x)["output"]
    assert torch.equal(result.predicted, logits.argmax(1))


def test_a_model_without_head_is_refused():
    model = Tourbillon(resolve("authors", {"sizes": (784, 32), "classes": 0}))
    with pytest.raises(ValueError, match="no head"):
        ClassScore(model)
