"""Tests for tourbillon.rules and tourbillon.optim: locality and exact updates.

Locality is checked with autograd itself: which parameters, and which
circulations, a rule's gradient reaches. The update rules are checked in
float64 against hand-written formulas, to 1e-10 absolute (a few hundred
products of numbers of order 1 leave errors near 1e-15; 1e-10 leaves room
without hiding a missing factor such as f' or 1/B).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tourbillon.config import VARIANTS, Config
from tourbillon.model import Tourbillon
from tourbillon import optim
from tourbillon.optim import AveragedMomentumSGD, make_optimizer
from tourbillon.rules import (LayerGradient, decoder_objective, encoder_objective,
                              feedback_objective, rule_gradients)

ATOL = 1e-10  # float64 agreement of updates with the hand formulas

# -- the configurations whose locality is checked ------------------------------------

SMALL = dict(sizes=(10, 8, 6, 5), classes=3)
CONV = dict(arch="conv", channels=(2, 3, 4), input_size=(6, 6), kernel_sizes=3,
            strides=1, paddings=1, classes=3)
EXTRA: dict[str, dict[str, Any]] = {
    "three-circulations": dict(circulations=3, encoder_target=2, encoder_output=1,
                               decoder_target=0, decoder_output=2, feed_from=2),
    "targets-after-outputs": dict(circulations=3, encoder_target=2, encoder_output=1,
                                  decoder_target=2, decoder_output=1, feed_from=0),
    "decoder-target-input": dict(decoder_target="input", decoder_output=1),
    "regression": dict(regression=0.6, circulations=3, encoder_output=2,
                       decoder_output=2),
    "feed-from-0": dict(feed_from=0),
    "conv": CONV,
    "conv-authors-detach": dict(CONV, encoder_rule="authors", input_graph="detach"),
    "authors-keep": dict(encoder_rule="authors", input_graph="keep"),
    "authors-detach-target-1": dict(encoder_rule="authors", encoder_target=1,
                                    encoder_output=0, input_graph="detach"),
    "input-detach": dict(input_graph="detach"),
    "outputs-at-0-keep": dict(encoder_target=1, encoder_output=0, decoder_target=1,
                              decoder_output=0, input_graph="keep"),
    "outputs-at-0-detach": dict(encoder_target=1, encoder_output=0, decoder_target=1,
                                decoder_output=0, input_graph="detach"),
    "end-to-end-random-backward": dict(code_graph="keep", decoder_backward="random",
                                       input_graph="detach", decoder_target="input",
                                       decoder_output=0),
    "decoder-rule-none": dict(decoder_rule="none"),
    "sum-reduction": dict(loss_reduction="sum", encoder_rule="authors",
                          input_graph="detach"),
}
CONFIGS: dict[str, Config] = {
    **{f"variant-{name}": v.config(**SMALL) for name, v in VARIANTS.items()},
    **{name: Config(name=name, **{**SMALL, **fields})
       for name, fields in EXTRA.items()},
}


def make_model(config: Config) -> tuple[Tourbillon, Tensor]:
    """A float64 model of ``config`` and a random input batch for it."""
    model = Tourbillon(config).double()
    x = torch.rand(4, *model.input_shape, dtype=torch.float64)
    return model, x


def rule_objectives(out: dict[str, Tensor], config: Config,
                    k: int) -> dict[str, Tensor]:
    """Block ``k``'s local objectives by name."""
    return {"encoder": encoder_objective(out, config, f"_{k}"),
            "decoder": decoder_objective(out, config, f"_{k}")}


def touched(objective: Tensor, tensors: list[Tensor]) -> list[bool]:
    """Whether ``objective``'s gradient reaches each tensor with a nonzero value."""
    if not objective.requires_grad:
        return [False] * len(tensors)
    grads = torch.autograd.grad(objective, tensors, retain_graph=True,
                                allow_unused=True)
    return [g is not None and bool(g.abs().sum() > 0) for g in grads]


def leaks_below(config: Config, rule: str) -> bool:
    """Whether the rule's graph reaches the block input (original's leak).

    With ``input_graph='keep'`` the block input carries the lower block's
    graph; a rule whose graph-carrying code is taken at circulation 0 (the
    output for ``autograd``, the target for ``authors``, the code fed to the
    decoder with ``code_graph='keep'``) therefore sends gradient down.
    """
    if config.input_graph == "detach":
        return False
    if rule == "encoder":
        circulation = {"autograd": config.encoder_output,
                       "authors": config.encoder_target}.get(config.encoder_rule)
    else:
        keeps = config.code_graph == "keep" and config.decoder_rule != "none"
        circulation = config.decoder_output if keeps else None
    return circulation == 0


def owner(name: str) -> str:
    """``block{k}.encoder`` / ``block{k}.decoder`` / ``head`` of a parameter name."""
    if name.startswith("blocks."):
        _, k, half = name.split(".")[:3]
        return f"block{k}.{half}"
    return name.split(".")[0]


# -- locality across blocks and halves -------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_rules_touch_only_their_own_block(config: Config) -> None:
    model, x = make_model(config)
    out = model(x)
    names, params = zip(*model.named_parameters())
    for k in range(len(model.blocks)):
        for rule, objective in rule_objectives(out, config, k).items():
            reached = {owner(n) for n, hit in zip(names, touched(objective, params))
                       if hit}
            own = {f"block{k}.encoder", f"block{k}.decoder"}
            below = {f"block{j}.{h}" for j in range(k) for h in ("encoder", "decoder")}
            allowed = own | (below if leaks_below(config, rule) else set())
            assert reached <= allowed, f"block {k} {rule} rule reached {reached}"
            if rule == "encoder":
                assert f"block{k}.decoder" not in reached
            elif config.code_graph == "detach":
                assert f"block{k}.encoder" not in reached
            if objective.requires_grad:
                assert f"block{k}.{rule}" in reached, f"block {k} {rule} rule is idle"


@pytest.mark.parametrize("input_graph, leaks", [("keep", True), ("detach", False)])
def test_original_leak_into_the_block_below(input_graph: str, leaks: bool) -> None:
    # Outputs at circulation 0: with the input attached, the block-1 encoder
    # rule's output E_1(x) carries block 0's graph, as in the original code.
    config = Config(sizes=(10, 8, 6), encoder_target=1, encoder_output=0,
                    decoder_target=1, decoder_output=0, input_graph=input_graph)
    model, x = make_model(config)
    out = model(x)
    block0 = list(model.blocks[0].encoder.parameters())
    assert any(touched(encoder_objective(out, config, "_1"), block0)) == leaks
    # the decoder rule never leaks while its code is detached
    assert not any(touched(decoder_objective(out, config, "_1"), block0))


def test_authors_rule_leaks_through_its_target_with_input_kept() -> None:
    # The authors' rule takes its graph from the target circulation, so with
    # input_graph='keep' it leaks at target 0 although its output is at 1.
    config = Config(sizes=(10, 8, 6), encoder_rule="authors", encoder_target=0,
                    encoder_output=1, input_graph="keep")
    model, x = make_model(config)
    block0 = list(model.blocks[0].encoder.parameters())
    assert any(touched(encoder_objective(model(x), config, "_1"), block0))


def test_end_to_end_decoder_rule_reaches_the_encoder() -> None:
    config = VARIANTS["bp"].config()
    model, x = make_model(config.replace(sizes=(10, 6)))
    out = model(x)
    encoder = list(model.blocks[0].encoder.parameters())
    assert all(touched(decoder_objective(out, config, "_0"), encoder))


# -- locality across circulations ------------------------------------------------------


@contextmanager
def circulation_probes(block: nn.Module) -> Iterator[dict[str, list[Tensor]]]:
    """Add a zero leaf to every encoder and decoder output, one per call.

    The gradient a leaf receives is the gradient reaching that circulation's
    half; values are unchanged. The hooks are removed even on error.
    """
    probes: dict[str, list[Tensor]] = {"encoder": [], "decoder": []}

    def hook_for(half: str) -> Callable:
        def hook(module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
            leaf = torch.zeros_like(output, requires_grad=True)
            probes[half].append(leaf)
            return output + leaf
        return hook

    handles = [block.encoder.register_forward_hook(hook_for("encoder")),
               block.decoder.register_forward_hook(hook_for("decoder"))]
    try:
        yield probes
    finally:
        for handle in handles:
            handle.remove()


def reached_circulations(objective: Tensor, leaves: list[Tensor]) -> set[int]:
    """Circulations whose probe the objective's gradient reaches at all."""
    if not objective.requires_grad or not leaves:
        return set()
    grads = torch.autograd.grad(objective, leaves, retain_graph=True,
                                allow_unused=True)
    return {i for i, g in enumerate(grads) if g is not None and g.abs().sum() > 0}


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_rules_reach_only_the_circulation_they_name(config: Config) -> None:
    model, x = make_model(config)
    k = len(model.blocks) - 1
    with circulation_probes(model.blocks[k]) as probes:
        out = model(x)
    objectives = rule_objectives(out, config, k)

    enc_circulation = {"autograd": {config.encoder_output},
                       "authors": {config.encoder_target}, "none": set()}
    encoder = objectives["encoder"]
    assert reached_circulations(encoder, probes["encoder"]) == enc_circulation[
        config.encoder_rule]
    assert reached_circulations(encoder, probes["decoder"]) == set()

    decoder = objectives["decoder"]
    named = {config.decoder_output} if config.decoder_rule == "delta" else set()
    assert reached_circulations(decoder, probes["decoder"]) == named
    via_code = named if config.code_graph == "keep" else set()
    assert reached_circulations(decoder, probes["encoder"]) == via_code


def test_circulation_probes_are_removed_after_an_error() -> None:
    model, x = make_model(Config(sizes=(10, 8)))
    block = model.blocks[0]
    with pytest.raises(RuntimeError, match="inside"):
        with circulation_probes(block):
            raise RuntimeError("inside")
    assert not block.encoder._forward_hooks and not block.decoder._forward_hooks


# -- exact delta rules -----------------------------------------------------------------

DERIVATIVES: dict[str, tuple[Callable, Callable]] = {
    "tanh": (torch.tanh, lambda z: 1 - torch.tanh(z) ** 2),
    "sigmoid": (torch.sigmoid, lambda z: torch.sigmoid(z) * (1 - torch.sigmoid(z))),
    "identity": (lambda z: z, torch.ones_like),
    "relu": (torch.relu, lambda z: (z > 0).to(z.dtype)),
}


def hand_circulations(x: Tensor, block: nn.Module, activation: str, n: int,
                      lam: float, decoder_activation: str | None = None
                      ) -> list[dict[str, Tensor]]:
    """Every circulation of a linear block, with pre-activations, written out."""
    f = DERIVATIVES[activation][0]
    g = DERIVATIVES[decoder_activation or activation][0]
    enc, dec = block.encoder[0], block.decoder[0]
    A, a, W, w = (t.detach() for t in (enc.weight, enc.bias, dec.weight, dec.bias))
    visible, steps = x, []
    for _ in range(n):
        z = visible @ A.T + a  # (B, H)
        h = f(z)
        u = h @ W.T + w  # (B, D)
        r = g(u)
        steps.append(dict(visible=visible, z=z, h=h, u=u, r=r))
        visible = lam * visible + (1 - lam) * r
    return steps


def rule_model(activation: str, reduction: str, **fields: Any) -> Config:
    """A one-block float64 config with the same activation both ways."""
    return Config(sizes=(7, 5), classes=0, encoder_activation=activation,
                  decoder_activation=activation, loss_reduction=reduction, **fields)


def reduction_scale(reduction: str, output: Tensor) -> float:
    """Multiplier from 'per example, summed' to the configured reduction."""
    B = output.shape[0]
    return 1.0 if reduction == "sum" else 2.0 / output.numel() * B


def weight_grads(objective: Tensor, layer: nn.Linear) -> tuple[Tensor, Tensor]:
    return torch.autograd.grad(objective, [layer.weight, layer.bias])


ACTS = list(DERIVATIVES)
REDUCTIONS = ["sum", "mean"]
DECODER_CASES = {"target-circulation-2": 2, "target-input": "input"}


@pytest.mark.parametrize("target", DECODER_CASES.values(), ids=DECODER_CASES.keys())
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("activation", ACTS)
def test_decoder_delta_rule(activation: str, reduction: str, target: Any) -> None:
    config = rule_model(activation, reduction, circulations=3, encoder_target=0,
                        encoder_output=1, decoder_target=target, decoder_output=1,
                        regression=0.3)
    model, x = make_model(config)
    out = model(x)
    steps = hand_circulations(x, model.blocks[0], activation, 3, 0.3)

    o = steps[1]
    goal = x if target == "input" else steps[target]["r"]
    fprime = DERIVATIVES[activation][1]
    delta = (goal - o["r"]) * fprime(o["u"])  # (B, D)
    B = x.shape[0]
    scale = reduction_scale(reduction, o["r"])
    want_w = delta.T @ o["h"] / B * scale  # (D, H)
    want_b = delta.sum(0) / B * scale

    got_w, got_b = weight_grads(decoder_objective(out, config, "_0"),
                                model.blocks[0].decoder[0])
    torch.testing.assert_close(-got_w, want_w, atol=ATOL, rtol=0)
    torch.testing.assert_close(-got_b, want_b, atol=ATOL, rtol=0)


@pytest.mark.parametrize("rule", ["autograd", "authors"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("activation", ACTS)
def test_encoder_rule(activation: str, reduction: str, rule: str) -> None:
    t, o = 0, 2
    config = rule_model(activation, reduction, circulations=3, encoder_target=t,
                        encoder_output=o, encoder_rule=rule, input_graph="detach")
    model, x = make_model(config)
    out = model(x)
    steps = hand_circulations(x, model.blocks[0], activation, 3, 0.0)

    # autograd: f' and presynaptic input of the output circulation;
    # authors: of the target circulation.
    at = steps[o] if rule == "autograd" else steps[t]
    fprime = DERIVATIVES[activation][1]
    delta = (steps[t]["h"] - steps[o]["h"]) * fprime(at["z"])  # (B, H)
    B = x.shape[0]
    scale = reduction_scale(reduction, steps[o]["h"])
    want_w = delta.T @ at["visible"] / B * scale  # (H, D)
    want_b = delta.sum(0) / B * scale

    got_w, got_b = weight_grads(encoder_objective(out, config, "_0"),
                                model.blocks[0].encoder[0])
    torch.testing.assert_close(-got_w, want_w, atol=ATOL, rtol=0)
    torch.testing.assert_close(-got_b, want_b, atol=ATOL, rtol=0)


def test_authors_variant_rule_is_the_published_update() -> None:
    # (h0 - h1) f'(h0) x0 / B for the encoder, (x0 - x1) h0 / B for the decoder
    config = VARIANTS["authors"].config(sizes=(7, 5))
    model, x = make_model(config)
    out = model(x)
    enc, dec = model.blocks[0].encoder[0], model.blocks[0].decoder[0]
    with torch.no_grad():
        h0 = torch.tanh(x @ enc.weight.T + enc.bias)
        x1 = h0 @ dec.weight.T + dec.bias
        h1 = torch.tanh(x1 @ enc.weight.T + enc.bias)
    B = x.shape[0]
    got_a, _ = weight_grads(encoder_objective(out, config, "_0"), enc)
    got_b, _ = weight_grads(decoder_objective(out, config, "_0"), dec)
    torch.testing.assert_close(-got_a, ((h0 - h1) * (1 - h0**2)).T @ x / B, atol=ATOL,
                               rtol=0)
    torch.testing.assert_close(-got_b, (x - x1).T @ h0 / B, atol=ATOL, rtol=0)


# -- the explicit form of the rules ---------------------------------------------------

# Every linear point of CONFIGS whose rules stay inside their block, which is
# what update='explicit' asks of a config.
EXPLICIT_CONFIGS = {
    name: config.replace(input_graph="detach")
    for name, config in CONFIGS.items()
    if config.arch == "linear" and config.code_graph == "detach"
}


def assert_products_are_the_objectives_gradients(config: Config, model: Tourbillon,
                                                 x: Tensor) -> None:
    """``rule_gradients`` of every block against autograd on the objectives."""
    out = model(x)
    for k, block in enumerate(model.blocks):
        products = rule_gradients(model, out, config, [k])
        rules = [(encoder_objective(out, config, f"_{k}"), block.encoder[0]),
                 (decoder_objective(out, config, f"_{k}"), block.decoder[0])]
        rules = [(objective, layer) for objective, layer in rules
                 if objective.requires_grad]
        assert [g.layer for g in products] == [layer for _, layer in rules]
        for g, (objective, layer) in zip(products, rules):
            want_w, want_b = weight_grads(objective, layer)
            torch.testing.assert_close(g.weight_grad(), want_w, atol=ATOL, rtol=0)
            torch.testing.assert_close(g.bias_grad(), want_b, atol=ATOL, rtol=0)
            torch.testing.assert_close(g.objective, objective.detach(), atol=ATOL,
                                       rtol=0)


@pytest.mark.parametrize("config", EXPLICIT_CONFIGS.values(),
                         ids=EXPLICIT_CONFIGS.keys())
def test_explicit_rules_are_the_objectives_gradients(config: Config) -> None:
    torch.manual_seed(0)
    assert_products_are_the_objectives_gradients(config, *make_model(config))


@pytest.mark.parametrize("rule", ["autograd", "authors"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("activation", ACTS)
def test_explicit_rules_for_every_activation(activation: str, reduction: str,
                                             rule: str) -> None:
    config = rule_model(activation, reduction, circulations=3, encoder_target=2,
                        encoder_output=1, encoder_rule=rule, decoder_target="input",
                        decoder_output=2, regression=0.3, input_graph="detach")
    torch.manual_seed(1)
    model, x = make_model(config)
    if activation == "relu":  # some units on, some off
        model.blocks[0].encoder[0].bias.data.uniform_(-0.5, 0.5)
    assert_products_are_the_objectives_gradients(config, model, x)


def test_explicit_rules_stop_where_the_rule_says_none() -> None:
    config = Config(sizes=(7, 5), classes=0, encoder_rule="none", input_graph="detach")
    model, x = make_model(config)
    (only,) = rule_gradients(model, model(x), config, [0])
    assert only.layer is model.blocks[0].decoder[0]


def test_explicit_rules_reject_conv_layers() -> None:
    config = Config(**CONV, input_graph="detach")
    model, x = make_model(config)
    with pytest.raises(TypeError, match="linear layers, not Conv2d"):
        rule_gradients(model, model(x), config, [0])


# -- direct feedback alignment ---------------------------------------------------------


@pytest.mark.parametrize("feed_from", [0, 1], ids=lambda v: f"feed_from{v}")
def test_feedback_objective_is_direct_feedback_alignment(feed_from: int) -> None:
    config = VARIANTS["feedback"].config(sizes=(9, 7, 5), classes=4,
                                         feed_from=feed_from)
    model, x = make_model(config)
    labels = torch.tensor([0, 3, 1, 3])
    out = model(x)
    objective = feedback_objective(model, out, labels, [0, 1])

    # the head's error at the logits, sent to each block by its own matrix
    B = x.shape[0]
    with torch.no_grad():
        logits = out["code_1"].flatten(1) @ model.head.weight.T + model.head.bias
        delta = (logits.softmax(1) - F.one_hot(labels, 4).double()) / B  # (B, C)
    block_input = x
    for k, block in enumerate(model.blocks):
        steps = hand_circulations(block_input, block, "tanh", 2, 0.0, "identity")
        fed = steps[feed_from]
        error = delta @ getattr(model, f"feedback_{k}")  # (B, H_k)
        local = error * (1 - torch.tanh(fed["z"]) ** 2)
        want_w, want_b = local.T @ fed["visible"], local.sum(0)
        got_w, got_b = weight_grads(objective, block.encoder[0])
        torch.testing.assert_close(got_w, want_w, atol=ATOL, rtol=0)
        torch.testing.assert_close(got_b, want_b, atol=ATOL, rtol=0)
        block_input = fed["h"]

    others = [*model.head.parameters(),
              *(p for b in model.blocks for p in b.decoder.parameters())]
    assert not any(touched(objective, others))


# -- the authors' SGD ------------------------------------------------------------------


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("decay", [0.0, 0.05], ids=["constant-lr", "decay"])
def test_averaged_momentum_sgd_matches_hand_loop(decay: float, fused: bool,
                                                 monkeypatch) -> None:
    if not fused:  # as on a device without torch's fused SGD kernel
        monkeypatch.setattr(optim, "fused_available", lambda *args: False)
    lr, momentum, steps = 0.3, 0.8, 6
    g = torch.Generator().manual_seed(1)
    start = [torch.randn(4, 3, generator=g, dtype=torch.float64),
             torch.randn(3, generator=g, dtype=torch.float64)]
    grads = [[torch.randn(p.shape, generator=g, dtype=torch.float64) for p in start]
             for _ in range(steps)]

    params = [p.clone().requires_grad_() for p in start]
    optimizer = AveragedMomentumSGD(params, lr, momentum, decay)
    assert optimizer.defaults["fused"] is fused
    weights, averages = [p.clone() for p in start], [torch.zeros_like(p) for p in start]
    for t in range(steps):
        for p, grad in zip(params, grads[t]):
            p.grad = grad.clone()
        optimizer.step()

        lr_t = lr / (1 + decay * t)
        for i in range(len(start)):
            averages[i] = momentum * averages[i] + (1 - momentum) * grads[t][i]
            weights[i] = weights[i] - lr_t * averages[i]
            torch.testing.assert_close(params[i].detach(), weights[i], atol=1e-12,
                                       rtol=0)


def test_averaged_momentum_sgd_refuses_a_foreign_state() -> None:
    p = torch.ones(3, requires_grad=True)
    saved = torch.optim.SGD([p], lr=0.1, momentum=0.8).state_dict()
    with pytest.raises(ValueError, match="lacks decay, lr0, step"):
        AveragedMomentumSGD([p], lr=0.1).load_state_dict(saved)


def test_fused_available_says_no_for_tensors_without_a_kernel() -> None:
    assert optim.fused_available(torch.optim.SGD, [torch.zeros(2)]) is True
    assert optim.fused_available(torch.optim.SGD,
                                 [torch.zeros(2, dtype=torch.int64)]) is False


def test_averaged_momentum_sgd_skips_parameters_without_gradient() -> None:
    p, q = torch.ones(3, requires_grad=True), torch.ones(2, requires_grad=True)
    optimizer = AveragedMomentumSGD([p, q], lr=0.5, momentum=0.8)
    p.grad = torch.ones(3)
    optimizer.step()
    torch.testing.assert_close(p.detach(), torch.full((3,), 1 - 0.5 * 0.2))
    assert torch.equal(q.detach(), torch.ones(2)) and q not in optimizer.state


def test_averaged_momentum_sgd_counts_only_steps_with_gradients() -> None:
    p = torch.ones(1, requires_grad=True)
    optimizer = AveragedMomentumSGD([p], lr=1.0, momentum=0.5, decay=1.0)
    optimizer.step()  # no gradient: no step, so lr_t stays at lr / (1 + 0)
    p.grad = torch.ones(1)
    optimizer.step()
    torch.testing.assert_close(p.detach(), torch.tensor([1.0 - 0.5]))
    assert optimizer.param_groups[0]["step"] == 1


def test_make_optimizer_uses_the_authors_decay() -> None:
    config = VARIANTS["authors"].config()
    optimizer = make_optimizer([torch.zeros(1, requires_grad=True)], config)
    assert isinstance(optimizer, AveragedMomentumSGD)
    group = optimizer.param_groups[0]
    assert (group["lr0"], group["momentum"]) == (config.lr, config.momentum)
    assert group["decay"] == pytest.approx(config.lr / config.epochs)
    no_decay = make_optimizer([torch.zeros(1, requires_grad=True)],
                              config.replace(lr_decay=False))
    assert no_decay.param_groups[0]["decay"] == 0.0
    adam = make_optimizer([torch.zeros(1, requires_grad=True)],
                          config.replace(optimizer="adam", lr_decay=False))
    assert isinstance(adam, torch.optim.Adam)


def test_step_products_is_the_step_from_gradients() -> None:
    # Momentum and decay in play; one step updates one layer only, and a step
    # without products must not advance the lr schedule.
    g = torch.Generator().manual_seed(3)
    layers = [nn.Linear(4, 3).double(), nn.Linear(3, 5).double()]
    twins = [nn.Linear(4, 3).double(), nn.Linear(3, 5).double()]
    for layer, twin in zip(layers, twins):
        twin.load_state_dict(layer.state_dict())

    def params(pair):
        return [p for layer in pair for p in layer.parameters()]

    by_products = AveragedMomentumSGD(params(layers), lr=0.2, momentum=0.7, decay=0.1)
    by_grads = AveragedMomentumSGD(params(twins), lr=0.2, momentum=0.7, decay=0.1)
    for active in ([0, 1], [0], [], [0, 1], [1]):
        products = []
        by_grads.zero_grad(set_to_none=True)
        for i in active:
            layer, twin = layers[i], twins[i]
            delta = torch.randn(6, layer.out_features, generator=g, dtype=torch.float64)
            presyn = torch.randn(6, layer.in_features, generator=g, dtype=torch.float64)
            product = LayerGradient(layer, delta, presyn, 0.25, delta.new_zeros(()))
            products.append(product)
            twin.weight.grad = product.weight_grad()
            twin.bias.grad = product.bias_grad()
        by_products.step_products(products)
        by_grads.step()
        for p, q in zip(params(layers), params(twins)):
            torch.testing.assert_close(p.detach(), q.detach(), atol=1e-12, rtol=0)
    (group,), (twin_group,) = by_products.param_groups, by_grads.param_groups
    assert group["step"] == twin_group["step"] == 4
    assert group["lr"] == twin_group["lr"]


def test_step_products_follows_added_and_loaded_param_groups() -> None:
    # step_products keeps its parameter -> group map between steps; a group
    # added later and groups replaced by load_state_dict must be the ones used.
    first, second = nn.Linear(3, 2), nn.Linear(2, 3)

    def product(layer):
        return LayerGradient(layer, torch.ones(4, layer.out_features),
                             torch.ones(4, layer.in_features), 1.0, torch.zeros(()))

    optimizer = AveragedMomentumSGD(first.parameters(), lr=0.1, decay=0.5)
    optimizer.step_products([product(first)])
    optimizer.add_param_group({"params": list(second.parameters()), "lr0": 0.1,
                               "decay": 0.5, "step": 0})
    optimizer.step_products([product(second)])
    assert [g["step"] for g in optimizer.param_groups] == [1, 1]

    saved = AveragedMomentumSGD(first.parameters(), lr=0.1, decay=0.5)
    for _ in range(3):
        saved.step_products([product(first)])
    fresh = AveragedMomentumSGD(first.parameters(), lr=0.1, decay=0.5)
    fresh.step_products([product(first)])  # builds the map for the old groups
    fresh.load_state_dict(saved.state_dict())
    fresh.step_products([product(first)])
    assert fresh.param_groups[0]["step"] == 4
    assert fresh.param_groups[0]["lr"] == pytest.approx(0.1 / (1 + 0.5 * 3))


def test_step_products_refuses_a_layer_twice_or_a_foreign_one() -> None:
    layer = nn.Linear(3, 2)
    optimizer = AveragedMomentumSGD(layer.parameters(), lr=0.1)
    product = LayerGradient(layer, torch.ones(4, 2), torch.ones(4, 3), 1.0,
                            torch.zeros(()))
    with pytest.raises(ValueError, match="at most once"):
        optimizer.step_products([product, product])
    stranger = LayerGradient(nn.Linear(3, 2), torch.ones(4, 2), torch.ones(4, 3), 1.0,
                             torch.zeros(()))
    with pytest.raises(ValueError, match="not in this optimizer"):
        optimizer.step_products([stranger])
