"""The trainer: determinism, resume, outputs, schedules, baselines, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from tourbillon import CheckpointError, ConfigError, DataError, resolve
from tourbillon.config import VARIANTS
from tourbillon.data import load_dataset
from tourbillon.train import Callback, Trainer, read_checkpoint, read_metrics


@pytest.fixture(scope="module")
def small():
    return load_dataset("mnist-sample", max_train=192, max_test=96)


@pytest.fixture(scope="module")
def small_images():
    return load_dataset("mnist-sample", max_train=128, max_test=64, flat=False)


def _fit(config, data, out=None, **options):
    options.setdefault("probe_epochs", 1)
    trainer = Trainer(config, data, out, **options)
    return trainer, trainer.fit()


class StopAfter(Callback):
    """Interrupts training like Ctrl-C once ``epoch`` has finished."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, trainer, metrics):
        if trainer.epoch == self.epoch:
            raise KeyboardInterrupt


def test_same_seed_gives_identical_numbers(small):
    config = resolve("reference", {"epochs": 2})
    a, history_a = _fit(config, small)
    b, history_b = _fit(config, small)
    strip = [{k: v for k, v in m.items() if k != "seconds"} for m in history_a]
    assert strip == [{k: v for k, v in m.items() if k != "seconds"} for m in history_b]
    pairs = zip(a.model.state_dict().items(), b.model.state_dict().values())
    for (name, p), q in pairs:
        assert torch.equal(p, q), name


def test_other_seed_gives_other_weights(small):
    a, _ = _fit(resolve("reference", {"epochs": 1}), small)
    b, _ = _fit(resolve("reference", {"epochs": 1, "seed": 1}), small)
    assert not torch.equal(a.model.blocks[0].encoder_weight,
                           b.model.blocks[0].encoder_weight)


@pytest.mark.parametrize("variant", ["reference", "authors"])
def test_resume_matches_uninterrupted_run_bit_for_bit(small, tmp_path, variant):
    config = resolve(variant, {"epochs": 3})
    whole, history = _fit(config, small, tmp_path / "whole")

    with pytest.raises(KeyboardInterrupt):
        _fit(config, small, tmp_path / "parts", callbacks=[StopAfter(2)])
    assert [m["epoch"] for m in read_metrics(tmp_path / "parts")] == [1, 2]
    resumed = Trainer(config, small, tmp_path / "parts", probe_epochs=1)
    resumed.fit(resume=True)

    rows = read_metrics(tmp_path / "parts")
    assert [m["epoch"] for m in rows] == [1, 2, 3]
    drop = lambda m: {k: v for k, v in m.items() if k != "seconds"}  # noqa: E731
    assert [drop(m) for m in rows] == [drop(m) for m in history]
    pairs = zip(whole.model.state_dict().values(), resumed.model.state_dict().values())
    for p, q in pairs:
        assert torch.equal(p, q)


def test_run_directory_holds_config_metrics_and_checkpoint(small, tmp_path):
    config = resolve("reference", {"epochs": 2})
    _fit(config, small, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text()) == config.to_dict()
    rows = read_metrics(tmp_path)
    assert [m["epoch"] for m in rows] == [1, 2]
    for key in ("epoch", "step", "test_recon_mse", "test_accuracy", "probe_accuracy",
                "block0_recon_mse", "block1_recon_mse", "block0_probe_first",
                "block1_probe_code", "train_loss", "train_drift_enc_0", "seconds"):
        assert key in rows[-1], key
    assert rows[-1]["step"] == 2 * 3  # 192 examples in batches of 64
    state = read_checkpoint(tmp_path / "checkpoint.pt")
    assert state["epoch"] == 2 and state["config"] == config.to_dict()


def test_resume_checks_the_config(small, tmp_path):
    _fit(resolve("reference", {"epochs": 1}), small, tmp_path)
    other = Trainer(resolve("reference", {"epochs": 1, "lr": 0.5}), small, tmp_path)
    with pytest.raises(CheckpointError, match="different config.*lr"):
        other.fit(resume=True)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04garbage"],
                         ids=["empty", "text", "broken-zip"])
def test_corrupt_checkpoint_is_a_clear_error(small, tmp_path, content):
    _fit(resolve("reference", {"epochs": 1}), small, tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(content)
    message = "checkpoint.pt is not a readable checkpoint"
    with pytest.raises(CheckpointError, match=message):
        Trainer(resolve("reference", {"epochs": 1}), small, tmp_path).fit(resume=True)


def test_missing_checkpoint_is_a_clear_error(small, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        Trainer(resolve("reference"), small, tmp_path).fit(resume=True)


def test_nan_in_the_input_is_rejected(small):
    x = small.x_train.clone()
    x[3, 10] = float("nan")
    bad = type(small).__new__(type(small))
    object.__setattr__(bad, "__dict__", {**small.__dict__, "x_train": x})
    message = r"train inputs contain NaN or Inf \(first rows: \[3\]"
    with pytest.raises(DataError, match=message):
        Trainer(resolve("reference"), bad)


def test_wrong_input_shape_is_rejected(small_images):
    with pytest.raises(DataError, match=r"expected input of shape \(B, 784\)"):
        Trainer(resolve("reference"), small_images)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_named_variant_trains_and_reports(small, variant):
    config = VARIANTS[variant].config(epochs=min(VARIANTS[variant].config().epochs, 1),
                                      head_epochs=2)
    _, history = _fit(config, small)
    last = history[-1]
    assert last["diverged"] is False
    assert 0.0 <= last["test_accuracy"] <= 1.0
    assert 0.0 <= last["probe_accuracy"] <= 1.0
    if config.num_blocks:
        assert last["test_recon_mse"] > 0.0
    else:
        assert last["test_recon_mse"] is None


@pytest.mark.parametrize("schedule", ["joint", "sequential", "asynchronous"])
def test_schedules_train_the_blocks_they_name(small, schedule):
    config = resolve("reference", {"schedule": schedule, "epochs": 1})
    trainer = Trainer(config, small, probe_epochs=0)
    before = [b.encoder_weight.detach().clone() for b in trainer.model.blocks]
    trainer.fit()
    changed = [not torch.equal(b.encoder_weight, w)
               for b, w in zip(trainer.model.blocks, before)]
    # sequential trains block 0 in epoch 1 and block 1 in epoch 2.
    assert trainer.total_epochs == (2 if schedule == "sequential" else 1)
    assert changed == [True, True]


def test_sequential_trains_one_block_per_stage(small):
    trainer = Trainer(resolve("reference", {"schedule": "sequential", "epochs": 1,
                                            "head": "after", "head_epochs": 1}),
                      small, probe_epochs=0)
    top = trainer.model.blocks[1].encoder_weight.detach().clone()
    trainer.epoch = 0
    trainer.epoch += 1
    trainer._train_epoch()
    assert torch.equal(trainer.model.blocks[1].encoder_weight, top)


def test_diverging_run_is_recorded(small, tmp_path):
    config = resolve("authors", {"lr": 1e6, "lr_decay": False, "epochs": 3})
    trainer, history = _fit(config, small, tmp_path)
    assert trainer.diverged and history[-1]["diverged"] is True
    assert history[-1]["epoch"] < 3
    assert read_metrics(tmp_path)[-1]["diverged"] is True


def test_conv_reference_trains_on_images(small_images):
    config = resolve("reference", {"arch": "conv", "channels": [1, 4, 4], "epochs": 2,
                                   "strides": [1, 2], "kernel_sizes": [5, 4],
                                   "paddings": [2, 1]})
    trainer, history = _fit(config, small_images)
    assert trainer.model.code_shapes[-1] == (4, 14, 14)
    assert history[-1]["block1_recon_mse"] is not None


def test_conv_authors_rule_learns_to_reconstruct(small_images):
    # lr 1e-3 as the authors use for convolutions: summed errors over shared
    # kernels make the gradient large.
    config = resolve("authors", {"arch": "conv", "channels": [1, 6], "kernel_sizes": 3,
                                 "paddings": 1, "epochs": 3, "lr": 1e-3,
                                 "lr_decay": False})
    trainer = Trainer(config, small_images, probe_epochs=0)
    start = trainer.evaluate(probes=False)["test_recon_mse"]
    history = trainer.fit()
    assert history[-1]["test_recon_mse"] < 0.5 * start


# -- update='explicit' -------------------------------------------------------------


class GradientLog(Callback):
    """Keeps a copy of every parameter's ``.grad`` at each ``after_backward``."""

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor | None]] = []

    def after_backward(self, trainer, out, batch):
        self.steps.append({n: None if p.grad is None else p.grad.clone()
                           for n, p in trainer.model.named_parameters()})


def _block_weights(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()
            if n.startswith("blocks.")}


@pytest.mark.parametrize("schedule", ["joint", "sequential", "asynchronous"])
def test_explicit_update_trains_as_autograd_does(small, schedule):
    fields = {"sizes": [784, 32, 16], "epochs": 2, "schedule": schedule,
              "head_epochs": 1}
    runs = {}
    for update in ("explicit", "autograd"):
        config = resolve("authors", {**fields, "update": update})
        runs[update] = _fit(config, small, probe_epochs=0)
    (explicit, got), (autograd, want) = runs["explicit"], runs["autograd"]
    assert explicit.explicit and not autograd.explicit
    # float32, the same update in another order of operations: rounding only
    for name, weight in _block_weights(autograd).items():
        torch.testing.assert_close(_block_weights(explicit)[name], weight,
                                   rtol=1e-4, atol=1e-6, msg=name)
    for a, b in zip(got, want):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)


def test_callbacks_see_the_gradients_and_change_no_number(small):
    config = resolve("authors", {"sizes": [784, 32], "epochs": 1, "head_epochs": 1})
    logs = {update: GradientLog() for update in ("explicit", "autograd")}
    trainers = {update: _fit(config.replace(update=update), small, probe_epochs=0,
                             callbacks=[log])[0] for update, log in logs.items()}
    alone, _ = _fit(config.replace(update="explicit"), small, probe_epochs=0)

    # A callback does not change the explicit trainer's numbers, bit for bit.
    for name, weight in _block_weights(alone).items():
        assert torch.equal(_block_weights(trainers["explicit"])[name], weight), name
    # It reads the same gradients as under autograd, None where a rule is absent.
    first = {update: log.steps[0] for update, log in logs.items()}
    assert len(logs["explicit"].steps) == len(logs["autograd"].steps) == 3
    for name, grad in first["autograd"].items():
        other = first["explicit"][name]
        if grad is None:
            assert other is None, name
        else:
            torch.testing.assert_close(other, grad, rtol=1e-5, atol=1e-7, msg=name)


def test_explicit_update_needs_the_trainers_own_objective(small):
    class Custom(Trainer):
        def objective(self, x, y, active):
            return super().objective(x, y, active)

    with pytest.raises(ConfigError, match="update='autograd'"):
        Custom(resolve("authors", {"update": "explicit"}), small, probe_epochs=0)
    assert not Custom(resolve("authors"), small, probe_epochs=0).explicit
    assert Trainer(resolve("authors"), small, probe_epochs=0).explicit
