"""On the reference model the recorded quantities show the stall in epoch one."""

from __future__ import annotations

import pytest

from diagnostics import tags
from diagnostics.quantities.activations import activation_stats
from diagnostics.recorder import TrainerRecorder, load_records
from tourbillon.config import resolve
from tourbillon.data import load_dataset
from tourbillon.train import Trainer

pytestmark = pytest.mark.filterwarnings("ignore:recorder")


@pytest.fixture(scope="module")
def first_epoch(tmp_path_factory):
    data = load_dataset("mnist-sample")
    run_dir = tmp_path_factory.mktemp("stall") / "reference"
    trainer = Trainer(resolve("reference", {"epochs": 1}), data, probe_epochs=0,
                      callbacks=[TrainerRecorder(run_dir, "default")])
    with pytest.warns(UserWarning, match="'head'"):
        trainer.fit()
    frame = load_records(run_dir)
    series = {tag: rows.set_index("step").value.sort_index()
              for tag, rows in frame.groupby("tag")}
    return data, series


def test_the_stall_is_visible_in_the_first_epoch(first_epoch):
    data, series = first_epoch
    x = data.x_train
    grey = ((x - 0.5) ** 2).mean().item()  # error of a uniform grey image
    data_spread = activation_stats(x[:64])["batch_std"].item()

    # The true error of every circulation stays at the grey image's...
    for c in (0, 1):
        true_error = series[tags.true_error(0, c)]
        assert true_error.index.tolist() == [1, 4, 16, 51]
        assert (true_error > 0.95 * grey).all()
    assert series[tags.test_metric("recon_mse")].iloc[-1] > 0.95 * grey

    # ... while the decoder's rule is satisfied and the loop settles at once,
    last_error = series[tags.true_error(0, 0)].iloc[-1]
    assert series[tags.drift(0, "dec")].iloc[-1] < 0.01 * last_error
    assert series[tags.settle(0, 1)].iloc[-1] < 0.01 * last_error

    # on reconstructions that hardly depend on the input, and a code passed up
    # (circulation 1) that depends on it far less than the first-pass code.
    assert (series[tags.activation(0, "dec", 0, "batch_std")] < 0.25 * data_spread
            ).all()
    for k in (0, 1):
        passed = series[tags.activation(k, "enc", 1, "batch_std")]
        first = series[tags.activation(k, "enc", 0, "batch_std")]
        assert (passed < 0.2 * first).all()

    # The local updates are not descent directions of the true error.
    for half in ("enc", "dec"):
        assert abs(series[tags.descent_alignment(0, half)].iloc[0]) < 0.1
    assert series[tags.test_metric("accuracy")].iloc[-1] < 0.15
