"""The command line: exit codes, one-line errors, run directories."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tourbillon.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--variant", "nope"],
         "unknown variant 'nope'; known variants: reference"),
        (["train", "--set", "regression=1.5"], "regression must be in [0, 1)"),
        (["train", "--set", "colour=red"], "unknown config field(s) ['colour']"),
        (["train", "--set", "circulations"], "--set expects field=value"),
        (["train", "--set", "encoder_activation=softplus"],
         "encoder_activation='softplus' is not allowed; choose one of tanh, sigmoid"),
        (["train", "--set", "optimizer=rmsprop"], "optimizer='rmsprop' is not allowed"),
        (["train", "--set", "feed_from=4"], "feed_from=4 is not a circulation index"),
        (["train", "--dataset", "imagenet"], "imagenet"),
    ],
    ids=["variant", "regression", "field", "syntax", "activation", "optimizer",
         "index", "dataset"],
)
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, argv, message):
    code, _, err = _run(capsys, *argv, "--out", str(tmp_path / "run"),
                        "--record", "off")
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_corrupt_checkpoint_from_the_shell(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"garbage")
    result = subprocess.run(
        [sys.executable, "-m", "tourbillon.cli", "train", "--out", str(run), "--resume",
         "--record", "off", "--quiet"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "is not a readable checkpoint" in result.stderr
    assert "Traceback" not in result.stderr


def test_train_writes_a_run_directory_and_prints_each_epoch(capsys, tmp_path):
    code, out, _ = _run(capsys, "train", "--variant", "authors", "--epochs", "2",
                        "--set", "head_epochs=1", "--probe-epochs", "1", "--quiet",
                        "--record", "off", "--logdir", str(tmp_path))
    assert code == 0
    run = tmp_path / "authors-s0"
    assert json.loads((run / "config.json").read_text())["epochs"] == 2
    assert [line.split()[1] for line in out.splitlines()
            if line.startswith("epoch")] == ["1", "2"]
    assert out.splitlines()[-1].startswith("done: recon")


def test_variants_lists_every_named_variant(capsys):
    from tourbillon.config import VARIANTS

    code, out, _ = _run(capsys, "variants")
    assert code == 0
    names = [line for line in out.splitlines() if line and not line.startswith(" ")]
    assert names == list(VARIANTS)
    code, out, _ = _run(capsys, "variants", "--fields")
    assert "regression = 0.0" in out


SMALL_SWEEP = ["--epochs", "1", "--seeds", "0", "--workers", "1", "--probe-epochs", "1",
               "--max-train", "128", "--max-test", "64", "--record", "off", "--quiet"]


def test_ablate_two_specs_ranks_the_one_axis(capsys, tmp_path):
    code, out, _ = _run(capsys, "ablate", "--failing", "authors lr=0.001",
                        "--working", "authors", *SMALL_SWEEP, "--out", str(tmp_path))
    assert code == 0
    causes = json.loads((tmp_path / "causes.json").read_text())
    assert [c["axis"] for c in causes if c["rank"] == 1] == ["lr"]
    assert out.splitlines()[0].startswith("1. lr: ")


def test_ablate_grid_crosses_the_toml_values(capsys, tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text('base = "authors"\n\n[grid]\nlr = [0.001, 0.01]\n'
                    'lr_decay = [true, false]\n')
    code, out, _ = _run(capsys, "ablate", "--grid", str(grid), *SMALL_SWEEP,
                        "--out", str(tmp_path / "sweep"))
    assert code == 0
    import pandas as pd
    runs = pd.read_csv(tmp_path / "sweep" / "results.csv")
    assert len(runs) == 4
    assert sorted(zip(runs["lr"], runs["lr_decay"])) == [
        (0.001, False), (0.001, True), (0.01, False), (0.01, True)]


def test_ablate_bad_grid_names_the_file(capsys, tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text("[grid]\ncolour = [1, 2]\n")
    code, _, err = _run(capsys, "ablate", "--grid", str(grid), *SMALL_SWEEP,
                        "--out", str(tmp_path / "sweep"))
    assert code == 2 and "grid.toml" in err and "colour" in err
