"""The stall detectors on synthetic records: each rule fires on a planted
pathology at the right place and stays quiet on a healthy run.

Records are built by ``detector_records``: 40 recorded steps (1, 6, ..., 196)
of a two-block run that learns. A pathology overwrites a few tags from some
record on; the finding's step is then that record's step.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from detector_records import (MEAN_MSE, RECORDS, STEPS, from_record, healthy_facts,
                              healthy_records, healthy_values, records_frame)
from diagnostics import tags
from diagnostics.detectors import (RULES, DetectionResult, Finding, NotChecked,
                                   Thresholds, detect)
from diagnostics.detectors.base import num
from diagnostics.detectors.finding import PUBLIC_KEYS
from diagnostics.detectors.series import persistent
from tourbillon.errors import ConfigError

START = 10  # record at which planted pathologies begin
START_STEP = STEPS[START]


def run(values=None, *, facts="healthy", events=(), rules=None, probes=True,
        metrics=None, **thresholds) -> DetectionResult:
    """Detect on healthy records with ``values`` overriding some tags."""
    merged = healthy_values()
    if values:
        merged.update(values)
    merged = {t: v for t, v in merged.items() if v is not None}
    return detect(healthy_records(merged, probes=probes), run="synthetic",
                  facts=healthy_facts() if facts == "healthy" else facts,
                  events=list(events) if events is not None else None,
                  metrics=metrics, thresholds=Thresholds(**thresholds),
                  rules=rules)


def places(result: DetectionResult, rule: str) -> set[tuple]:
    return {(f.block, f.half, f.circulation) for f in result.by_rule(rule)}


def only(result: DetectionResult, rule: str) -> Finding:
    found = result.by_rule(rule)
    assert len(found) == 1, [f.to_dict() for f in result.findings]
    return found[0]


# -- the healthy run -----------------------------------------------------------------


def test_healthy_run_has_no_findings_and_checks_everything():
    result = run()
    assert result.findings == []
    assert result.not_checked == []


@pytest.mark.parametrize("rule", sorted(RULES))
def test_each_rule_is_quiet_on_the_healthy_run(rule):
    for seed_shift in range(3):  # other noise draws of the same healthy run
        values = healthy_values(seed=seed_shift)
        result = detect(healthy_records(values), run="h", facts=healthy_facts(),
                        events=[], rules=[rule])
        assert result.by_rule(rule) == [], result.by_rule(rule)[0].message


# -- persistence ---------------------------------------------------------------------


def flags(*values: int) -> pd.Series:
    return pd.Series([bool(v) for v in values], index=[10 * (i + 1) for i in
                                                        range(len(values))])


@pytest.mark.parametrize("held, expected", [
    ((1, 1, 1, 0, 0, 0, 0, 0, 0, 0), None),  # a transient at the start
    ((0, 0, 0, 0, 1, 1, 1, 1, 1, 1), 50),  # from record 5 to the end
    ((1, 0, 1, 0, 1, 0, 1, 0, 1, 0), None),  # flickering
    ((0, 1, 1, 1, 1, 0, 1, 1, 1, 1), 20),  # 8 of the last 9 after 3 in a row
    ((0, 1, 1, 1, 0, 0, 1, 1, 1, 1), 70),  # 6 of 9 is too few from record 2
    ((1, 1), None),  # shorter than persist_steps
], ids=["transient", "late-onset", "flicker", "one-gap", "two-gaps", "short"])
def test_persistence_definition(held, expected):
    p = persistent(flags(*held), steps=3, fraction=0.8)
    assert (p.step if p is not None else None) == expected


def test_persistence_counts_nan_as_not_holding():
    series = pd.Series([True, np.nan, True, True, True], index=[1, 2, 3, 4, 5])
    p = persistent(series, steps=3, fraction=0.8)
    assert p.step == 3 and p.held == 3 and p.total == 3 and p.recorded == 5


# -- one test per rule: the pathology is found where it was planted ------------------


def test_nonfinite_from_records_names_the_first_call():
    base = healthy_values()
    values = {}
    for half, c in (("enc", 0), ("dec", 0), ("enc", 1)):
        for stat in ("mean", "std"):
            tag = tags.activation(1, half, c, stat)
            values[tag] = from_record(START + (half == "dec"), math.nan, base[tag])
    result = run(values)
    finding = only(result, "nonfinite")
    assert (finding.block, finding.half, finding.circulation) == (1, "enc", 0)
    assert finding.step == START_STEP and finding.severity == "error"


def test_nonfinite_prefers_the_recorder_events():
    event = {"step": 57, "event": "nonfinite", "block": 1, "half": "dec",
             "circulation": 1, "module": "blocks.1.decoder", "tensor": "output"}
    result = run(events=[event])
    finding = only(result, "nonfinite")
    assert (finding.block, finding.half, finding.circulation, finding.step) == (
        1, "dec", 1, 57)
    assert "blocks.1.decoder" in finding.message


def test_nonfinite_without_events_says_so():
    result = run(events=None, rules=["nonfinite"])
    assert [n.what for n in result.not_checked] == ["events"]


def test_exploding_gradient():
    tag = tags.grad_norm(0, "dec", "0.weight")
    values = {tag: from_record(START, 1e5, healthy_values()[tag])}
    finding = only(run(values), "exploding_gradient")
    assert (finding.block, finding.half, finding.step) == (0, "dec", START_STEP)
    assert finding.evidence["grad_norm_max"] == pytest.approx(1e5)


def test_vanishing_gradient():
    base = healthy_values()
    values = {tags.grad_norm(1, "enc", p): from_record(START, 1e-9, base[
        tags.grad_norm(1, "enc", p)]) for p in ("0.weight", "0.bias")}
    finding = only(run(values), "vanishing_gradient")
    assert (finding.block, finding.half, finding.step) == (1, "enc", START_STEP)


def test_frozen_weights_when_no_gradient_is_ever_recorded():
    values = {tags.grad_norm(0, "enc", p): None for p in ("0.weight", "0.bias")}
    values.update({tags.update_ratio(0, "enc", p): None for p in ("0.weight",
                                                                  "0.bias")})
    result = run(values)
    finding = only(result, "frozen_weights")
    assert (finding.block, finding.half, finding.circulation) == (0, "enc", None)
    assert finding.step == STEPS[0] and finding.evidence["grad_records"] == 0
    # The gradient rules say they could not look at that half.
    assert {(n.rule, n.what) for n in result.not_checked} == {
        ("exploding_gradient", "block0/enc"), ("vanishing_gradient", "block0/enc"),
        ("update_ratio", "block0/enc")}


def test_frozen_weights_when_updates_are_zero():
    values = {tags.update_ratio(1, "dec", p): np.zeros(RECORDS)
              for p in ("0.weight", "0.bias")}
    finding = only(run(values), "frozen_weights")
    assert (finding.block, finding.half, finding.step) == (1, "dec", STEPS[0])


@pytest.mark.parametrize("ratio, too_large", [(2.0, 1), (1e-8, 0)],
                         ids=["too-large", "too-small"])
def test_update_ratio_out_of_range(ratio, too_large):
    tag = tags.update_ratio(0, "enc", "0.weight")
    finding = only(run({tag: from_record(START, ratio, healthy_values()[tag])}),
                   "update_ratio")
    assert (finding.block, finding.half, finding.step) == (0, "enc", START_STEP)
    assert finding.evidence["too_large"] == too_large


def test_update_ratio_ignores_biases():
    tag = tags.update_ratio(0, "enc", "0.bias")
    assert run({tag: np.full(RECORDS, 5.0)}).by_rule("update_ratio") == []


def test_saturation_of_an_encoder_names_the_circulation():
    tag = tags.activation(0, "enc", 1, "saturated")
    finding = only(run({tag: from_record(START, 0.9, healthy_values()[tag])}),
                   "saturation")
    assert (finding.block, finding.half, finding.circulation, finding.step) == (
        0, "enc", 1, START_STEP)


def test_saturation_of_a_decoder_is_measured_against_its_input():
    tag = tags.activation(0, "dec", 0, "saturated")
    base = healthy_values()[tag]
    # The input has 30% of its elements at the sigmoid's bounds (facts).
    assert run({tag: from_record(START, 0.7, base)}).by_rule("saturation") == []
    finding = only(run({tag: from_record(START, 0.95, base)}), "saturation")
    assert (finding.block, finding.half, finding.circulation) == (0, "dec", 0)
    assert finding.evidence["baseline"] == pytest.approx(0.3)


def test_decoder_saturation_without_facts_is_not_checked():
    result = run(facts=None, rules=["saturation"])
    assert {n.what for n in result.not_checked} == {"block0/dec", "block1/dec"}
    assert all("facts" in n.why for n in result.not_checked)


def test_dead_units():
    tag = tags.activation(1, "enc", 0, "constant")
    finding = only(run({tag: from_record(START, 0.8, healthy_values()[tag])}),
                   "dead_units")
    assert (finding.block, finding.half, finding.circulation, finding.step) == (
        1, "enc", 0, START_STEP)


def test_loss_plateau():
    rng = np.random.default_rng(1)
    loss = np.concatenate([np.linspace(2.5, 1.0, 8), 1.0 + 0.003 * rng.standard_normal(
        RECORDS - 8)])
    finding = only(run({tags.train_loss(): loss}), "loss_plateau")
    assert finding.block is None and finding.severity == "info"
    assert STEPS[4] <= finding.step <= STEPS[12]
    assert finding.evidence["loss_at_plateau"] == pytest.approx(1.0, abs=0.05)


def test_loss_plateau_reads_the_metrics_without_train_loss():
    metrics = [{"epoch": e, "step": 8 * e, "train_loss": 1.0} for e in range(1, 31)]
    result = run({tags.train_loss(): None}, metrics=metrics, rules=["loss_plateau"])
    assert only(result, "loss_plateau").step == 8
    assert "metrics" in result.findings[0].message


@pytest.mark.parametrize("facts", ["healthy", None], ids=["facts", "no-facts"])
def test_collapse(facts):
    tag = tags.activation(0, "dec", 0, "batch_std")
    finding = only(run({tag: from_record(START, 1e-4, healthy_values()[tag])},
                       facts=facts), "collapse")
    assert (finding.block, finding.half, finding.circulation, finding.step) == (
        0, "dec", 0, START_STEP)


def test_collapse_of_a_higher_block_follows_its_input_spread():
    base = healthy_values()
    # Block 1's input (block 0's first code) spreads more and more; block 1's
    # reconstructions do not follow: 0.25 / 10 is under 5% of the input's.
    source = tags.activation(0, "enc", 0, "batch_std")
    values = {source: from_record(START, 10.0, base[source])}
    finding = only(run(values), "collapse")
    assert (finding.block, finding.circulation, finding.step) == (1, 0, START_STEP)
    assert run(values, facts=None).by_rule("collapse") == []  # own spread is fine
    follows = {tags.activation(1, "dec", c, "batch_std"): from_record(
        START, 5.0, base[tags.activation(1, "dec", c, "batch_std")]) for c in (0, 1)}
    assert run({**values, **follows}).by_rule("collapse") == []


def test_uninformative_target():
    tag = tags.activation(1, "enc", 0, "batch_std")
    finding = only(run({tag: from_record(START, 1e-3, healthy_values()[tag])}),
                   "uninformative_target")
    assert (finding.block, finding.half, finding.circulation) == (1, "enc", 0)


def test_uninformative_target_needs_facts():
    result = run(facts=None, rules=["uninformative_target"])
    assert {n.what for n in result.not_checked} == {"block0", "block1"}


def test_proxy_satisfied():
    base = healthy_values()
    drift, true = tags.drift(0, "dec"), tags.true_error(0, 0)
    values = {drift: np.concatenate([np.full(START, 0.05), np.full(RECORDS - START,
                                                                   0.005)]),
              true: np.full(RECORDS, 1.1 * MEAN_MSE[0])}
    result = run(values)
    # The healthy encoder drift falls to a fifth as well: both rules are met.
    assert places(result, "proxy_satisfied") == {(0, "dec", 0), (0, "enc", 0)}
    finding = next(f for f in result.findings if f.half == "dec")
    assert START_STEP <= finding.step <= STEPS[START + 3]
    assert finding.evidence["drift_early"] == pytest.approx(0.05)
    values[tags.drift(0, "enc")] = np.full(RECORDS, base[tags.drift(0, "enc")][0])
    assert places(run(values), "proxy_satisfied") == {(0, "dec", 0)}


def test_range_mismatch_and_an_unknown_range():
    facts = healthy_facts()
    block1 = dataclasses.replace(facts.blocks[1], decoder_module="Sigmoid",
                                 decoder_range=(0.0, 1.0), input_outside_decoder=0.45,
                                 input_clamp_mse=0.12)
    block0 = dataclasses.replace(facts.blocks[0], decoder_module="MyDecoder",
                                 decoder_range=None)
    result = run(facts=dataclasses.replace(facts, blocks=(block0, block1)))
    finding = only(result, "range_mismatch")
    assert (finding.block, finding.half, finding.circulation) == (1, "dec", None)
    assert finding.step == STEPS[0]
    assert finding.evidence["outside_fraction"] == 0.45
    assert "Sigmoid" in finding.message and "0.12" in finding.message
    skipped = [n for n in result.not_checked if n.rule == "range_mismatch"]
    assert [(n.what, "MyDecoder" in n.why) for n in skipped] == [("block0/dec", True)]


def test_probe_near_chance():
    values = {tags.batch_probe(0, "first"): np.full(RECORDS, 0.12)}
    finding = only(run(values, probes=False), "probe_chance")
    assert (finding.block, finding.half, finding.circulation) == (0, "enc", 0)
    assert finding.evidence["from_batch_probe"] == 1


def test_probe_prefers_epoch_probes_over_the_batch_probe():
    values = {tags.batch_probe(0, "first"): np.full(RECORDS, 0.12)}
    assert run(values).by_rule("probe_chance") == []  # epoch probes at 85%


def test_descent_misaligned():
    rng = np.random.default_rng(2)
    tag = tags.descent_alignment(0, "enc")
    values = {tag: from_record(START, -0.2 + 0.1 * rng.standard_normal(RECORDS),
                               healthy_values()[tag])}
    finding = only(run(values), "descent_misaligned")
    assert (finding.block, finding.half, finding.circulation) == (0, "enc", None)
    assert START_STEP <= finding.step <= STEPS[START + 3]


def test_unsettled_loop():
    base = healthy_values()
    values = {tags.settle(1, 1): 1.5 * base[tags.true_error(1, 0)]}
    finding = only(run(values), "unsettled_loop")
    assert (finding.block, finding.half, finding.circulation) == (1, "dec", 1)
    assert finding.evidence["ratio"] == pytest.approx(1.5, rel=1e-6)


def test_far_fixed_point():
    base = healthy_values()
    true0 = base[tags.true_error(0, 0)]
    values = {tags.settle(0, 1): 0.01 * true0,
              tags.true_error(0, 1): np.full(RECORDS, 1.2 * MEAN_MSE[0])}
    finding = only(run(values), "far_fixed_point")
    assert (finding.block, finding.half, finding.circulation) == (0, "dec", 1)


# -- what could not be checked is said ------------------------------------------------


def test_missing_tags_are_reported_not_skipped():
    values = {t: None for t in healthy_values() if "/align/" in t
              or "/settle/" in t}
    result = run(values, events=[{"event": "not_measured", "what": "align",
                                  "why": "descent alignment was off"}])
    rules = {n.rule for n in result.not_checked}
    assert {"descent_misaligned", "unsettled_loop", "far_fixed_point"} <= rules
    why = next(n.why for n in result.not_checked if n.rule == "descent_misaligned")
    assert "descent alignment was off" in why
    assert result.not_measured[0]["what"] == "align"


def test_empty_records_check_nothing_and_say_why():
    empty = records_frame({})
    result = detect(empty, run="empty", events=[])
    assert result.findings == []
    assert {n.rule for n in result.not_checked} == set(RULES) - {"nonfinite",
                                                                 "probe_chance"}


# -- the public API --------------------------------------------------------------------


def test_finding_to_dict_has_the_public_keys():
    tag = tags.activation(0, "dec", 0, "batch_std")
    result = run({tag: from_record(START, 1e-4, healthy_values()[tag])})
    entry = result.findings[0].to_dict()
    assert set(entry) == set(PUBLIC_KEYS) | {"severity", "title", "tags"}
    assert entry["run"] == "synthetic"
    assert tag in entry["tags"]  # the collapse's own batch spread
    assert all(v is None or isinstance(v, (int, float))
               for v in entry["evidence"].values())
    # The message is written from the evidence numbers.
    assert num(entry["evidence"]["batch_std"]) in entry["message"]
    assert "threshold 5.0%" in entry["message"]


def test_findings_are_sorted_by_severity_then_step():
    base = healthy_values()
    values = {
        tags.activation(0, "dec", 0, "batch_std"): from_record(30, 1e-4, base[
            tags.activation(0, "dec", 0, "batch_std")]),  # error, late
        tags.activation(1, "enc", 0, "constant"): from_record(5, 0.8, base[
            tags.activation(1, "enc", 0, "constant")]),  # warning, early
        tags.grad_norm(0, "dec", "0.weight"): from_record(20, 1e5, base[
            tags.grad_norm(0, "dec", "0.weight")]),  # error, earlier
    }
    order = [(f.severity, f.rule) for f in run(values).findings]
    assert order == [("error", "exploding_gradient"), ("error", "collapse"),
                     ("warning", "dead_units")]


def test_detect_checks_its_input():
    with pytest.raises(ValueError, match="quantity"):
        detect(healthy_records().drop(columns=["quantity"]), run="x")
    with pytest.raises(ValueError, match="unknown rule"):
        detect(healthy_records(), run="x", rules=["no_such_rule"])


def test_a_failing_rule_is_reported_as_not_checked(monkeypatch):
    def broken(self, data, out):
        raise RuntimeError("boom")

    monkeypatch.setattr(RULES["collapse"], "check", broken)
    with pytest.warns(RuntimeWarning, match="collapse"):
        result = run(rules=["collapse", "dead_units"])
    assert [(n.rule, "boom" in n.why) for n in result.not_checked] == [
        ("collapse", True)]


def test_not_checked_to_dict():
    entry = NotChecked("collapse", "block0/dec", "no tags").to_dict()
    assert entry == {"rule": "collapse", "what": "block0/dec", "why": "no tags"}


# -- thresholds ------------------------------------------------------------------------


def test_thresholds_change_the_outcome():
    tag = tags.activation(0, "dec", 0, "batch_std")
    values = {tag: from_record(START, 0.02, healthy_values()[tag])}  # 6.7% of 0.3
    assert run(values).by_rule("collapse") == []
    assert places(run(values, collapse_ratio=0.1), "collapse") == {(0, "dec", 0)}


def test_thresholds_from_dict_and_replace():
    th = Thresholds.from_dict({"collapse_ratio": 0.1, "persist_steps": 5})
    assert th.collapse_ratio == 0.1 and th.persist_steps == 5
    assert th.replace(align_max=-0.1).align_max == -0.1
    assert Thresholds().to_dict()["persist_fraction"] == 0.8
    with pytest.raises(dataclasses.FrozenInstanceError):
        th.collapse_ratio = 0.2  # type: ignore[misc]


@pytest.mark.parametrize("changes", [
    {"no_such": 1}, {"persist_steps": 0}, {"persist_steps": 2.5},
    {"collapse_ratio": 1.5}, {"persist_fraction": 0.0}, {"align_max": 2.0},
    {"update_ratio_low": 0.5, "update_ratio_high": 0.1}, {"smooth_steps": True},
    {"explode_grad_norm": "big"},
], ids=lambda c: ",".join(c))
def test_invalid_thresholds_are_rejected(changes):
    with pytest.raises(ConfigError):
        Thresholds.from_dict(changes)
