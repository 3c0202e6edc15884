"""What the recorder writes, read back with TensorBoard's own reader and server."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import plugin_data_pb2

from diagnostics import tags
from diagnostics.recorder import Recorder, TrainerRecorder, load_events, load_records
from tourbillon.config import Config, resolve
from tourbillon.data import load_dataset
from tourbillon.model import Tourbillon
from tourbillon.rules import decoder_objective, encoder_objective
from tourbillon.train import Callback, Trainer

EVERYTHING = {"scalars": 0, "histograms": 0, "images": 0, "tensors": 0}

pytestmark = pytest.mark.filterwarnings("ignore:recorder")


def accumulate(run_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir), size_guidance=EVERYTHING)
    accumulator.Reload()
    return accumulator


@pytest.fixture(scope="module")
def data():
    return load_dataset("mnist-sample", max_train=192, max_test=96)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, data):
    """A two-epoch Trainer run of a small reference stack, recorded in full."""
    run_dir = tmp_path_factory.mktemp("runs") / "small"
    config = resolve("reference", {"sizes": (784, 16, 8), "epochs": 2})
    with pytest.warns(UserWarning, match="'head'"):
        trainer = Trainer(config, data, probe_epochs=1,
                          callbacks=[TrainerRecorder(run_dir, "full")])
        trainer.fit()
    return run_dir, trainer


# -- TensorBoard event files -----------------------------------------------------


def test_scalars_in_tensorboard_equal_records(trained_run):
    run_dir, trainer = trained_run
    events = accumulate(run_dir)
    frame = load_records(run_dir)
    scalar_tags = set(events.Tags()["scalars"])
    assert set(frame.tag) == scalar_tags
    for tag in (tags.true_error(0, 1), tags.drift(1, "enc"), tags.train_loss(),
                tags.grad_norm(0, "dec", "0.weight"), tags.batch_probe(1, "code"),
                tags.activation(1, "dec", 1, "batch_std")):
        from_tb = {e.step: e.value for e in events.Scalars(tag)}
        rows = frame[frame.tag == tag]
        from_records = dict(zip(rows.step, rows.value))
        assert from_tb.keys() == from_records.keys()
        for step, value in from_records.items():
            assert from_tb[step] == pytest.approx(value, rel=1e-6)
    steps = trainer.step
    assert sorted(e.step for e in events.Scalars(tags.train_loss())) == list(
        range(1, steps + 1))


def test_epoch_metrics_join_the_last_step_of_each_epoch(trained_run):
    run_dir, trainer = trained_run
    lines = [json.loads(line) for line in (run_dir / "records.jsonl").read_text()
             .splitlines()]
    steps = [line for line in lines if "scalars" in line]
    # One line a step, in order.
    assert [s["step"] for s in steps] == sorted({s["step"] for s in steps})
    for metrics in trainer.history:
        line = next(s for s in steps if s["step"] == metrics["step"])
        assert line["epoch"] == metrics["epoch"]
        assert line["scalars"][tags.test_metric("recon_mse")] == pytest.approx(
            metrics["test_recon_mse"])
        assert line["scalars"][tags.test_metric("accuracy")] == pytest.approx(
            metrics["test_accuracy"])
        for k in range(2):
            for which in ("first", "code"):
                assert line["scalars"][tags.probe(k, which)] == pytest.approx(
                    metrics[f"block{k}_probe_{which}"])


def test_histograms_images_config_and_layout(trained_run):
    run_dir, trainer = trained_run
    events = accumulate(run_dir)
    found = events.Tags()
    histogram = events.Histograms(tags.activation_histogram(0, "enc", 1))[0]
    value = histogram.histogram_value
    assert value.num == 64 * 16  # batch x units
    assert -1.0 <= value.min <= value.max <= 1.0
    assert sum(value.bucket) == value.num
    image = events.Images(tags.reconstruction_grid(0))[0]
    rows, examples, p = 1 + 2, 8, 1  # the inputs, then two circulations
    assert (image.height, image.width) == (rows * (28 + p) + p,
                                           examples * (28 + p) + p)
    config_text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0]
    assert json.loads(config_text.decode().strip("`\n")) == trainer.config.to_dict()

    layout = layout_pb2.Layout()
    layout.ParseFromString(
        events.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    titles = [c.title for c in layout.category]
    assert titles == ["block0", "block1", "training"]
    charts = {chart.title: chart.multiline.tag for chart in layout.category[0].chart}
    for title, tag in [("true reconstruction error per circulation",
                        tags.true_error(0, 1)),
                       ("batch spread per circulation",
                        tags.activation(0, "dec", 1, "batch_std")),
                       ("drift (rule output vs target)", tags.drift(0, "enc")),
                       ("gradient norms", tags.grad_norm(0, "enc", "0.bias")),
                       ("alignment (descent and weights)", tags.weight_alignment(0)),
                       ("update / weight ratio",
                        tags.update_ratio(0, "dec", "0.weight"))]:
        assert tag in found["scalars"]
        assert any(re.match(pattern, tag) for pattern in charts[title]), title
        assert not any(re.match(pattern, tag.replace("block0", "block1"))
                       for pattern in charts[title])


def test_hparams_live_in_the_runs_own_event_file(trained_run):
    run_dir, trainer = trained_run
    assert [p for p in run_dir.iterdir() if p.is_dir()] == []  # no timestamped run
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    content = accumulate(run_dir).PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData()
    experiment.ParseFromString(content["_hparams_/experiment"])
    metrics = {m.name.tag for m in experiment.experiment.metric_infos}
    assert {tags.test_metric("recon_mse"), tags.test_metric("accuracy")} <= metrics
    start = plugin_data_pb2.HParamsPluginData()
    start.ParseFromString(content["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["lr"].number_value == trainer.config.lr
    assert start.session_start_info.hparams["sizes"].string_value == "[784, 16, 8]"


def test_the_python_recorder_writes_hparams_when_it_closes(tmp_path):
    model = Tourbillon(Config(sizes=(12, 6), classes=0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with Recorder(model, tmp_path, config={"lr": 0.1, "sizes": [12, 6]}) as rec:
        for _ in range(3):
            out = model(torch.rand(4, 12))
            loss = sum(torch.nn.functional.mse_loss(out[f"{h}_output_0"],
                                                    out[f"{h}_target_0"])
                       for h in ("enc", "dec"))
            optimizer.zero_grad()
            loss.backward()
            rec.step(optimizer, loss=loss)
        rec.log_scalars({tags.test_metric("recon_mse"): 0.25})
    content = accumulate(tmp_path).PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData()
    experiment.ParseFromString(content["_hparams_/experiment"])
    assert {m.name.tag for m in experiment.experiment.metric_infos} == {
        tags.test_metric("recon_mse"), tags.train_loss()}


def test_conv_model_records_every_quantity(tmp_path, data):
    images = data.as_images()
    config = Config(arch="conv", channels=(1, 2, 2), input_size=(28, 28),
                    kernel_sizes=3, paddings=1, classes=10)
    model = Tourbillon(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    probe = (images.x_test[:32], images.y_test[:32])
    with Recorder(model, tmp_path, mode="full", probe_batch=probe) as rec:
        for step in range(2):
            out = model(images.x_train[16 * step:16 * (step + 1)])
            loss = sum(encoder_objective(out, config, f"_{k}")
                       + decoder_objective(out, config, f"_{k}") for k in range(2))
            optimizer.zero_grad()
            loss.backward()
            rec.step(optimizer, loss=loss)
    found = set(load_records(tmp_path).tag)
    for k in range(2):
        assert {tags.weight_alignment(k), tags.descent_alignment(k, "enc"),
                tags.true_error(k, 1), tags.batch_probe(k, "first"),
                tags.activation(k, "enc", 1, "saturated")} <= found
    image = accumulate(tmp_path).Images(tags.reconstruction_grid(0))[0]
    assert image.width == 8 * 29 + 1  # 4-d inputs need no image_shape
    assert [e for e in load_events(tmp_path) if e.get("what") != "module 'head'"] == []


# -- the Trainer callback --------------------------------------------------------


class Explode(Callback):
    def after_backward(self, trainer, out, batch):
        if trainer.step == 2:
            raise RuntimeError("boom")


def test_trainer_recorder_removes_its_hooks_when_training_raises(tmp_path, data):
    config = resolve("reference", {"sizes": (784, 8, 4), "epochs": 1})
    recorder = TrainerRecorder(tmp_path / "run")
    trainer = Trainer(config, data, probe_epochs=0, callbacks=[recorder, Explode()])
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="boom"):
        trainer.fit()
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks)
               for m in trainer.model.modules()) == 0
    assert "train_step" not in trainer.__dict__  # the guard is gone too


def test_off_mode_writes_nothing(tmp_path, data):
    config = resolve("reference", {"sizes": (784, 8, 4), "epochs": 1})
    trainer = Trainer(config, data, probe_epochs=0,
                      callbacks=[TrainerRecorder(tmp_path / "run", "off")])
    trainer.fit()
    assert not (tmp_path / "run").exists()
    assert sum(len(m._forward_hooks) for m in trainer.model.modules()) == 0


# -- a real TensorBoard server -----------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_a_tensorboard_server_serves_the_recorded_scalars(trained_run, tmp_path):
    run_dir, _ = trained_run
    port = free_port()
    log = open(tmp_path / "tensorboard.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(run_dir.parent),
         "--host", "127.0.0.1", "--port", str(port), "--load_fast", "false",
         "--reload_interval", "1"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    tag = tags.true_error(0, 0)
    try:
        deadline, scalars = time.monotonic() + 60, None
        while time.monotonic() < deadline and scalars is None:
            assert server.poll() is None, (tmp_path / "tensorboard.log").read_text()
            try:
                if "small" in get_json(f"{base}/data/runs"):
                    query = urllib.parse.urlencode({"run": "small", "tag": tag})
                    scalars = get_json(f"{base}/data/plugin/scalars/scalars?{query}")
            except (OSError, ValueError):
                pass
            if scalars is None:
                time.sleep(0.3)
        assert scalars is not None, "TensorBoard did not serve the run within 60 s"
    finally:
        server.kill()
        server.wait(timeout=10)
        log.close()
    frame = load_records(run_dir)
    expected = frame[frame.tag == tag].set_index("step").value
    assert [step for _, step, _ in scalars] == expected.index.tolist()
    assert [value for _, _, value in scalars] == pytest.approx(expected.tolist(),
                                                               rel=1e-6)


class StopAfterFirstEpoch(Callback):
    def on_epoch_end(self, trainer, metrics):
        raise KeyboardInterrupt


def test_a_resumed_run_continues_its_records(tmp_path, data):
    config = resolve("reference", {"sizes": (784, 8, 4), "epochs": 2})
    run_dir = tmp_path / "run"
    with TrainerRecorder(run_dir, cheap_every=3) as recorder:
        trainer = Trainer(config, data, run_dir, probe_epochs=0,
                          callbacks=[recorder, StopAfterFirstEpoch()])
        with pytest.raises(KeyboardInterrupt):
            trainer.fit()
    first_steps = trainer.step
    with TrainerRecorder(run_dir, cheap_every=3) as recorder:
        resumed = Trainer(config, data, run_dir, probe_epochs=0, callbacks=[recorder])
        resumed.fit(resume=True)
    lines = [json.loads(line) for line in (run_dir / "records.jsonl").read_text()
             .splitlines() if "scalars" in line]
    steps = [line["step"] for line in lines]
    assert steps == sorted(set(steps))
    assert steps[-1] == resumed.step == 2 * first_steps
    assert {line["epoch"] for line in lines if line["step"] > first_steps} == {2}
    with_loss = [line["step"] for line in lines if tags.train_loss() in line["scalars"]]
    loss = accumulate(run_dir).Scalars(tags.train_loss())  # both event files
    assert [e.step for e in loss] == with_loss == [1, 4]
