"""The recorder's hooks: placement, circulation numbering, clean-up, reports."""

from __future__ import annotations

import gc
import json
import logging
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diagnostics import tags
from diagnostics.placement import locate_blocks
from diagnostics.quantities.activations import activation_stats
from diagnostics.recorder import Recorder, load_events, load_records
from diagnostics.schedule import QUANTITIES
from tourbillon.config import Config
from tourbillon.errors import ConfigError
from tourbillon.model import Tourbillon, TourbillonBuildingBlockLinear
from tourbillon.rules import decoder_objective, encoder_objective

ONLY_CHEAP = {"expensive_every": 0}
# What is not measured is tested below; elsewhere the notes are expected.
pytestmark = pytest.mark.filterwarnings("ignore:recorder")


class LoopBlock(nn.Module):
    """A user's block with halves named ``enc``/``dec`` and three circulations."""

    def __init__(self, d: int = 6, h: int = 3, circulations: int = 3) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(d, h), nn.Tanh())
        self.dec = nn.Sequential(nn.Linear(h, d), nn.Sigmoid())
        self.circulations = circulations

    def walk(self, x):
        codes, recons, visible = [], [], x
        for _ in range(self.circulations):
            codes.append(self.enc(visible))
            recons.append(self.dec(codes[-1].detach()))
            visible = recons[-1].detach()
        return codes, recons

    def forward(self, x):
        codes, recons = self.walk(x)
        return {"enc_target": codes[0].detach(), "enc_output": codes[-1],
                "dec_target": x.detach(), "dec_output": recons[0]}


class UserStack(nn.Module):
    """Two LoopBlocks and a head, returning the stack protocol."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([LoopBlock(6, 4), LoopBlock(4, 3)])
        self.classifier = nn.Linear(3, 2)

    def forward(self, x):
        out = {}
        for k, block in enumerate(self.layers):
            result = block(x)
            out.update({f"{key}_{k}": v for key, v in result.items()})
            x = result["enc_output"].detach()
        out["output"] = self.classifier(x)
        return out


def protocol_loss(out: dict, blocks: int) -> torch.Tensor:
    return sum(F.mse_loss(out[f"{h}_output_{k}"], out[f"{h}_target_{k}"])
               for k in range(blocks) for h in ("enc", "dec"))


def all_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks)
               + len(m._backward_hooks) + len(getattr(m, "_backward_pre_hooks", {}))
               for m in model.modules())


def small_stack(**fields) -> Tourbillon:
    return Tourbillon(Config(sizes=(12, 6, 4), classes=3, **fields))


def train_steps(model, rec, steps, loss_fn, batch=8, d=12, eval_between=False):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        out = model(torch.rand(batch, d))
        loss = loss_fn(out)
        optimizer.zero_grad()
        loss.backward()
        if eval_between:
            model.eval()
            model(torch.rand(batch, d))
            model.train()
            with torch.no_grad():
                model(torch.rand(batch, d))
        rec.step(optimizer, loss=loss)
    return optimizer


def stack_loss(out):
    return protocol_loss(out, 2)


# -- placement -------------------------------------------------------------------


def test_locate_blocks_of_stacks_blocks_and_user_models():
    sites, unplaced = locate_blocks(small_stack())
    assert [(s.index, s.name) for s in sites] == [(0, "blocks.0"), (1, "blocks.1")]
    assert [u.what for u in unplaced] == ["module 'head'"]

    sites, unplaced = locate_blocks(TourbillonBuildingBlockLinear(5, 3))
    assert [(s.index, s.name) for s in sites] == [(0, "")] and unplaced == []

    sites, unplaced = locate_blocks(UserStack(), "enc", "dec")
    assert [s.name for s in sites] == ["layers.0", "layers.1"]
    assert [u.what for u in unplaced] == ["module 'classifier'"]
    with pytest.raises(ConfigError, match="no module with both"):
        locate_blocks(UserStack())


def test_a_half_block_is_reported_not_skipped():
    model = nn.Module()
    model.good = LoopBlock()
    model.lonely = nn.Module()
    model.lonely.enc = nn.Linear(2, 2)
    _, unplaced = locate_blocks(model, "enc", "dec")
    assert any("'lonely'" in u.what and "no 'dec'" in u.why for u in unplaced)


# -- circulations ----------------------------------------------------------------


def test_every_circulation_is_numbered_and_matches_a_manual_walk(tmp_path):
    model = UserStack()
    with Recorder(model, tmp_path, mode="full", encoder_name="enc",
                  decoder_name="dec", **ONLY_CHEAP) as rec:
        x = torch.rand(8, 6)
        # Two training forwards in one step: the count restarts at each one.
        model(torch.rand(8, 6))
        out = model(x)
        with torch.no_grad():
            codes, recons = model.layers[0].walk(x)
        loss = protocol_loss(out, 2)
        loss.backward()
        with pytest.warns(UserWarning, match="without the optimizer"):
            rec.step()
    frame = load_records(tmp_path)
    means = frame[frame.quantity == "mean"]
    enc0 = means[(means.block == 0) & (means.half == "enc")]
    assert sorted(enc0.circulation.tolist()) == [0, 1, 2]
    values = dict(zip(frame.tag, frame.value))
    for i in range(3):
        for half, tensor in (("enc", codes[i]), ("dec", recons[i])):
            for stat, v in activation_stats(tensor, (-1, 1) if half == "enc"
                                            else (0, 1)).items():
                assert values[tags.activation(0, half, i, stat)] == pytest.approx(
                    v.item(), rel=1e-5, abs=1e-7)
        assert values[tags.true_error(0, i)] == pytest.approx(
            F.mse_loss(recons[i], x).item(), rel=1e-5)
    assert values[tags.settle(0, 2)] == pytest.approx(
        F.mse_loss(recons[2], recons[1]).item(), rel=1e-5)


def test_eval_forwards_are_not_recorded(tmp_path):
    def run(path, eval_between):
        torch.manual_seed(1)
        model = small_stack()
        with Recorder(model, path, mode="full", **ONLY_CHEAP) as rec:
            torch.manual_seed(2)
            train_steps(model, rec, 2, stack_loss, eval_between=eval_between)
        return rec, load_records(path)

    plain_rec, plain = run(tmp_path / "plain", False)
    mixed_rec, mixed = run(tmp_path / "mixed", True)
    assert plain_rec.skipped_forwards == 0
    assert mixed_rec.skipped_forwards == 2 * 2 * 2  # steps x forwards x blocks
    # The eval batches drew random numbers, so compare what does not depend on
    # the data: which tags and steps were recorded.
    assert set(zip(plain.step, plain.tag)) == set(zip(mixed.step, mixed.tag))


def test_only_walked_circulations_are_recorded(tmp_path):
    # The authors' rule stops after circulation 1's encoder: no decoder c1.
    model = Tourbillon(Config(sizes=(12, 6), classes=0, circulations=2,
                              encoder_rule="authors", decoder_target="input",
                              decoder_output=0, feed_from=0, encoder_output=1))
    config = model.config
    with Recorder(model, tmp_path, mode="full", **ONLY_CHEAP) as rec:
        out = model(torch.rand(5, 12))
        loss = (encoder_objective(out, config, "_0")
                + decoder_objective(out, config, "_0"))
        loss.backward()
        rec.step()
    found = set(load_records(tmp_path).tag)
    assert tags.activation(0, "enc", 1, "mean") in found
    assert tags.activation(0, "dec", 0, "mean") in found
    assert tags.activation(0, "dec", 1, "mean") not in found
    assert tags.true_error(0, 1) not in found


# -- clean-up --------------------------------------------------------------------


def test_no_hook_is_left_after_an_exception(tmp_path):
    model = small_stack()
    before = all_hooks(model)
    with pytest.raises(RuntimeError, match="boom"):
        with Recorder(model, tmp_path, mode="full") as rec:
            assert rec.hook_count == 2 * (2 + 2) and all_hooks(model) > before
            train_steps(model, rec, 1, stack_loss)
            model(torch.rand(4, 12))
            raise RuntimeError("boom")
    assert all_hooks(model) == before == 0
    assert rec.hook_count == 0


def test_no_hook_is_left_when_a_forward_raises_inside_the_block(tmp_path):
    model = UserStack()
    names = dict(encoder_name="enc", decoder_name="dec")
    with pytest.raises(RuntimeError):
        with Recorder(model, tmp_path / "a", **names):
            model.layers[1](torch.rand(4, 5))  # wrong width: raises mid-forward
    assert all_hooks(model) == 0
    with Recorder(model, tmp_path / "b", mode="full", **names) as rec:  # again
        train_steps(model, rec, 1, stack_loss, d=6)
    assert all_hooks(model) == 0 and rec.steps == 1


@pytest.mark.parametrize("where", ["on_epoch_end", "after_step"])
def test_no_hook_is_left_when_the_trainer_raises(tmp_path, where):
    from diagnostics.trainer_callback import TrainerRecorder
    from tourbillon.config import resolve
    from tourbillon.data import load_dataset
    from tourbillon.train import Callback, Trainer

    class Boom(Callback):
        pass

    def boom(*args):
        raise RuntimeError("boom")

    setattr(Boom, where, boom)
    data = load_dataset("mnist-sample", max_train=128, max_test=64)
    trainer = Trainer(resolve("reference", {"epochs": 1}), data, probe_epochs=0,
                      callbacks=[TrainerRecorder(tmp_path, "full"), Boom()])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit()
    assert all_hooks(trainer.model) == 0


def test_off_mode_hooks_nothing_and_writes_nothing(tmp_path):
    model = small_stack()
    with Recorder(model, tmp_path / "run", mode="off") as rec:
        assert all_hooks(model) == 0
        train_steps(model, rec, 2, stack_loss)
    assert not (tmp_path / "run").exists()


# -- what is not measured, non-finite values -------------------------------------


def test_not_measured_is_logged_warned_once_and_recorded(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="diagnostics.recording")
    model = UserStack()
    with pytest.warns(UserWarning) as caught:
        with Recorder(model, tmp_path, mode="full", encoder_name="enc",
                      decoder_name="dec", probe_batch=torch.rand(8, 6)) as rec:
            train_steps(model, rec, 3, stack_loss, d=6)
    events = [e for e in load_events(tmp_path) if e["event"] == "not_measured"]
    whats = [e["what"] for e in events]
    assert len(whats) == len(set(whats))  # once each
    assert "module 'classifier'" in whats
    assert "probes" in whats  # the probe batch has no labels
    assert "images" in whats  # flat inputs, no image_shape
    messages = [str(w.message) for w in caught]
    assert sum("'classifier'" in m for m in messages) == 1
    assert any("not measured" in r.getMessage() for r in caplog.records)
    assert rec.not_measured == [{"what": e["what"], "why": e["why"]} for e in events]


@pytest.mark.parametrize("with_loss", [False, True], ids=["sentinels", "loss"])
def test_first_nonfinite_output_and_gradient_are_reported_at_once(tmp_path,
                                                                  with_loss):
    model = small_stack(input_graph="detach")
    config = model.config
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with Recorder(model, tmp_path, every={"nonfinite": 1, "nonfinite_grads": 1},
                  cheap_every=100, expensive_every=0) as rec:
        for step in range(1, 5):
            if step == 3:
                with torch.no_grad():
                    model.blocks[1].decoder[0].bias[0] = float("nan")
            out = model(torch.rand(6, 12))
            loss = sum(encoder_objective(out, config, f"_{k}")
                       + decoder_objective(out, config, f"_{k}") for k in range(2))
            optimizer.zero_grad()
            loss.backward()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                rec.step(optimizer, loss=loss if with_loss else None)
            if step == 3:
                # On disk and warned before the step returns.
                on_disk = [json.loads(line) for line in
                           (tmp_path / "records.jsonl").read_text().splitlines()]
                assert [e["tensor"] for e in on_disk if e.get("event") == "nonfinite"
                        ] == ["output", "grad"]
                assert sum("non-finite" in str(w.message) for w in caught) == 2
    events = [e for e in load_events(tmp_path) if e["event"] == "nonfinite"]
    assert events[0] == {"step": 3, "event": "nonfinite", "block": 1, "half": "dec",
                         "circulation": 0, "module": "blocks.1.decoder",
                         "tensor": "output"}
    assert events[1] == {"step": 3, "event": "nonfinite", "block": 1, "half": "enc",
                         "circulation": None, "module": "blocks.1.encoder.0",
                         "tensor": "grad", "parameter": "weight"}
    assert len(events) == 2  # later steps are not reported again


# -- memory ----------------------------------------------------------------------


def test_memory_stays_flat_over_thousands_of_steps(tmp_path):
    model = Tourbillon(Config(sizes=(8, 4), classes=0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.rand(16, 8)

    def run(rec, steps):
        for _ in range(steps):
            out = model(x)
            loss = protocol_loss(out, 1)
            optimizer.zero_grad()
            loss.backward()
            rec.step(optimizer, loss=loss)

    def live_objects() -> tuple[int, int]:
        gc.collect()
        objects = gc.get_objects()
        return len(objects), sum(issubclass(type(o), torch.Tensor) for o in objects)

    with Recorder(model, tmp_path, cheap_every=5, expensive_every=250,
                  probe_batch=(torch.rand(16, 8), torch.randint(0, 2, (16,)))) as rec:
        run(rec, 300)
        tags_before = len(rec.stats)
        objects_before, tensors_before = live_objects()
        run(rec, 2000)
        objects_after, tensors_after = live_objects()
        assert rec.steps == 2300
        assert len(rec.stats) == tags_before
        assert rec._scalars == {} and rec._histograms == [] and rec._images == []
    assert tensors_after <= tensors_before
    assert objects_after - objects_before < 200, objects_after - objects_before
    assert load_records(tmp_path).step.nunique() == 2300 // 5


def test_quantity_names_are_the_schedule_names():
    from diagnostics.quantities import KINDS
    assert set(KINDS) == set(QUANTITIES) - {"loss"}


def test_a_failing_quantity_is_dropped_and_training_goes_on(tmp_path):
    model = small_stack()
    bad_probe = (torch.rand(8, 5), torch.randint(0, 3, (8,)))  # wrong width
    with pytest.warns(UserWarning, match="probe batch's forward raised"):
        with Recorder(model, tmp_path, mode="full", probe_batch=bad_probe) as rec:
            train_steps(model, rec, 3, stack_loss)
    assert rec.steps == 3
    events = {e["what"]: e for e in load_events(tmp_path)
              if e["event"] == "not_measured"}
    assert events["probes"]["step"] == 1 and "raised" in events["probes"]["why"]
    assert "images" in events
    found = set(load_records(tmp_path).tag)
    assert tags.true_error(0, 0) in found and tags.batch_probe(0, "first") not in found
