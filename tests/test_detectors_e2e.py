"""The detectors on real recorded runs: planted faults are found in place.

Each model from ``fault_models`` is trained with the original README recipe
(sum of the MSE of every protocol pair plus cross-entropy, Adam at lr 1e-3,
batch 32) on 256 digits of the bundled MNIST sample, under
``diagnostics.recorder.Recorder`` with every quantity at every step
(histograms and images off). Its facts are observed on 128 training digits
before training and saved as ``facts.json``; the detectors then read the run
directory. The healthy model trains for 15 epochs (120 steps), the faulty
ones for 4 (32 steps).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch

import fault_models
import diagnostics.detectors
from diagnostics.detectors import detect_run, facts_from_model
from diagnostics.recorder import Recorder, TrainerRecorder
from diagnostics.user_model import recipe_loss
from tourbillon.config import resolve
from tourbillon.data import Dataset, load_dataset
from tourbillon.train import Trainer

pytestmark = pytest.mark.filterwarnings(
    "ignore:recorder:UserWarning", "ignore:non-finite:RuntimeWarning")

BATCH = 32
EPOCHS = {"healthy": 15}
FAULT_EPOCHS = 4
OFF = {"histograms": 0, "images": 0}


@pytest.fixture(scope="module")
def data() -> Dataset:
    return load_dataset("mnist-sample", max_train=256, max_test=128)


def train_recorded(name: str, run_dir: Path, data: Dataset, mode: str = "full",
                   epochs: int | None = None, cheap_every: int | None = None
                   ) -> Path:
    """Train factory ``name`` with the README recipe under the recorder."""
    model = fault_models.FACTORIES[name]()
    facts_from_model(model, data.x_train[:128]).save(run_dir)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.Generator().manual_seed(0)
    N = data.x_train.shape[0]
    epochs = epochs or EPOCHS.get(name, FAULT_EPOCHS)
    with Recorder(model, run_dir, mode=mode, every=OFF, cheap_every=cheap_every,
                  probe_batch=(data.x_test, data.y_test)) as rec:
        for epoch in range(1, epochs + 1):
            rec.epoch = epoch
            index = torch.randperm(N, generator=order)
            for start in range(0, N, BATCH):
                batch = index[start:start + BATCH]
                out = model(data.x_train[batch])
                loss = recipe_loss(out, data.y_train[batch])
                optimizer.zero_grad()
                loss.backward()
                rec.step(optimizer, loss=loss)
    return run_dir


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, data) -> Callable[[str], Path]:
    """The run directory of a factory, trained once per test module."""
    runs: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in runs:
            runs[name] = train_recorded(name, tmp_path_factory.mktemp(name), data)
        return runs[name]

    return get


@pytest.mark.parametrize("name", sorted(fault_models.EXPECTED))
def test_planted_fault_is_found_in_place(name, recorded):
    rule, block, half, circulation = fault_models.EXPECTED[name]
    result = detect_run(recorded(name))
    found = {(f.block, f.half, f.circulation) for f in result.by_rule(rule)}
    assert (block, half, circulation) in found, [
        f.to_dict() for f in result.findings]
    assert {b for b, _, _ in found} == {block}  # and nowhere else
    assert not any("raised" in n.why for n in result.not_checked)


def test_nan_is_reported_at_its_step(recorded):
    result = detect_run(recorded("nan_mid_training"))
    output = next(f for f in result.by_rule("nonfinite") if f.circulation == 0)
    assert output.step == 13 and output.evidence["in_gradient"] == 0


def test_sparse_records_find_collapse_or_say_they_cannot(tmp_path, data):
    """Cheap quantities every 25 steps: 2 records in 32 steps, 4 in 80."""
    short = detect_run(train_recorded("constant_decoder", tmp_path / "short", data,
                                      mode="default", epochs=4, cheap_every=25))
    assert short.by_rule("collapse") == []
    assert any(n.rule == "collapse" and "persistence needs" in n.why
               for n in short.not_checked)
    long = detect_run(train_recorded("constant_decoder", tmp_path / "long", data,
                                     mode="default", epochs=10, cheap_every=25))
    assert {(f.block, f.half, f.circulation) for f in long.by_rule("collapse")} == {
        (1, "dec", 0)}


def test_healthy_model_is_quiet(recorded):
    result = detect_run(recorded("healthy"))
    assert result.findings == [], [f.message for f in result.findings]
    # Its decoders are linear: saturation is not defined there, and said so.
    assert {(n.rule, n.what) for n in result.not_checked} == {
        ("saturation", "block0/dec"), ("saturation", "block1/dec")}
    assert all("bounded activation" in n.why for n in result.not_checked)


def test_detect_run_reads_the_directory(recorded):
    run_dir = recorded("healthy")
    result = detect_run(run_dir, rules=["collapse"])
    assert result.run == run_dir.name
    assert any("head" in e["what"] for e in result.not_measured)


def test_reference_variant_through_the_trainer(tmp_path, data):
    """The original model, trained by the Trainer under TrainerRecorder."""
    config = resolve("reference", {"epochs": 6, "batch_size": BATCH})
    recorder = TrainerRecorder(tmp_path, mode="full", probe_examples=128,
                               every=OFF)
    trainer = Trainer(config, data=data, out_dir=tmp_path, probe_epochs=0,
                      callbacks=[recorder])
    facts_from_model(trainer.model, data.x_train[:128]).save(tmp_path)
    with recorder:
        trainer.fit()
    result = detect_run(tmp_path)
    places = {(f.rule, f.block, f.half) for f in result.findings}
    # Gray, input-independent reconstructions, and a sigmoid decoder asked to
    # reconstruct tanh codes.
    assert ("collapse", 0, "dec") in places
    assert ("range_mismatch", 1, "dec") in places
    assert not any("raised" in n.why for n in result.not_checked)


def test_package_example_runs(recorded, capsys):
    doc = diagnostics.detectors.__doc__
    code = "\n".join(line[4:] for line in doc.split("::", 1)[1].splitlines())
    exec(code, {"run_dir": recorded("saturating_init")})
    printed = capsys.readouterr().out
    assert "warning saturation 0 enc 0" in printed
