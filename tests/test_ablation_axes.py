"""Axes between two configs: grouping, exclusions, merges, and the designs on them."""

import doctest
import itertools

import pytest

from diagnostics.ablation import axes as axes_module
from diagnostics.ablation import design
from diagnostics.ablation.axes import FAILING, WORKING, Axis, axes_between, bases
from tourbillon.config import VARIANTS, resolve
from tourbillon.errors import ConfigError

REFERENCE_VS_AUTHORS = {
    "decoder_target_output": ("decoder_target", "decoder_output"),
    "feed_from": ("feed_from",),
    "decoder_activation": ("decoder_activation",),
    "encoder_rule": ("encoder_rule",),
    "input_graph": ("input_graph",),
    "loss_reduction": ("loss_reduction",),
    "schedule": ("schedule",),
    "head": ("head",),
    "optimizer": ("optimizer", "lr", "lr_decay"),
}


def test_reference_vs_authors_axes():
    axes = axes_between(resolve("reference"), resolve("authors"))
    assert {a.name: a.fields for a in axes} == REFERENCE_VS_AUTHORS
    assert not any(a.merged for a in axes)
    optimizer = next(a for a in axes if a.name == "optimizer")
    assert optimizer.failing == {"optimizer": "adam", "lr": 0.001, "lr_decay": False}
    assert optimizer.working == {"optimizer": "sgd", "lr": 0.01, "lr_decay": True}
    skipped = axes_module.excluded_fields(resolve("reference"), resolve("authors"))
    assert set(skipped) == {"sizes", "epochs", "head_epochs"}


def test_architecture_is_an_axis_only_when_asked():
    axes = axes_between(resolve("reference"), resolve("authors"),
                        include_architecture=True)
    sizes = next(a for a in axes if a.name == "sizes")
    assert sizes.failing == {"sizes": [784, 256, 64]}
    assert sizes.working == {"sizes": [784, 256]}


def test_working_side_keeps_the_failing_architecture():
    failing, working = resolve("reference"), resolve("authors")
    axes = axes_between(failing, working)
    _, working_base = bases(failing, working, axes)
    assert working_base.sizes == failing.sizes
    assert working_base.epochs == failing.epochs
    assert set(failing.diff(working_base)) == {f for a in axes for f in a.fields}


@pytest.mark.parametrize("failing, working, merged, fields", [
    ("reference", "feedback", "input_graph+feedback", ("input_graph", "feedback")),
    ("authors", "bp", "circulations+encoder_output",
     ("circulations", "encoder_output")),
], ids=["feedback-needs-detached-input", "circulations-move-indices"])
def test_invalid_single_changes_are_merged(failing, working, merged, fields):
    axes = axes_between(resolve(failing), resolve(working))
    axis = next(a for a in axes if a.name == merged)
    assert axis.fields == fields
    assert "alone is invalid" in axis.merged


@pytest.mark.parametrize("failing, working",
                         list(itertools.permutations(sorted(VARIANTS), 2)))
def test_every_single_fix_and_break_is_a_valid_config(failing, working):
    failing, working = resolve(failing), resolve(working)
    try:
        axes = axes_between(failing, working)
    except ConfigError as error:
        assert "include_architecture" in str(error)
        return
    failing_base, working_base = bases(failing, working, axes)
    for axis in axes:
        axis.apply(failing_base, WORKING)
        axis.apply(working_base, FAILING)


def test_working_config_invalid_at_failing_architecture():
    with pytest.raises(ConfigError, match="include_architecture"):
        axes_between(resolve("reference", {"classes": 0}), resolve("feedback"))


def test_axis_validation_and_round_trip():
    with pytest.raises(ConfigError, match="same non-empty fields"):
        Axis("x", {"lr": 0.1}, {"momentum": 0.5})
    with pytest.raises(ConfigError, match="unknown field"):
        Axis("x", {"speed": 1}, {"speed": 2})
    axis = Axis("optimizer", {"optimizer": "adam", "lr": 0.001},
                {"optimizer": "sgd", "lr": 0.01})
    assert Axis.from_dict(axis.to_dict()) == axis
    config = axis.apply(resolve("reference"), WORKING)
    assert axis.side_of(config) == WORKING
    assert axis.side_of(resolve("reference")) == FAILING


def test_docstring_examples_run():
    result = doctest.testmod(axes_module)
    assert result.attempted > 0 and result.failed == 0


def test_screening_and_factorial_cells_of_reference_vs_authors():
    failing, working = resolve("reference"), resolve("authors")
    axes = axes_between(failing, working)
    fingerprint = {"probe_epochs": 10}
    screening = design.screening_runs(failing, axes, (0, 1, 2), fingerprint)
    assert len({r.cell for r in screening}) == 2 + 2 * len(axes) == 20
    assert len(screening) == 60
    chosen = ["decoder_activation", "optimizer", "loss_reduction", "head"]
    factorial = design.factorial_runs(failing, axes, chosen, (0, 1, 2), fingerprint)
    new = {r.cell for r in factorial} - {r.cell for r in screening}
    assert len({r.cell for r in factorial}) == 16 and len(new) == 11
    labels = {r.label for r in screening}
    assert {"failing", "working", "fix-optimizer", "working-break-head"} <= labels


def test_cell_ids_ignore_name_and_seed_but_not_options():
    config = resolve("reference")
    same = design.cell_id(config.replace(name="x", seed=3), {"probe_epochs": 1})
    assert same == design.cell_id(config, {"probe_epochs": 1})
    assert same != design.cell_id(config, {"probe_epochs": 2})
    assert same != design.cell_id(config.replace(lr=0.01), {"probe_epochs": 1})


def test_grid_levels_are_canonical_and_repeats_rejected():
    base = resolve("authors")
    runs = design.grid_runs(base, {"lr": [1, 0.5]}, (0,), {})
    assert [r.settings["axis:lr"] for r in runs] == ["1.0", "0.5"]
    with pytest.raises(ConfigError, match="repeat"):
        design.grid_runs(base, {"lr": [0.01, 1e-2]}, (0,), {})
    with pytest.raises(ConfigError, match="invalid configs"):
        design.grid_runs(base, {"optimizer": ["adam", "sgd"]}, (0,), {})
