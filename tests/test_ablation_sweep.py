"""Sweeps on tiny data: files, resuming after deletion or SIGKILL, divergence, pools."""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from diagnostics.ablation import load_ablation, run_ablation, run_grid
from diagnostics.ablation import runner
from tourbillon.config import resolve
from tourbillon.errors import ConfigError, DataError

TINY = dict(epochs=1, probe_epochs=1, max_train=256, max_test=128)
FAILING = resolve("reference", {"sizes": [784, 32]})
WORKING = FAILING.replace(decoder_activation="identity", optimizer="sgd", lr=0.01)


def small_ablation(out_dir, **options):
    """Two axes (decoder_activation, optimizer): four cells at two seeds."""
    return run_ablation(FAILING, WORKING, out_dir, seeds=(0, 1), workers=1,
                        **{**TINY, **options})


def cell_files(out_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out_dir / "cells").glob("*.json"))}


def test_ablation_writes_every_file_and_loads_back(tmp_path):
    result = small_ablation(tmp_path)
    assert [a.name for a in result.axes] == ["decoder_activation", "optimizer"]
    for name in ("results.csv", "effects.csv", "causes.json", "sweep.json"):
        assert (tmp_path / name).exists()
    runs = result.runs
    assert len(runs) == 8 and runs["run"].is_unique
    assert {"cell", "seed", "axis:decoder_activation", "axis:optimizer",
            "decoder_activation", "optimizer", "lr", "test_recon_mse",
            "test_accuracy", "probe_accuracy", "diverged", "seconds",
            "run_dir"} <= set(runs.columns)
    assert not runs["diverged"].any()
    for run_dir in runs["run_dir"]:
        lines = (tmp_path / run_dir / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == 1  # evaluated at the end only
        assert not (tmp_path / run_dir / "checkpoint.pt").exists()
    assert set(result.effects["design"]) == {"screening-fix", "screening-break",
                                             "factorial"}
    design = result.design
    assert design["status"] == "done" and design["cells"]["total"] == 4
    assert design["factorial_axes"] == ["decoder_activation", "optimizer"]
    assert design["not_ablated"] == {}
    for cause in result.causes:
        assert {"axis", "from", "to", "metric", "effect", "ci", "rank"} <= set(cause)
        assert cause["metric"] == design["ranking_metric"]
    assert json.loads((tmp_path / "causes.json").read_text()) == result.causes

    loaded = load_ablation(tmp_path)
    pd.testing.assert_frame_equal(
        loaded.runs[["run", "seed", "test_recon_mse", "diverged"]],
        runs[["run", "seed", "test_recon_mse", "diverged"]])
    pd.testing.assert_series_equal(loaded.effects["effect"], result.effects["effect"])
    assert loaded.causes == result.causes and loaded.design == json.loads(
        (tmp_path / "sweep.json").read_text())


def test_rerun_reuses_finished_runs_and_retrains_only_a_deleted_one(tmp_path):
    first = small_ablation(tmp_path)
    before = cell_files(tmp_path)
    again = small_ablation(tmp_path)
    assert again.design["runs"]["trained_now"] == 0
    assert cell_files(tmp_path) == before

    removed = sorted(before)[3]
    (tmp_path / "cells" / removed).unlink()
    third = small_ablation(tmp_path)
    assert third.design["runs"]["trained_now"] == 1
    after = cell_files(tmp_path)
    assert {k: v for k, v in after.items() if k != removed} == {
        k: v for k, v in before.items() if k != removed}
    columns = ["run", "test_recon_mse", "test_accuracy", "probe_accuracy"]
    pd.testing.assert_frame_equal(third.runs[columns], first.runs[columns])


def test_missing_sweep_files_are_reported(tmp_path):
    with pytest.raises(DataError, match="not a finished sweep"):
        load_ablation(tmp_path)


def test_a_diverging_cell_is_recorded_and_the_sweep_goes_on(tmp_path):
    base = resolve("authors", {"sizes": [784, 32], "lr_decay": False,
                               "head_epochs": 1})
    with pytest.warns(UserWarning, match="2 of 4 runs diverged"):
        result = run_grid(base, {"lr": [0.01, 1e6]}, tmp_path, seeds=(0, 1),
                          workers=1, **TINY)
    runs = result.runs.set_index("lr")
    assert not runs.loc[0.01, "diverged"].any()
    assert runs.loc[1e6, "diverged"].all()
    assert runs.loc[1e6, "test_recon_mse"].isna().all()
    assert runs.loc[1e6, "error"].str.contains("non-finite").all()
    recon = result.effects[(result.effects["metric"] == "test_recon_mse")].iloc[0]
    assert math.isnan(recon["effect"]) and recon["n_missing"] == 2
    assert result.design["runs"]["diverged"] == 2


def test_a_raising_run_is_recorded_as_diverged(tmp_path, monkeypatch):
    class Exploding(runner.Trainer):
        def fit(self, resume=False):
            if self.config.lr > 0.1:
                raise RuntimeError("boom")
            return super().fit(resume)

    monkeypatch.setattr(runner, "Trainer", Exploding)
    threads = torch.get_num_threads()
    rng = torch.random.get_rng_state()
    with pytest.warns(UserWarning, match="RuntimeError: boom"):
        result = run_grid(resolve("authors", {"sizes": [784, 32], "head_epochs": 1}),
                          {"lr": [0.01, 0.5]}, tmp_path, seeds=(0,), workers=1, **TINY)
    bad = result.runs[result.runs["lr"] == 0.5].iloc[0]
    assert bad["diverged"] and bad["error"] == "RuntimeError: boom"
    assert not result.runs[result.runs["lr"] == 0.01]["diverged"].any()
    # In-process runs leave the caller's threads and random state alone.
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.random.get_rng_state(), rng)


def test_worker_processes_give_the_in_process_numbers(tmp_path):
    base = resolve("authors", {"sizes": [784, 32], "head_epochs": 1})
    grid = {"lr": [0.01, 0.05]}
    pooled = run_grid(base, grid, tmp_path / "pool", seeds=(0,), workers=2, **TINY)
    local = run_grid(base, grid, tmp_path / "local", seeds=(0,), workers=1, **TINY)
    columns = ["run", "test_recon_mse", "test_accuracy", "probe_accuracy"]
    pd.testing.assert_frame_equal(pooled.runs[columns], local.runs[columns])


KILLED_SWEEP = """
import time
from tourbillon.config import resolve
from tourbillon.train import Trainer
from diagnostics.ablation import run_grid

original = Trainer.fit

def slow_fit(self, resume=False):
    time.sleep(0.4)  # time to be killed mid-sweep; numbers are unchanged
    return original(self, resume)

if __name__ == "__main__":
    Trainer.fit = slow_fit
    run_grid(resolve("authors", {{"sizes": [784, 32], "head_epochs": 1}}),
             {{"lr": [0.01, 0.02, 0.03]}}, {out!r}, seeds=(0, 1), workers=1,
             epochs=1, probe_epochs=1, max_train=256, max_test=128)
"""


def test_a_killed_sweep_resumes_and_keeps_finished_runs(tmp_path):
    out = tmp_path / "sweep"
    script = tmp_path / "sweep.py"
    script.write_text(textwrap.dedent(KILLED_SWEEP.format(out=str(out))))
    process = subprocess.Popen([sys.executable, str(script)], cwd=Path.cwd())
    try:
        deadline = time.monotonic() + 60
        while len(list((out / "cells").glob("*.json"))) < 2:
            assert process.poll() is None, "the sweep ended before it was killed"
            assert time.monotonic() < deadline, "no run finished within a minute"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    finished = cell_files(out)
    assert 2 <= len(finished) < 6
    assert not (out / "results.csv").exists()

    result = run_grid(resolve("authors", {"sizes": [784, 32], "head_epochs": 1}),
                      {"lr": [0.01, 0.02, 0.03]}, out, seeds=(0, 1), workers=1,
                      **TINY)
    assert result.design["runs"]["trained_now"] == 6 - len(finished)
    after = cell_files(out)
    assert len(after) == 6
    assert {k: after[k] for k in finished} == finished
    assert load_ablation(out).design["status"] == "done"


def test_loading_an_unfinished_sweep_is_refused(tmp_path):
    small_ablation(tmp_path)
    design = json.loads((tmp_path / "sweep.json").read_text())
    (tmp_path / "sweep.json").write_text(json.dumps({**design, "status": "running"}))
    with pytest.raises(DataError, match="did not finish"):
        load_ablation(tmp_path)


@pytest.mark.filterwarnings("ignore:recorder:UserWarning")
def test_recording_writes_hparams_into_each_run(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import (
        EventAccumulator)
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    base = resolve("authors", {"sizes": [784, 32], "head_epochs": 1})
    result = run_grid(base, {"lr": [0.01, 0.02]}, tmp_path, seeds=(0,), workers=1,
                      record="default", **TINY)
    run_dir = tmp_path / result.runs["run_dir"].iloc[0]
    events = EventAccumulator(str(run_dir))
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["axis:lr"].string_value == "0.01"
    assert hparams["seed"].number_value == 0 and hparams["lr"].number_value == 0.01
    recon = events.Scalars("test/recon_mse")[-1].value
    assert recon == pytest.approx(result.runs["test_recon_mse"].iloc[0], rel=1e-6)
    for path in (tmp_path / "cells").glob("*.json"):
        record = json.loads(path.read_text())
        assert record["recorder"] == "recorder" and not record["diverged"]


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match="seeds"):
        run_ablation(FAILING, WORKING, tmp_path, epochs=1, seeds=())
    with pytest.raises(ConfigError, match="epochs"):
        run_ablation(FAILING, WORKING, tmp_path, epochs=0)
    with pytest.raises(ConfigError, match="no axis"):
        run_ablation(FAILING, FAILING.replace(epochs=9), tmp_path, epochs=1)
    with pytest.raises(ConfigError, match="record"):
        run_ablation(FAILING, WORKING, tmp_path, epochs=1, record="loud")
    with pytest.raises(ConfigError, match="cannot be grid fields"):
        run_grid(FAILING, {"seed": [1, 2]}, tmp_path, epochs=1)
