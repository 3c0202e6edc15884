"""Grid files: parsing, and errors that name the file and the line."""

import pytest

from diagnostics.ablation import load_grid
from tourbillon.errors import ConfigError

GOOD = """\
base = "authors"

[set]
head_epochs = 3

[grid]
lr = [0.01, 0.1]
lr_decay = [true, false]
"""


def write(tmp_path, text):
    path = tmp_path / "grid.toml"
    path.write_text(text)
    return path


def test_a_grid_file_gives_base_and_values(tmp_path):
    grid = load_grid(write(tmp_path, GOOD))
    assert grid["variant"] == "authors" and grid["set"] == {"head_epochs": 3}
    assert grid["base"].head_epochs == 3 and grid["base"].optimizer == "sgd"
    assert grid["grid"] == {"lr": [0.01, 0.1], "lr_decay": [True, False]}


def test_base_defaults_to_reference(tmp_path):
    grid = load_grid(write(tmp_path, "[grid]\nfeed_from = [0, 1]\n"))
    assert grid["variant"] == "reference" and grid["base"].name == "reference"


@pytest.mark.parametrize("text, message", [
    ("[grid]\nlr = [0.1,, 0.2]\nmomentum = [0.5]\n",
     r"grid\.toml: not valid TOML: .*line 2"),
    (GOOD.replace("lr_decay =", "lr_dekay ="), r"grid\.toml:8: unknown config field "
                                               r"'lr_dekay' in \[grid\]"),
    (GOOD.replace("head_epochs", "head_epoch"), r"grid\.toml:4: unknown config field"),
    (GOOD.replace("lr = [0.01, 0.1]", "lr = 0.01"), r"grid\.toml:7: lr needs a "
                                                    r"non-empty list"),
    (GOOD.replace("lr = [0.01, 0.1]", "seed = [0, 1]"), r"grid\.toml:7: seed cannot"),
    (GOOD.replace('"authors"', '"author"'), r"grid\.toml:1: unknown variant"),
    (GOOD.replace("[set]", "[sets]"), r"grid\.toml:3: unknown key 'sets'"),
    ("base = 'authors'\n", r"needs a \[grid\] table"),
    ('base = "reference"\n[grid]\nlr_decay = [true, false]\n',
     r"grid\.toml:3: the combination .* invalid config: lr_decay"),
    (GOOD.replace("lr = [0.01, 0.1]", 'lr = ["fast"]'), r"grid\.toml:7, .* lr must be"),
], ids=["bad-toml", "unknown-grid-field", "unknown-set-field", "scalar-value",
        "seed-in-grid", "unknown-variant", "unknown-table", "no-grid",
        "invalid-combination", "bad-value"])
def test_grid_file_errors_name_file_and_line(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_grid(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read grid file"):
        load_grid(tmp_path / "nope.toml")
