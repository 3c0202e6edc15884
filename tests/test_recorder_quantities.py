"""Each recorded quantity against a slow, obvious reference computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from diagnostics.quantities.activations import (
    CONSTANT_TOLERANCE,
    SATURATION_MARGIN,
    activation_stats,
)
from diagnostics.quantities.gradients import cosine, true_gradients, weight_alignment
from diagnostics.quantities.images import reconstruction_grid
from diagnostics.quantities.nonfinite import first_nonfinite
from diagnostics.quantities.probe import ridge_probe_accuracy
from diagnostics.quantities.reconstruction import drift, settling, true_errors
from diagnostics.schedule import Schedule, make_schedules
from tourbillon.errors import ConfigError

# -- slow references -------------------------------------------------------------


def loop_stats(x: torch.Tensor, bounds=None) -> dict[str, float]:
    """Activation statistics by explicit Python loops over units and examples."""
    rows = x.double().flatten(1).tolist()
    B, U = len(rows), len(rows[0])
    values = [v for row in rows for v in row]
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    unit_stds = []
    for u in range(U):
        column = [rows[b][u] for b in range(B)]
        m = sum(column) / B
        unit_stds.append(math.sqrt(sum((v - m) ** 2 for v in column) / B))
    stats = {"mean": mean, "std": std, "batch_std": sum(unit_stds) / U,
             "constant": sum(s <= CONSTANT_TOLERANCE for s in unit_stds) / U}
    if bounds is not None:
        low, high = bounds
        margin = SATURATION_MARGIN * (high - low)
        stats["saturated"] = sum(v <= low + margin or v >= high - margin
                                 for v in values) / len(values)
    return stats


def finite_difference_grads(loss_fn, params: list[nn.Parameter], eps=1e-6):
    """Central differences of ``loss_fn()`` for every entry of every parameter."""
    grads = []
    with torch.no_grad():
        for p in params:
            g = torch.zeros_like(p)
            flat, gflat = p.view(-1), g.view(-1)
            for i in range(flat.numel()):
                kept = flat[i].item()
                flat[i] = kept + eps
                up = loss_fn().item()
                flat[i] = kept - eps
                down = loss_fn().item()
                flat[i] = kept
                gflat[i] = (up - down) / (2 * eps)
            grads.append(g)
    return grads


# -- activations ---------------------------------------------------------------------


def _saturating_batch() -> torch.Tensor:
    x = torch.tanh(3 * torch.randn(6, 5))
    x[:, 0] = 0.25  # a constant unit
    x[0, 1] = 1.0  # exactly at a bound
    return x


@pytest.mark.parametrize("shape", [(6, 5), (4, 2, 3, 3)], ids=["linear", "conv"])
@pytest.mark.parametrize("bounds", [None, (-1.0, 1.0), (0.0, 1.0)],
                         ids=["unbounded", "tanh", "sigmoid"])
def test_activation_stats_match_loops(shape, bounds):
    if bounds == (0.0, 1.0):
        x = torch.rand(shape)
    else:
        x = torch.tanh(3 * torch.randn(shape))
    got = {k: v.item() for k, v in activation_stats(x, bounds).items()}
    expected = loop_stats(x, bounds)
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key


def test_activation_stats_constant_and_saturated_units():
    x = _saturating_batch()
    got = activation_stats(x, (-1.0, 1.0))
    expected = loop_stats(x, (-1.0, 1.0))
    assert got["constant"].item() == pytest.approx(expected["constant"]) == 1 / 5
    assert got["saturated"].item() == pytest.approx(expected["saturated"])


def test_batch_std_is_exact_for_nearly_constant_units():
    # A reconstruction stuck near 0.5 whose units barely move across the batch:
    # a one-pass E[x^2] - E[x]^2 in float32 would lose this spread entirely.
    x = 0.5 + 1e-4 * torch.randn(64, 30)
    assert activation_stats(x)["batch_std"].item() == pytest.approx(
        loop_stats(x)["batch_std"], rel=1e-3)


# -- drift, true error, settling -------------------------------------------------


def test_drift_raw_and_relative():
    output, target = torch.randn(4, 6), torch.randn(4, 6)
    raw, relative = drift(output, target)
    o, t = output.double().flatten().tolist(), target.double().flatten().tolist()
    mse = sum((a - b) ** 2 for a, b in zip(o, t)) / len(o)
    mean_t = sum(t) / len(t)
    var_t = sum((b - mean_t) ** 2 for b in t) / len(t)
    assert raw.item() == pytest.approx(mse, rel=1e-5)
    assert relative.item() == pytest.approx(mse / var_t, rel=1e-5)


def test_true_error_and_settling_per_circulation():
    x = torch.rand(3, 4)
    recons = [torch.rand(3, 4) for _ in range(3)]
    errors = [e.item() for e in true_errors(x, recons)]
    changes = [c.item() for c in settling(recons)]

    def mse(a, b):
        pairs = list(zip(a.flatten().tolist(), b.flatten().tolist()))
        return sum((p - q) ** 2 for p, q in pairs) / len(pairs)

    assert errors == pytest.approx([mse(r, x) for r in recons], rel=1e-5)
    assert changes == pytest.approx([mse(recons[1], recons[0]),
                                     mse(recons[2], recons[1])], rel=1e-5)


# -- gradients and alignment --------------------------------------------------------


def test_cosine_of_parameter_lists():
    a = [torch.randn(3, 2), torch.randn(4)]
    b = [torch.randn(3, 2), torch.randn(4)]
    u = np.concatenate([t.numpy().ravel() for t in a]).astype(np.float64)
    v = np.concatenate([t.numpy().ravel() for t in b]).astype(np.float64)
    expected = u @ v / (np.linalg.norm(u) * np.linalg.norm(v))
    assert cosine(a, b).item() == pytest.approx(expected, rel=1e-5)
    assert cosine([torch.zeros(3)], [torch.ones(3)]) is None


def test_weight_alignment_linear_and_conv():
    A, B = torch.randn(3, 5), torch.randn(5, 3)
    expected = (A.numpy().ravel() @ B.numpy().T.ravel()) / (
        np.linalg.norm(A.numpy()) * np.linalg.norm(B.numpy()))
    assert weight_alignment(A, B).item() == pytest.approx(expected, rel=1e-5)
    assert weight_alignment(A, A.T.clone()).item() == pytest.approx(1.0)

    # ConvTranspose2d with the Conv2d's weight is the conv's adjoint: cos = 1.
    conv = nn.Conv2d(2, 4, 3)
    deconv = nn.ConvTranspose2d(4, 2, 3)
    with torch.no_grad():
        deconv.weight.copy_(conv.weight)
    assert weight_alignment(conv.weight, deconv.weight).item() == pytest.approx(1.0)
    assert weight_alignment(torch.randn(3, 5), torch.randn(4, 3)) is None


def test_true_gradients_match_finite_differences():
    torch.set_default_dtype(torch.float64)
    try:
        encoder = nn.Sequential(nn.Linear(4, 3), nn.Tanh())
        decoder = nn.Sequential(nn.Linear(3, 4), nn.Sigmoid())
        x = torch.rand(5, 4)
        got = true_gradients(encoder, decoder, x)
        params = list(encoder.parameters()) + list(decoder.parameters())

        def loss():
            return ((decoder(encoder(x)) - x) ** 2).mean()

        reference = finite_difference_grads(loss, params)
    finally:
        torch.set_default_dtype(torch.float32)
    for g, r in zip(got["enc"] + got["dec"], reference):
        assert torch.allclose(g, r, atol=1e-8, rtol=1e-5)
    assert all(p.grad is None for p in params)  # .grad is left alone


# -- probe ---------------------------------------------------------------------------


def numpy_ridge_accuracy(train_x, train_y, test_x, test_y, classes, ridge):
    """The ridge probe written out with numpy and a loop over test examples."""
    X = train_x.double().numpy().reshape(len(train_x), -1)
    Z = test_x.double().numpy().reshape(len(test_x), -1)
    Y = np.eye(classes)[train_y.numpy()]
    xm, ym = X.mean(axis=0), Y.mean(axis=0)
    Xc = X - xm
    gram = Xc.T @ Xc
    penalty = ridge * np.trace(gram) / gram.shape[0]
    W = np.linalg.inv(gram + penalty * np.eye(gram.shape[0])) @ Xc.T @ (Y - ym)
    right = 0
    for z, label in zip(Z, test_y.tolist()):
        scores = (z - xm) @ W + ym
        right += int(np.argmax(scores) == label)
    return right / len(Z)


@pytest.mark.parametrize("ridge", [1e-3, 0.1, 10.0])
def test_ridge_probe_matches_numpy(ridge):
    g = torch.Generator().manual_seed(3)
    centres = torch.randn(3, 6, generator=g)
    y = torch.randint(0, 3, (80,), generator=g)
    x = centres[y] + 0.8 * torch.randn(80, 6, generator=g)
    got = ridge_probe_accuracy(x[:40], y[:40], x[40:], y[40:], 3, ridge)
    assert got == pytest.approx(numpy_ridge_accuracy(x[:40], y[:40], x[40:], y[40:],
                                                     3, ridge))
    assert got > 0.6  # separable clusters are found


# -- images --------------------------------------------------------------------------


def test_reconstruction_grid_places_every_example():
    x = torch.rand(3, 2 * 4 * 5)  # flat (N, C*H*W)
    recons = [torch.rand(3, 40), torch.rand(3, 40)]
    grid = reconstruction_grid(x, recons, (2, 4, 5), padding=1)
    assert grid.shape == (2, 3 * 5 + 1, 3 * 6 + 1)
    rows = [x] + recons
    for r, row in enumerate(rows):
        for n in range(3):
            image = row[n].reshape(2, 4, 5)
            top, left = 1 + r * 5, 1 + n * 6
            for c in range(2):
                for i in range(4):
                    for j in range(5):
                        assert grid[c, top + i, left + j] == image[c, i, j]
    assert grid[:, 0, :].eq(1).all()  # padding is white


# -- non-finite ----------------------------------------------------------------------


def test_first_nonfinite_finds_the_first_bad_tensor():
    ok = torch.ones(3)
    nan, inf = torch.tensor([1.0, math.nan]), torch.tensor([math.inf])
    assert first_nonfinite([ok, ok]) is None
    assert first_nonfinite([ok, inf, nan]) == 1
    assert first_nonfinite([ok, nan]) == 1
    assert first_nonfinite([torch.full((4,), 3e38)]) is None  # the sum overflows only
    assert first_nonfinite([]) is None


def walk_loop(enc, dec, dec_bounds, poison_call=None, circulations=3):
    """Calls of a three-circulation loop, a NaN put into one call's input."""
    from diagnostics.quantities.base import Call

    calls, visible, code = [], torch.rand(4, 5), None
    halves = (("enc", enc, (-1.0, 1.0)), ("dec", dec, dec_bounds))
    for i in range(circulations):
        for half, module, bounds in halves:
            x = (visible if half == "enc" else code).clone()
            if poison_call == len(calls):
                x[0, 0] = float("nan")
            out = module(x)
            calls.append(Call(0, half, i, half, out, bounds))
            code, visible = (out, visible) if half == "enc" else (code, out)
    return calls


@pytest.mark.parametrize("bounded", [True, False], ids=["sigmoid", "linear"])
def test_sentinels_see_every_nonfinite_value_of_a_loop(bounded):
    """A NaN put anywhere in a loop, input or weights, reaches a sentinel."""
    from diagnostics.quantities.nonfinite import sentinels

    def halves():
        enc = nn.Sequential(nn.Linear(5, 3), nn.Tanh())
        dec = nn.Sequential(nn.Linear(3, 5), nn.Sigmoid() if bounded else nn.Identity())
        return enc, dec

    bounds = (0.0, 1.0) if bounded else None
    for where in range(6):  # each call's input
        calls = walk_loop(*halves(), bounds, poison_call=where)
        assert first_nonfinite([c.output for c in calls]) == where
        assert first_nonfinite(sentinels(calls)) is not None
    for first in (0, 1):  # the encoder's or the decoder's weights
        enc, dec = halves()
        with torch.no_grad():
            (enc, dec)[first][0].weight[0, 0] = float("nan")
        calls = walk_loop(enc, dec, bounds)
        assert first_nonfinite([c.output for c in calls]) == first
        assert first_nonfinite(sentinels(calls)) is not None
    assert len(sentinels(walk_loop(*halves(), bounds))) == (2 if bounded else 4)


# -- schedules -----------------------------------------------------------------------


def test_schedules():
    assert [s for s in range(1, 12) if Schedule(5).should_compute(s)] == [1, 6, 11]
    dense = Schedule(50, log_start=True)
    assert [s for s in range(1, 160) if dense.should_compute(s)] == [
        1, 4, 16, 51, 101, 151]
    assert [s for s in range(1, 300) if Schedule(200, log_start=True)
            .should_compute(s)] == [1, 4, 16, 64, 201]
    assert not any(Schedule(0).should_compute(s) for s in range(1, 50))
    full = make_schedules("full")
    assert all(s.every == 1 for s in full.values())
    assert all(s.every == 0 for s in make_schedules("off").values())
    default = make_schedules("default", every={"probes": 7})
    assert default["probes"].every == 7 and default["nonfinite"].every == 1
    assert default["histograms"].every > default["drift"].every
    assert default["drift"].log_start and not default["histograms"].log_start
    assert not default["nonfinite"].log_start and not default["probes"].log_start
    assert not make_schedules("default", cheap_every=25)["drift"].log_start
    assert not make_schedules("full")["drift"].log_start
    with pytest.raises(ConfigError, match="unknown quantities"):
        make_schedules(every={"bogus": 1})
    with pytest.raises(ConfigError, match="mode"):
        make_schedules("sometimes")
