"""Figure functions, run-directory readers and findings.json, on small inputs."""

from __future__ import annotations

import base64
import io
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from diagnostics import tags
from diagnostics.report import environment, finding_key, write_findings_json
from diagnostics.report import plots
from diagnostics.report.runs import circulation_images, metrics_frame
from tourbillon.config import resolve
from tourbillon.model import Tourbillon


def long_records(seed: int = 0) -> pd.DataFrame:
    """Long-format records with repeated steps and a few non-batch_std tags."""
    rng = np.random.default_rng(seed)
    rows = []
    for step in (1, 2, 2, 5):
        for k in (1, 0):
            for half in ("dec", "enc"):
                for i in (1, 0):
                    for stat in ("batch_std", "mean"):
                        tag = tags.activation(k, half, i, stat)
                        rows.append({"step": step, "tag": tag, "value": rng.random(),
                                     **tags.parse(tag)})
        rows.append({"step": step, "tag": tags.drift(0, "enc"), "value": 1.0,
                     **tags.parse(tags.drift(0, "enc"))})
    return pd.DataFrame(rows)


def png_size(uri: str) -> tuple[int, int]:
    raw = base64.b64decode(uri.removeprefix("data:image/png;base64,"))
    return Image.open(io.BytesIO(raw)).size


# -- batch spread ------------------------------------------------------------------


def test_batch_spread_table_matches_a_slow_loop():
    records = long_records()
    table = plots.batch_spread_table(records)
    expected_rows = [f"block{k}/{h}/c{i}" for k in (0, 1) for h in ("enc", "dec")
                     for i in (0, 1)]
    assert list(table.index) == expected_rows
    assert list(table.columns) == [1, 2, 5]
    for where in expected_rows:
        for step in (1, 2, 5):
            values = [r.value for r in records.itertuples()
                      if r.quantity == "batch_std" and r.step == step
                      and f"block{int(r.block)}/{r.half}/c{int(r.circulation)}"
                      == where]
            assert table.loc[where, step] == pytest.approx(sum(values) / len(values))


def test_batch_spread_table_without_batch_std_is_empty():
    records = long_records()
    assert plots.batch_spread_table(records[records["quantity"] != "batch_std"]).empty


# -- every figure function checks its columns ----------------------------------------


@pytest.mark.parametrize("draw", [
    lambda ax: plots.plot_effects(pd.DataFrame({"axis": ["a"]}), ax),
    lambda ax: plots.plot_tags_over_steps(pd.DataFrame({"step": [1]}), ["x"], ax),
    lambda ax: plots.plot_quantity_curves(long_records(), "drift", ax),
    lambda ax: plots.plot_learning_curve(pd.DataFrame({"epoch": [1]}), "x", ax),
], ids=["effects", "tags", "curves-need-run", "learning"])
def test_figure_functions_name_missing_columns(draw):
    fig, (ax,) = plots.new_figure(3, 2)
    with pytest.raises(ValueError, match="needs columns"):
        draw(ax)


def test_figures_render_to_png():
    records = long_records().assign(run="failing")
    effects = pd.DataFrame({"axis": ["a", "b"], "from": [0, 1], "to": [1, 2],
                            "metric": "m", "effect": [0.5, -0.2],
                            "ci_low": [0.1, -0.5], "ci_high": [0.9, 0.1],
                            "rank": [1, 2]})
    fig, axes = plots.new_figure(12, 3, ncols=4)
    plots.plot_effects(effects, axes[0])
    plots.plot_tags_over_steps(records, [tags.drift(0, "enc")], axes[1], mark_step=2)
    plots.plot_quantity_curves(records, "drift", axes[2])
    plots.plot_batch_spread(plots.batch_spread_table(records), axes[3])
    heights = {t.get_text(): t.get_position()[1] for t in axes[0].get_yticklabels()}
    assert heights["a"] > heights["b"]  # rank 1 on top
    width, height = png_size(plots.to_data_uri(fig))
    assert width == pytest.approx(12 * plots.DPI, rel=0.05)
    assert height == pytest.approx(3 * plots.DPI, rel=0.05)


def test_forest_names_designs_and_tolerates_a_missing_interval_end():
    effects = pd.DataFrame({"design": ["fix", "fix", "factorial"],
                            "axis": ["a", "b", "a"], "metric": "m",
                            "effect": [0.5, -0.2, 0.4], "ci_low": [0.1, -0.5, 0.2],
                            "ci_high": [0.9, math.nan, 0.6], "rank": [2, 1, 1]})
    fig, (ax,) = plots.new_figure(4, 3)
    plots.plot_effects(effects, ax)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    heights = {t.get_text(): t.get_position()[1] for t in ax.get_yticklabels()}
    assert sorted(labels) == ["a (factorial)", "a (fix)", "b (fix)"]
    assert heights["a (factorial)"] > heights["b (fix)"] > heights["a (fix)"]
    png_size(plots.to_data_uri(fig))


def test_image_grid_checks_its_shape():
    fig, (ax,) = plots.new_figure(3, 2)
    with pytest.raises(ValueError, match="2 labels"):
        plots.plot_image_grid(np.zeros((3, 4, 1, 8, 8)), ["a", "b"], ax)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        plots.plot_image_grid(np.zeros((1, 4, 2, 8, 8)), ["a"], ax)
    plots.plot_image_grid(np.zeros((2, 4, 3, 8, 8)), ["a", "b"], ax)
    assert ax.images[0].get_array().shape == (16, 32, 3)


# -- run directories ---------------------------------------------------------------


@pytest.mark.parametrize("variant", ["reference", "hinton88"])
def test_circulation_images_match_a_manual_walk(variant):
    model = Tourbillon(resolve(variant, {"circulations": 3})).eval()
    x = torch.rand(5, 784)
    images = circulation_images(model, x, (1, 28, 28))
    assert images.shape == (4, 5, 1, 28, 28)
    assert np.array_equal(images[0], x.reshape(5, 1, 28, 28).numpy())
    block, lam = model.blocks[0], model.config.regression
    visible = x
    with torch.no_grad():
        for i in range(3):
            reconstruction = block.decoder(block.encoder(visible))
            assert np.allclose(images[i + 1], reconstruction.reshape(5, 1, 28, 28),
                               atol=1e-6)
            visible = lam * visible + (1 - lam) * reconstruction


def test_metrics_frame_labels_cells_and_seeds(tmp_path):
    for name, seed in (("a", 3), ("b", 4)):
        run = tmp_path / name
        run.mkdir()
        (run / "config.json").write_text(json.dumps(resolve("authors",
                                                            {"seed": seed}).to_dict()))
        (run / "metrics.jsonl").write_text(
            "".join(json.dumps({"epoch": e, "test_recon_mse": 0.1 / e}) + "\n"
                    for e in (1, 2)))
    frame = metrics_frame({"a": tmp_path / "a", "b": tmp_path / "b",
                           "none": tmp_path / "missing"}, cells={"b": "cell-b"})
    assert frame[["cell", "seed"]].drop_duplicates().values.tolist() == [
        ["a", 3], ["cell-b", 4]]
    assert frame["test_recon_mse"].tolist() == [0.1, 0.05, 0.1, 0.05]


# -- keys, environment, findings.json ----------------------------------------------


def test_finding_key_leaves_out_missing_parts():
    base = {"rule": "r", "run": "failing", "block": 0, "half": "enc",
            "circulation": 1}
    assert finding_key(base) == "r:failing:block0/enc/c1"
    short = {**base, "half": None, "circulation": None}
    assert finding_key(short) == "r:failing:block0"


def test_environment_lists_versions_seeds_and_command():
    env = environment(["tourbillon", "diagnose", "--out", "my dir"], seeds=7)
    assert env["command"] == "tourbillon diagnose --out 'my dir'"
    assert env["seeds"] == [7]
    assert env["torch"].split("+")[0] == torch.__version__.split("+")[0]
    for key in ("python", "platform", "captum", "tensorboard"):
        assert env[key]


FINDING = {"rule": "r", "run": "failing", "block": 0, "half": "enc",
           "circulation": 1, "step": 4, "message": "m",
           "evidence": {"a": np.float32(0.5), "b": math.nan, "c": -math.inf,
                        "n": np.int64(3)}}
CAUSE = {"axis": "lr", "from": 0.001, "to": 0.01, "metric": "test_recon_mse",
         "effect": np.float64(-0.1), "ci": (-0.2, 0.0), "rank": np.int64(1)}


def test_findings_json_is_strict_json(tmp_path):
    path = write_findings_json(tmp_path / "f.json", "learns", [CAUSE], [FINDING])
    written = json.loads(path.read_text())
    assert written["causes"] == [{**CAUSE, "effect": -0.1, "ci": [-0.2, 0.0],
                                  "rank": 1}]
    assert written["findings"][0]["evidence"] == {"a": 0.5, "b": "nan", "c": "-inf",
                                                  "n": 3}


@pytest.mark.parametrize("verdict, causes, findings, message", [
    ("stall", [], [], "verdict must be one of"),
    ("stalls", [{**CAUSE, "ci": [0.1]}], [], r"cause 0: ci must be \[low, high\]"),
    ("stalls", [{k: v for k, v in CAUSE.items() if k != "rank"}], [],
     r"cause 0 lacks \['rank'\]"),
    ("stalls", [], [{**FINDING, "evidence": {"a": "high"}}],
     "finding 0: evidence 'a' is not a number"),
    ("stalls", [], [{k: v for k, v in FINDING.items() if k != "step"}],
     r"finding 0 lacks \['step'\]"),
], ids=["verdict", "ci", "cause-key", "evidence", "finding-key"])
def test_findings_json_refuses_bad_entries(tmp_path, verdict, causes, findings,
                                           message):
    with pytest.raises(ValueError, match=message):
        write_findings_json(tmp_path / "f.json", verdict, causes, findings)
    assert not (tmp_path / "f.json").exists()
