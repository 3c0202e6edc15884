"""Tests for tourbillon.model: the original API and the reference semantics.

Each block, stack and wrapper is compared with a slow hand-written loop in
float64 on random input. Values must agree to 1e-12 (absolute); gradients are
compared too, including which tensors a gradient reaches at all (``None``
versus a tensor), since the graph is as much part of the semantics as the
values.

The seed README's four examples are kept verbatim (only the import line
changed), so five of their lines are longer than 88 characters.
"""

from __future__ import annotations

import importlib.util
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tourbillon.config import Config
from tourbillon.errors import ConfigError, DataError
from tourbillon.model import (
    CircularBlock,
    RandomFeedback,
    Tourbillon,
    TourbillonBuildingBlockConv,
    TourbillonBuildingBlockLinear,
    TourbillonConv,
    TourbillonLinear,
    linear_block,
)

ATOL = 1e-12  # float64 agreement of values and gradients with the hand loops
REPO = Path(__file__).resolve().parents[1]

# -- the seed README's examples (the API contract), import line updated --------------

README_BLOCK_LINEAR = """
import torch
from tourbillon import TourbillonBuildingBlockLinear

# circular autoencoder with linear layers (only two layers currently supported)
model = TourbillonBuildingBlockLinear(
    in_features=784,
    hidden_features=256,
    num_circulations=2,   # how many times to cycle through the autoencoder
    target_circulation=0, # which circulation to take targets from
    output_circulation=1  # which circulation to take outputs from
)

input = torch.randn(1, 784)
output = model(input)
loss_enc = torch.nn.functional.mse_loss(output['enc_output'], output['enc_target'])
loss_dec = torch.nn.functional.mse_loss(output['dec_output'], output['dec_target'])
loss = loss_enc + loss_dec
loss.backward()
"""

README_BLOCK_CONV = """
import torch
from tourbillon import TourbillonBuildingBlockConv

# circular autoencoder with convolutional layers (only two layers currently supported)
model = TourbillonBuildingBlockConv(
    in_channels=3,
    hidden_channels=6,
    kernel_size=(5, 5),
    stride=(1, 1),
    padding=(2, 2),
    num_circulations=2,
    target_circulation=0,
    output_circulation=1
)

input = torch.randn(1, 3, 32, 32)
output = model(input)
loss_enc = torch.nn.functional.mse_loss(output['enc_output'], output['enc_target'])
loss_dec = torch.nn.functional.mse_loss(output['dec_output'], output['dec_target'])
loss = loss_enc + loss_dec
loss.backward()
"""

README_STACK_LINEAR = """
import torch
from tourbillon import TourbillonLinear

# stack of circular autoencoders with linear layers (only two layers currently supported)
model = TourbillonLinear(
    sizes=[784, 256, 64], # [input size, hidden size, hidden size]
    classes=10,
    num_circulations=2,
    target_circulation=0,
    output_circulation=1
)

input = torch.randn(1, 784)
labels = torch.randint(0, 10, (1,))
output = model(input)
loss_autoencoders = sum(
    torch.nn.functional.mse_loss(output[f'{half}_output_{block}'], output[f'{half}_target_{block}'])
    for half in ('enc', 'dec') for block in range(len(model.blocks))
)
loss_top = torch.nn.functional.cross_entropy(output['output'], labels)
loss = loss_autoencoders + loss_top
loss.backward()
"""

README_STACK_CONV = """
import torch
from tourbillon import TourbillonConv

# stacked circular autoencoder with convolutional layers (only two layers currently supported)
model = TourbillonConv(
    input_size=(32, 32),              # (h, w) of input
    channels=[3, 6, 6],               # [input channels, hidden channels, hidden channels]
    kernel_sizes=[(5, 5), (17, 17)],
    strides=1,                        # same as [(1, 1), (1, 1)]
    paddings=[2, 0],                  # same as [(2, 2), (0, 0)]
    classes=10,
    num_circulations=2,
    target_circulation=0,
    output_circulation=1
)

input = torch.randn(1, 3, 32, 32)
labels = torch.randint(0, 10, (1,))
output = model(input)
loss_autoencoders = sum(
    torch.nn.functional.mse_loss(output[f'{half}_output_{block}'], output[f'{half}_target_{block}'])
    for half in ('enc', 'dec') for block in range(len(model.blocks))
)
loss_top = torch.nn.functional.cross_entropy(output['output'], labels)
loss = loss_autoencoders + loss_top
loss.backward()
"""

BLOCK_KEYS = {"enc_target", "enc_output", "dec_target", "dec_output"}


def stack_keys(blocks: int) -> set[str]:
    """The original stack's output keys."""
    return {f"{key}_{k}" for key in BLOCK_KEYS for k in range(blocks)} | {"output"}


README_EXAMPLES = {
    "block-linear": (README_BLOCK_LINEAR, BLOCK_KEYS, {
        "enc_target": (1, 256), "enc_output": (1, 256),
        "dec_target": (1, 784), "dec_output": (1, 784)}),
    "block-conv": (README_BLOCK_CONV, BLOCK_KEYS, {
        "enc_target": (1, 6, 32, 32), "enc_output": (1, 6, 32, 32),
        "dec_target": (1, 3, 32, 32), "dec_output": (1, 3, 32, 32)}),
    "stack-linear": (README_STACK_LINEAR, stack_keys(2), {
        "enc_output_0": (1, 256), "dec_output_0": (1, 784),
        "enc_output_1": (1, 64), "dec_output_1": (1, 256), "output": (1, 10)}),
    "stack-conv": (README_STACK_CONV, stack_keys(2), {
        "enc_output_0": (1, 6, 32, 32), "dec_output_0": (1, 3, 32, 32),
        "enc_output_1": (1, 6, 16, 16), "dec_output_1": (1, 6, 32, 32),
        "output": (1, 10)}),
}


@pytest.mark.parametrize("code, keys, shapes", README_EXAMPLES.values(),
                         ids=README_EXAMPLES.keys())
def test_readme_example_runs_unchanged(code: str, keys: set[str],
                                       shapes: dict[str, tuple[int, ...]]) -> None:
    namespace: dict = {}
    exec(compile(code, "README", "exec"), namespace)
    output, model = namespace["output"], namespace["model"]

    assert set(output) == keys
    for key, shape in shapes.items():
        assert tuple(output[key].shape) == shape, key
    for key in output:
        if "target" in key:
            assert not output[key].requires_grad, key
    # backward reached both halves of every block (and the head of a stack)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


# -- the reference semantics of one block --------------------------------------------


def hand_loop(x: Tensor, encode: Callable[[Tensor], Tensor],
              decode: Callable[[Tensor], Tensor], circulations: int, target: int,
              output: int, lam: float = 0.0) -> dict[str, Tensor]:
    """The original block, written out: every circulation, nothing skipped."""
    visible = x
    codes, reconstructions, visibles = [], [], []
    for _ in range(circulations):
        visibles.append(visible)
        code = encode(visible)
        reconstruction = decode(code.detach())
        codes.append(code)
        reconstructions.append(reconstruction)
        visible = lam * visible.detach() + (1 - lam) * reconstruction.detach()
    return {
        "enc_output": codes[output],
        "enc_target": codes[target].detach(),
        "dec_output": reconstructions[output],
        "dec_target": reconstructions[target].detach(),
        "codes": codes,
        "visibles": visibles,
    }


def linear_halves(block: CircularBlock, enc_act: Callable = torch.tanh,
                  dec_act: Callable = torch.sigmoid) -> tuple[Callable, Callable]:
    """E and D of a linear block as plain functions of its parameters."""
    enc, dec = block.encoder[0], block.decoder[0]
    return (lambda v: enc_act(v @ enc.weight.T + enc.bias),
            lambda h: dec_act(h @ dec.weight.T + dec.bias))


def grads_of(value: Tensor, inputs: list[Tensor], probe: Tensor) -> list[Tensor | None]:
    """d <value, probe> / d inputs, with None where no gradient path exists."""
    if not value.requires_grad:
        return [None] * len(inputs)
    return list(torch.autograd.grad((value * probe).sum(), inputs, retain_graph=True,
                                    allow_unused=True))


def assert_same_values_and_graph(model_out: dict[str, Tensor],
                                 hand_out: dict[str, Tensor], keys: list[str],
                                 inputs: list[Tensor]) -> None:
    """Same values and the same gradients (None where the hand loop has none)."""
    for key in keys:
        got, want = model_out[key], hand_out[key]
        assert got.shape == want.shape, key
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0, msg=key)
        assert got.requires_grad == want.requires_grad, key
        probe = torch.randn_like(got)
        for g_got, g_want, i in zip(grads_of(got, inputs, probe),
                                    grads_of(want, inputs, probe), range(len(inputs))):
            assert (g_got is None) == (g_want is None), f"{key}: input {i}"
            if g_got is not None:
                torch.testing.assert_close(g_got, g_want, atol=ATOL, rtol=0)


RULES = {"n1-t0-o0": (1, 0, 0), "n2-t0-o1": (2, 0, 1), "n3-t2-o0": (3, 2, 0),
         "n3-t1-o2": (3, 1, 2), "n4-t3-o3": (4, 3, 3)}


@pytest.mark.parametrize("n, t, o", RULES.values(), ids=RULES.keys())
def test_linear_block_matches_hand_loop(n: int, t: int, o: int) -> None:
    block = TourbillonBuildingBlockLinear(7, 5, n, t, o).double()
    x = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    encode, decode = linear_halves(block)
    inputs = [x, *block.parameters()]
    assert_same_values_and_graph(block(x), hand_loop(x, encode, decode, n, t, o),
                                 sorted(BLOCK_KEYS), inputs)


def test_block_input_is_not_detached() -> None:
    block = TourbillonBuildingBlockLinear(7, 5, 2, target_circulation=1,
                                          output_circulation=0).double()
    x = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    out = block(x)
    F.mse_loss(out["enc_output"], out["enc_target"]).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_conv_block_layers_and_values() -> None:
    kernel, stride, padding = (3, 5), (2, 1), (1, 2)
    block = TourbillonBuildingBlockConv(3, 4, kernel, stride, padding).double()
    conv, conv_t = block.encoder[0], block.decoder[0]
    assert isinstance(conv, nn.Conv2d) and isinstance(conv_t, nn.ConvTranspose2d)
    assert isinstance(block.encoder[1], nn.Tanh)
    assert isinstance(block.decoder[1], nn.Sigmoid)
    for layer in (conv, conv_t):
        assert (layer.kernel_size, layer.stride, layer.padding) == (kernel, stride,
                                                                    padding)
    assert (conv.in_channels, conv.out_channels) == (3, 4)
    assert (conv_t.in_channels, conv_t.out_channels) == (4, 3)

    x = torch.randn(2, 3, 9, 7, dtype=torch.float64, requires_grad=True)

    def encode(v: Tensor) -> Tensor:
        return torch.tanh(F.conv2d(v, conv.weight, conv.bias, stride, padding))

    def decode(h: Tensor) -> Tensor:
        return torch.sigmoid(F.conv_transpose2d(h, conv_t.weight, conv_t.bias, stride,
                                                padding))

    assert_same_values_and_graph(block(x), hand_loop(x, encode, decode, 2, 0, 1),
                                 sorted(BLOCK_KEYS), [x, *block.parameters()])


# -- regression --------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.0, 0.25, 0.75], ids=lambda v: f"lam{v}")
def test_regression_mixes_visible_state_and_reconstruction(lam: float) -> None:
    config = Config(sizes=(7, 5), circulations=3, encoder_target=0, encoder_output=2,
                    decoder_target=1, decoder_output=2, feed_from=2, regression=lam)
    block = linear_block(config, 0, 7, 5).double()
    x = torch.randn(4, 7, dtype=torch.float64)

    # the visible state each circulation's encoder actually receives
    seen: list[Tensor] = []
    handle = block.encoder.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    try:
        out = block(x, keep_all=True)
    finally:
        handle.remove()

    encode, decode = linear_halves(block)
    with torch.no_grad():
        visible = x
        for i in range(3):
            torch.testing.assert_close(seen[i], visible, atol=ATOL, rtol=0)
            code = encode(visible)
            torch.testing.assert_close(out["codes"][i], code, atol=ATOL, rtol=0)
            visible = lam * visible + (1 - lam) * decode(code)
    hand = hand_loop(x, encode, decode, 3, 0, 2, lam)
    torch.testing.assert_close(out["enc_output"], hand["enc_output"], atol=ATOL,
                               rtol=0)


# -- the stack ------------------------------------------------------------------------


def test_linear_stack_matches_hand_loop() -> None:
    model = TourbillonLinear([9, 7, 5], classes=4, num_circulations=3,
                             target_circulation=0, output_circulation=2).double()
    x = torch.randn(3, 9, dtype=torch.float64, requires_grad=True)

    hand: dict[str, Tensor] = {}
    block_input = x
    for k, block in enumerate(model.blocks):
        encode, decode = linear_halves(block)
        result = hand_loop(block_input, encode, decode, 3, 0, 2)
        for key in BLOCK_KEYS:
            hand[f"{key}_{k}"] = result[key]
        block_input = result["enc_output"]  # passed up with its graph
    features = block_input.detach().flatten(1)
    hand["output"] = features @ model.head.weight.T + model.head.bias

    out = model(x)
    assert set(out) == stack_keys(2)
    assert_same_values_and_graph(out, hand, sorted(out), [x, *model.parameters()])


def test_stack_passes_code_up_with_its_graph() -> None:
    model = TourbillonLinear([9, 7, 5], classes=4, num_circulations=2,
                             target_circulation=1, output_circulation=0).double()
    x = torch.randn(3, 9, dtype=torch.float64)
    out = model(x)
    (g,) = torch.autograd.grad(out["enc_output_1"].sum(),
                               [model.blocks[0].encoder[0].weight])
    assert g.abs().sum() > 0


def test_forward_upto_runs_the_lower_blocks_only() -> None:
    model = Tourbillon(Config(sizes=(9, 7, 5, 3), classes=4)).double()
    x = torch.randn(3, 9, dtype=torch.float64)
    full = model(x)
    upto = model(x, upto=1)
    assert set(upto) == {k for k in full if k.endswith(("_0", "_1"))}
    for key, value in upto.items():
        assert torch.equal(value, full[key]), key
    for bad in (-1, 3):
        with pytest.raises(ValueError, match=f"upto={bad}, but the blocks are 0 to 2"):
            model(x, upto=bad)


def test_head_is_xavier_uniform() -> None:
    fan_in, fan_out = 400, 100
    model = TourbillonLinear([fan_in], classes=fan_out)
    w = model.head.weight.detach()
    bound = math.sqrt(6 / (fan_in + fan_out))
    # nn.Linear's default bound would be 1 / sqrt(fan_in) = 0.05, Xavier's 0.1095
    assert w.abs().max() <= bound
    assert w.abs().max() > 0.99 * bound
    assert abs(w.std().item() - bound / math.sqrt(3)) < 0.02 * bound


@pytest.mark.parametrize("arch", ["linear", "conv"])
def test_no_classes_gives_detached_features(arch: str) -> None:
    if arch == "linear":
        model = TourbillonLinear([9, 7, 5], classes=0)
        x = torch.randn(3, 9)
    else:
        model = TourbillonConv((8, 8), [2, 3, 4], 3, 2, 1, classes=0)
        x = torch.randn(3, 2, 8, 8)
    assert model.head is None
    out = model(x)
    torch.testing.assert_close(out["output"], out["enc_output_1"].flatten(1),
                               atol=0, rtol=0)
    assert not out["output"].requires_grad


# -- conv stacks: geometry and the head size ----------------------------------------

GEOMETRY = {
    "int-for-all": (3, 1, 1, [(3, 3)] * 2, [(1, 1)] * 2, [(1, 1)] * 2),
    "tuple-for-all": ((3, 5), (1, 2), (1, 2), [(3, 5)] * 2, [(1, 2)] * 2,
                      [(1, 2)] * 2),
    "per-block-list": ([3, (5, 3)], [(2, 1), 1], [1, 0], [(3, 3), (5, 3)],
                       [(2, 1), (1, 1)], [(1, 1), (0, 0)]),
}


@pytest.mark.parametrize("kernels, strides, paddings, want_k, want_s, want_p",
                         GEOMETRY.values(), ids=GEOMETRY.keys())
def test_conv_stack_geometry(kernels, strides, paddings, want_k, want_s,
                             want_p) -> None:
    model = TourbillonConv((12, 12), [2, 3, 4], kernels, strides, paddings, classes=5)
    for k, block in enumerate(model.blocks):
        for layer in (block.encoder[0], block.decoder[0]):
            assert layer.kernel_size == want_k[k]
            assert layer.stride == want_s[k]
            assert layer.padding == want_p[k]
    out = model(torch.randn(2, 2, 12, 12))
    assert out["output"].shape == (2, 5)


@pytest.mark.parametrize("field", ["kernel_sizes", "strides", "paddings"])
def test_conv_stack_wrong_length_list_names_the_field(field: str) -> None:
    geometry = {"kernel_sizes": 3, "strides": 1, "paddings": 1, field: [1, 1, 1]}
    with pytest.raises(ConfigError, match=rf"{field} has 3 entries.*2 block"):
        TourbillonConv((12, 12), [2, 3, 4], classes=5, **geometry)


def test_head_size_from_the_real_strided_output() -> None:
    # 28 -> 14 -> 7 with kernel 4, stride 2, padding 1; arithmetic that ignores
    # the stride (h + 2p - k + 1) would give 27 -> 26 and a head of 6*26*26.
    model = TourbillonConv((28, 28), [1, 4, 6], 4, 2, 1, classes=10)
    assert model.code_shapes == [(1, 28, 28), (4, 14, 14), (6, 7, 7)]
    assert model.head.in_features == 6 * 7 * 7
    out = model(torch.rand(3, 1, 28, 28))
    assert out["output"].shape == (3, 10)
    assert out["dec_output_0"].shape == (3, 1, 28, 28)


def test_conv_geometry_reconstructs_the_input_shape_or_is_rejected() -> None:
    config = Config(arch="conv", channels=(1, 4), kernel_sizes=5, strides=2,
                    paddings=2, input_size=(28, 28), decoder_target="input")
    try:
        model = Tourbillon(config)
    except ConfigError as error:  # an acceptable fix: refuse the geometry
        assert "strides" in str(error) or "paddings" in str(error)
        return
    x = torch.rand(2, 1, 28, 28)
    assert model(x)["dec_output_0"].shape == x.shape


# -- input shape errors ------------------------------------------------------------

BAD_INPUTS = {
    "linear-width": (lambda: TourbillonLinear([12, 8], 3), (3, 11), "(B, 12)"),
    "linear-unbatched": (lambda: TourbillonLinear([12, 8], 3), (12,), "(B, 12)"),
    "linear-image": (lambda: TourbillonLinear([12, 8], 3), (3, 1, 12), "(B, 12)"),
    "conv-size": (lambda: TourbillonConv((8, 8), [2, 3], 3, 1, 1, 3), (3, 2, 8, 9),
                  "(B, 2, 8, 8)"),
    "conv-channels": (lambda: TourbillonConv((8, 8), [2, 3], 3, 1, 1, 3),
                      (3, 1, 8, 8), "(B, 2, 8, 8)"),
    "conv-flat": (lambda: TourbillonConv((8, 8), [2, 3], 3, 1, 1, 3), (3, 128),
                  "(B, 2, 8, 8)"),
}


@pytest.mark.parametrize("make, shape, expected", BAD_INPUTS.values(),
                         ids=BAD_INPUTS.keys())
def test_wrong_input_shape_names_expected_and_actual(make, shape, expected) -> None:
    with pytest.raises(DataError) as info:
        make()(torch.zeros(shape))
    message = str(info.value)
    assert expected in message and str(tuple(shape)) in message


@pytest.mark.parametrize("make, shape", [
    (lambda: TourbillonBuildingBlockLinear(12, 8), (3, 11)),
    (lambda: TourbillonBuildingBlockConv(2, 3, 3, 1, 1), (3, 1, 8, 8)),
], ids=["block-linear", "block-conv"])
def test_building_block_wrong_input_shape_raises_data_error(make, shape) -> None:
    with pytest.raises(DataError, match=re.escape(str(tuple(shape)))):
        make()(torch.zeros(shape))


# -- RandomFeedback ---------------------------------------------------------------


def make_layer(kind: str) -> tuple[nn.Module, Tensor]:
    """A float64 layer and an input for it."""
    if kind == "linear":
        return nn.Linear(6, 9).double(), torch.randn(4, 6, dtype=torch.float64)
    layer = nn.ConvTranspose2d(3, 2, kernel_size=(3, 4), stride=2, padding=1)
    return layer.double(), torch.randn(4, 3, 5, 6, dtype=torch.float64)


def input_grad_through(layer: nn.Module, matrix: Tensor, grad_out: Tensor) -> Tensor:
    """The error a layer sends back to its input when ``matrix`` replaces its weight."""
    if isinstance(layer, nn.Linear):
        return grad_out @ matrix  # (B, out) @ (out, in) -> (B, in)
    # ConvTranspose2d's input gradient is the matching Conv2d of the error.
    return F.conv2d(grad_out, matrix, None, layer.stride, layer.padding)


@pytest.mark.parametrize("kind", ["linear", "conv_transpose"])
def test_random_feedback_forward_and_gradients(kind: str) -> None:
    layer, x = make_layer(kind)
    wrapped = RandomFeedback(layer)
    assert wrapped.feedback.shape == layer.weight.shape
    assert "feedback" in dict(wrapped.named_buffers())
    assert all(p is not wrapped.feedback for p in wrapped.parameters())
    feedback_before = wrapped.feedback.clone()

    h = x.clone().requires_grad_()
    out = wrapped(h)
    torch.testing.assert_close(out, layer(x), atol=ATOL, rtol=0)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)

    # the exact weight gradient, from the plain layer
    h_plain = x.clone().requires_grad_()
    weight_grad, bias_grad = layer.weight.grad.clone(), layer.bias.grad.clone()
    layer.zero_grad()
    plain = layer(h_plain)
    plain.backward(grad_out)
    torch.testing.assert_close(weight_grad, layer.weight.grad, atol=ATOL, rtol=0)
    torch.testing.assert_close(bias_grad, layer.bias.grad, atol=ATOL, rtol=0)

    expected = input_grad_through(layer, wrapped.feedback, grad_out)
    torch.testing.assert_close(h.grad, expected, atol=ATOL, rtol=0)
    exact = input_grad_through(layer, layer.weight.detach(), grad_out)
    torch.testing.assert_close(h_plain.grad, exact, atol=ATOL, rtol=0)
    assert not torch.allclose(h.grad, h_plain.grad)
    assert torch.equal(wrapped.feedback, feedback_before)


def test_random_feedback_is_xavier_uniform() -> None:
    wrapped = RandomFeedback(nn.Linear(300, 200))
    bound = math.sqrt(6 / 500)
    assert wrapped.feedback.abs().max() <= bound
    assert abs(wrapped.feedback.std().item() - bound / math.sqrt(3)) < 0.02 * bound


def test_random_feedback_forward_is_bit_exact() -> None:
    layer = nn.Linear(50, 70)
    h = torch.randn(64, 50, requires_grad=True)
    assert torch.equal(RandomFeedback(layer)(h), layer(h))


def test_random_feedback_rejects_other_layers() -> None:
    with pytest.raises(ConfigError, match="Linear and ConvTranspose2d"):
        RandomFeedback(nn.Conv2d(2, 3, 3))


# -- the benchmark script ----------------------------------------------------------


def _benchmark_module():
    spec = importlib.util.spec_from_file_location(
        "train_step_benchmark", REPO / "benchmarks" / "train_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.parametrize("maker", ["make_bare_step", "make_autograd_step", "rung 1",
                                   "rung 2", "rung 3"])
def test_benchmark_reference_steps_are_the_trainers_update(maker: str) -> None:
    bench = _benchmark_module()
    trainer = bench.make_trainer()
    if maker.startswith("rung"):  # a trainer of its own, the same seed
        other, params = bench.make_rung(int(maker.split()[1]))
    else:
        other, params = getattr(bench, maker)(trainer, trainer.data.x_train[:bench.B])
    step = bench.make_step(trainer)
    block = trainer.model.blocks[0]
    trained = [block.encoder[0].weight, block.encoder[0].bias,
               block.decoder[0].weight, block.decoder[0].bias]
    for got, want in zip(params, trained):
        assert got is not want and torch.equal(got, want)
    for _ in range(3):  # momentum and lr decay in play
        step()
        other()
    for got, want in zip(params, trained):
        # float32, different operation order: rounding only.
        torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-5, atol=1e-6)


def test_benchmark_quick_run_prints_ratio() -> None:
    script = REPO / "benchmarks" / "train_step.py"
    result = subprocess.run([sys.executable, str(script), "--quick"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert re.fullmatch(r"ratio: \d+\.\d\d", lines[-1]), lines[-1]
    # The figures name the processor and torch that measured them.
    assert re.fullmatch(r"cpu: .+, torch \d+\.\d+\S*", lines[0]), lines[0]
    # The ladder's last rung is the step whose ratio ends the output.
    rung = next(line for line in lines if "= Trainer.train_step" in line)
    assert rung.split()[-2] == lines[-1].split()[-1]
