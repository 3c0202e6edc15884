"""Static model facts: output ranges, matched targets, observed inputs, JSON."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import fault_models
from diagnostics.detectors import ModelFacts, facts_from_model, output_range
from diagnostics.quantities.activations import activation_stats
from tourbillon.config import resolve
from tourbillon.errors import DataError
from tourbillon.model import Tourbillon


class Custom(nn.Module):
    """A half whose forward applies a function its children do not show."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 3)

    def forward(self, x):
        return torch.sigmoid(self.layer(x))


INF = math.inf


@pytest.mark.parametrize("half, expected", [
    (nn.Sigmoid(), (0.0, 1.0)), (nn.Tanh(), (-1.0, 1.0)),
    (nn.Softsign(), (-1.0, 1.0)), (nn.Hardtanh(-2.0, 3.0), (-2.0, 3.0)),
    (nn.ReLU6(), (0.0, 6.0)), (nn.ReLU(), (0.0, INF)), (nn.ELU(0.5), (-0.5, INF)),
    (nn.Identity(), (-INF, INF)), (nn.LeakyReLU(), (-INF, INF)),
    (nn.Linear(2, 2), (-INF, INF)),
    (nn.Sequential(nn.Linear(2, 2), nn.Tanh()), (-1.0, 1.0)),
    (nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU(), nn.Sigmoid())),
     (0.0, 1.0)),
    (Custom(), None), (nn.Sequential(nn.Linear(3, 3), Custom()), None),
], ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else str(v))
def test_output_range_from_the_final_module(half, expected):
    assert output_range(half) == expected


@pytest.fixture(scope="module")
def reference_facts() -> ModelFacts:
    torch.manual_seed(0)
    model = Tourbillon(resolve("reference"))
    return facts_from_model(model, torch.rand(32, 784))


def test_reference_targets_and_ranges(reference_facts):
    b0, b1 = reference_facts.blocks
    assert reference_facts.model == "Tourbillon"
    assert (b0.enc_target, b0.enc_output, b0.dec_target, b0.dec_output, b0.code) == (
        0, 1, 0, 1, 1)
    assert b0.decoder_range == (0.0, 1.0) and b0.encoder_range == (-1.0, 1.0)
    assert (b0.decoder_module, b0.circulations) == ("Sigmoid", 2)
    assert b0.input_source is None and b1.input_source == "block0/enc/c1"
    assert b0.parameters == {"enc": ("0.weight", "0.bias"),
                             "dec": ("0.weight", "0.bias")}


def test_reference_block1_cannot_reach_its_tanh_input(reference_facts):
    b0, b1 = reference_facts.blocks
    assert b0.input_outside_decoder == 0.0 and b0.input_clamp_mse == 0.0
    assert b1.input_min < 0 < b1.input_outside_decoder
    # The share outside (0, 1) is the share of negative codes.
    assert b1.input_clamp_mse > 0


def test_authors_decoder_target_is_the_input():
    torch.manual_seed(0)
    facts = facts_from_model(Tourbillon(resolve("authors")), torch.rand(16, 784))
    block = facts.blocks[0]
    assert block.dec_target == "input" and block.decoder_range == (-INF, INF)
    assert block.input_at_decoder_bounds is None  # an unbounded decoder


def test_input_statistics_against_a_slow_reference():
    torch.manual_seed(0)
    x = torch.rand(8, 784)
    x[:, :100] = 0.0  # constant units
    block = facts_from_model(Tourbillon(resolve("reference")), x).blocks[0]
    B, D = x.shape
    stds = []
    for u in range(D):
        column = [float(x[b, u]) for b in range(B)]
        mean = sum(column) / B
        stds.append(math.sqrt(sum((v - mean) ** 2 for v in column) / B))
    assert block.input_batch_std == pytest.approx(sum(stds) / D, rel=1e-9)
    assert block.input_mean_mse == pytest.approx(sum(s * s for s in stds) / D,
                                                 rel=1e-9)
    assert block.input_constant == pytest.approx(100 / 784)
    # The same batch spread the recorder writes as ``batch_std``.
    assert block.input_batch_std == pytest.approx(
        float(activation_stats(x)["batch_std"]), rel=1e-5)
    near = sum(1 for v in x.flatten().tolist() if v <= 0.01 or v >= 0.99)
    assert block.input_at_decoder_bounds == pytest.approx(near / x.numel())


def test_facts_of_a_user_stack_and_a_single_block():
    facts = facts_from_model(fault_models.sigmoid_decoder_on_codes(),
                             torch.rand(16, 784))
    assert [b.decoder_module for b in facts.blocks] == ["Identity", "Sigmoid"]
    assert facts.blocks[1].input_source == "block0/enc/c0"
    assert facts.blocks[1].input_outside_decoder > 0.2
    block = fault_models.LoopBlock(*fault_models._halves(0))
    single = facts_from_model(block, torch.rand(4, 784))
    assert len(single.blocks) == 1 and single.blocks[0].dec_target == "input"


def test_save_and_load_round_trip(tmp_path, reference_facts):
    torch.manual_seed(0)
    authors = facts_from_model(Tourbillon(resolve("authors")), torch.rand(8, 784))
    for facts in (reference_facts, authors):
        path = facts.save(tmp_path / facts.blocks[0].decoder_module)
        assert path.name == "facts.json"
        assert "Infinity" not in path.read_text()  # strict JSON
        assert ModelFacts.load(path.parent) == facts


def test_load_reports_a_missing_or_broken_file(tmp_path):
    with pytest.raises(DataError, match="no model facts"):
        ModelFacts.load(tmp_path)
    (tmp_path / "facts.json").write_text("{broken")
    with pytest.raises(DataError, match="not valid JSON"):
        ModelFacts.load(tmp_path)


def test_no_hook_is_left_behind_even_when_the_forward_fails():
    model = Tourbillon(resolve("reference"))
    with pytest.raises(Exception):
        facts_from_model(model, torch.rand(4, 10))  # wrong input size
    model.train()
    facts_from_model(model, torch.rand(4, 784))
    assert model.training and all(m.training for m in model.modules())
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_facts_need_two_examples():
    with pytest.raises(DataError, match="at least 2"):
        facts_from_model(Tourbillon(resolve("reference")), torch.rand(1, 784))
