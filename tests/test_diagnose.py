"""The one-command diagnosis, end to end on a small slice of the bundled digits."""

from __future__ import annotations

import json

import pytest

from fault_models import EXPECTED
from tourbillon.cli import main

SMALL = ["--max-train", "256", "--max-test", "128", "--epochs", "1", "--workers", "1",
         "--probe-epochs", "1", "--quiet"]


@pytest.fixture(scope="module")
def diagnosis(tmp_path_factory):
    out = tmp_path_factory.mktemp("diagnosis")
    assert main(["diagnose", *SMALL, "--seeds", "0,1", "--out", str(out)]) == 0
    return out


def test_diagnose_writes_report_findings_runs_and_timings(diagnosis, capsys):
    findings = json.loads((diagnosis / "reports" / "findings.json").read_text())
    assert findings["verdict"] == "stalls"
    assert findings["causes"], "the ablation ranked no cause"
    for cause in findings["causes"]:
        assert {"axis", "from", "to", "metric", "effect", "ci", "rank"} <= set(cause)
        assert cause["ci"][0] <= cause["effect"] <= cause["ci"][1]
    for finding in findings["findings"]:
        assert {"rule", "run", "block", "half", "circulation", "step", "evidence",
                "message"} <= set(finding)
    html = (diagnosis / "reports" / "diagnosis.html").read_text()
    assert "stalls" in html

    # Each finding names the recorded tags of its place: its evidence plot.
    for finding in findings["findings"]:
        if finding["rule"] in ("collapse", "proxy_satisfied", "far_fixed_point"):
            assert finding["tags"], finding
            assert all(t.startswith(f"block{finding['block']}/")
                       for t in finding["tags"]), finding
    runs = diagnosis / "runs"
    assert (runs / "failing-reference" / "records.jsonl").exists()
    assert (runs / "working-authors" / "metrics.jsonl").exists()
    assert (runs / "ablation" / "results.csv").exists()
    timings = json.loads((diagnosis / "reports" / "timings.json").read_text())
    assert set(timings) == {"train", "detect", "ablate", "report"}


def test_report_rebuilds_from_runs_without_training(diagnosis, tmp_path, capsys):
    assert main(["report", str(diagnosis / "runs"), "--out", str(tmp_path)]) == 0
    before = json.loads((diagnosis / "reports" / "findings.json").read_text())
    after = json.loads((tmp_path / "reports" / "findings.json").read_text())
    assert after["verdict"] == before["verdict"]
    assert after["causes"] == before["causes"]
    rules = [f["rule"] for f in before["findings"]]
    assert [f["rule"] for f in after["findings"]] == rules
    assert "verdict: stalls" in capsys.readouterr().out


@pytest.mark.parametrize("factory", sorted(EXPECTED))
def test_planted_fault_is_found_where_it_was_planted(factory, tmp_path):
    rule, block, half, circulation = EXPECTED[factory]
    # Four epochs of 4 steps, every step recorded: the NaN appears at step 13.
    code = main(["diagnose", *SMALL, "--epochs", "4", "--record", "full",
                 "--model", f"fault_models:{factory}",
                 "--out", str(tmp_path)])
    assert code == 0
    findings = json.loads((tmp_path / "reports" / "findings.json").read_text())
    places = {(f["rule"], f["block"], f["half"], f["circulation"])
              for f in findings["findings"]}
    assert (rule, block, half, circulation) in places, places


def test_bad_factory_is_a_clear_error(tmp_path, capsys):
    code = main(["diagnose", *SMALL, "--model", "no_such_module:make",
                 "--out", str(tmp_path)])
    assert code == 2
    assert "cannot import 'no_such_module'" in capsys.readouterr().err


def test_removed_by_names_the_axis_that_fixes_the_range_mismatch(diagnosis):
    from diagnostics.ablation import load_ablation
    from diagnostics.detectors import detect_run
    from diagnostics.diagnose import removed_by

    failing = detect_run(diagnosis / "runs" / "failing-reference")
    findings = [f.to_dict() for f in failing.findings]
    mismatch = [f for f in findings if f["rule"] == "range_mismatch"]
    assert mismatch, "the sigmoid decoder of block 1 cannot reach tanh codes"
    silenced = removed_by(findings, load_ablation(diagnosis / "runs" / "ablation"))
    key = ("range_mismatch", 1, "dec", None)
    # Only an identity decoder can reach the tanh codes; no other axis
    # changes block 1's decoder activation.
    assert silenced[key] == ["decoder_activation"]
