"""Effect estimates and bootstrap intervals against slow references and known truths."""

import doctest
import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest

from diagnostics.ablation import effects as fx
from diagnostics.ablation.axes import Axis

METRIC = ("y",)


def slow_percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile, written out."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def slow_bootstrap(cells, weights, resamples, seed, level):
    """The same percentile bootstrap as a loop over resamples (same draws)."""
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(c), size=(resamples, len(c))) for c in cells]
    estimates, lows, highs = [], [], []
    for w in weights:
        estimates.append(sum(wc * sum(c) / len(c) for wc, c in zip(w, cells)))
        boot = []
        for b in range(resamples):
            total = 0.0
            for wc, c, index in zip(w, cells, draws):
                total += wc * sum(c[i] for i in index[b]) / len(c)
            boot.append(total)
        tail = 100 * (1 - level) / 2
        lows.append(slow_percentile(boot, tail))
        highs.append(slow_percentile(boot, 100 - tail))
    return estimates, lows, highs


def test_bootstrap_matches_slow_loop():
    rng = np.random.default_rng(1)
    cells = [rng.normal(size=n) for n in (3, 4, 2)]
    weights = np.array([[-1.0, 1.0, 0.0], [0.5, 0.5, -1.0]])
    fast = fx.bootstrap_contrasts(cells, weights, resamples=300, seed=7, level=0.9)
    slow = slow_bootstrap(cells, weights, 300, 7, 0.9)
    for f, s in zip(fast, slow):
        np.testing.assert_allclose(f, s, rtol=1e-12, atol=1e-12)


def test_bootstrap_is_seeded_and_marks_empty_cells():
    cells = [np.arange(10.0), np.array([]), np.arange(10.0) ** 1.5]
    weights = np.array([[-1.0, 0.0, 1.0], [0.0, 1.0, -1.0]])
    a = fx.bootstrap_contrasts(cells, weights, seed=3)
    b = fx.bootstrap_contrasts(cells, weights, seed=3)
    c = fx.bootstrap_contrasts(cells, weights, seed=4)
    np.testing.assert_array_equal(np.array(a), np.array(b))
    assert a[1][0] != c[1][0]
    assert a[0][0] == pytest.approx(np.mean(np.arange(10.0) ** 1.5) - 4.5)
    assert all(math.isnan(x[1]) for x in a)
    with pytest.raises(ValueError, match="non-finite"):
        fx.bootstrap_contrasts([np.array([np.nan])], np.ones((1, 1)))


def crossed(levels: dict[str, list[str]], seeds: int, value, noise: float,
            seed: int = 0) -> pd.DataFrame:
    """Runs of a full crossing with metric ``y = value(levels) + noise``."""
    rng = np.random.default_rng(seed)
    rows = []
    for combo in itertools.product(*levels.values()):
        setting = dict(zip(levels, combo))
        for s in range(seeds):
            rows.append({**setting, "seed": s,
                         "y": value(setting) + noise * rng.standard_normal()})
    return pd.DataFrame(rows)


def two_level(names):
    factors = {f"axis:{n}": {"failing": {n: 0}, "working": {n: 1}} for n in names}
    return factors, {c: "failing" for c in factors}


def test_factorial_recovers_known_effects():
    def value(s):
        a, b = s["axis:a"] == "working", s["axis:b"] == "working"
        return 0.2 * a + 0.1 * b + 0.05 * a * b

    runs = crossed({"axis:a": ["failing", "working"], "axis:b": ["failing", "working"],
                    "axis:c": ["failing", "working"]},
                   seeds=30, value=value, noise=0.02)
    factors, reference = two_level("abc")
    table = fx.factorial_effects(runs, factors, reference, METRIC, seed=0)
    truth = {"a": 0.225, "b": 0.125, "c": 0.0, "a:b": 0.025, "a:c": 0.0, "b:c": 0.0}
    assert set(table["axis"]) == set(truth)
    for _, row in table.iterrows():
        assert row["effect"] == pytest.approx(truth[row["axis"]], abs=0.01)
        assert row["ci_low"] <= truth[row["axis"]] <= row["ci_high"], row["axis"]
        assert row["n_runs"] == 240 and row["n_missing"] == 0
    a = table[table["axis"] == "a"].iloc[0]
    assert json.loads(a["from"]) == {"a": 0} and json.loads(a["to"]) == {"a": 1}
    assert a["standardised"] == pytest.approx(a["effect"] / 0.02, rel=0.15)


def test_factorial_point_estimates_are_the_textbook_contrasts():
    runs = crossed({"axis:a": ["failing", "working"], "axis:b": ["failing", "working"]},
                   seeds=3, value=lambda s: 0.0, noise=1.0, seed=5)
    table = fx.factorial_effects(runs, *two_level("ab"), METRIC, resamples=10)
    m = runs.groupby(["axis:a", "axis:b"])["y"].mean()
    f, w = "failing", "working"
    main_a = (m[w, f] + m[w, w]) / 2 - (m[f, f] + m[f, w]) / 2
    inter = ((m[w, w] - m[f, w]) - (m[w, f] - m[f, f])) / 2
    got = table.set_index("axis")["effect"]
    assert got["a"] == pytest.approx(main_a, abs=1e-12)
    assert got["a:b"] == pytest.approx(inter, abs=1e-12)


def test_multilevel_grid_effects_use_marginal_means():
    runs = crossed({"axis:lr": ["0.1", "0.01", "1"], "axis:h": ["x", "y"]}, seeds=2,
                   value=lambda s: float(s["axis:lr"]), noise=0.1, seed=2)
    factors = {"axis:lr": {v: {"lr": float(v)} for v in ("0.1", "0.01", "1")},
               "axis:h": {"x": {"h": "x"}, "y": {"h": "y"}}}
    table = fx.factorial_effects(runs, factors, {"axis:lr": "0.01", "axis:h": "x"},
                                 METRIC, design="grid", resamples=50)
    marginal = runs.groupby("axis:lr")["y"].mean()
    mains = table[(table["kind"] == "main") & (table["axis"] == "lr")]
    assert len(mains) == 2
    for level in ("0.1", "1"):
        row = mains[mains["to"] == json.dumps({"lr": float(level)})].iloc[0]
        expected = marginal[level] - marginal["0.01"]
        assert row["effect"] == pytest.approx(expected, abs=1e-12)
    assert len(table[table["kind"] == "interaction"]) == 2
    assert (table["design"] == "grid").all()


def test_factorial_rejects_an_incomplete_crossing():
    runs = crossed({"axis:a": ["failing", "working"], "axis:b": ["failing", "working"]},
                   seeds=2, value=lambda s: 0.0, noise=0.1)
    runs = runs[~((runs["axis:a"] == "working") & (runs["axis:b"] == "working"))]
    with pytest.raises(Exception, match="lacks runs"):
        fx.factorial_effects(runs, *two_level("ab"), METRIC)


def screening_frame(values, seeds=4, noise=0.01):
    """Screening runs of axes a and b whose cell means are ``values``."""
    rng = np.random.default_rng(0)
    rows = []
    for (a, b), mean in values.items():
        for s in range(seeds):
            rows.append({"axis:a": a, "axis:b": b, "seed": s,
                         "y": mean + noise * rng.standard_normal()})
    return pd.DataFrame(rows)


AXES = [Axis("a", {"lr": 0.001}, {"lr": 0.01}),
        Axis("b", {"momentum": 0.8}, {"momentum": 0.5})]
F, W = "failing", "working"


def test_screening_fix_and_break_effects_shares_and_ranks():
    runs = screening_frame({(F, F): 1.0, (W, F): 0.6, (F, W): 0.9, (W, W): 0.2})
    table = fx.screening_effects(runs, AXES, METRIC, resamples=200)
    base = fx.baselines(runs, AXES, METRIC)
    assert base["y"]["gap"] == pytest.approx(-0.8, abs=0.02)
    table = fx.add_ranks(fx.add_shares(table, base, AXES))
    got = table.set_index(["design", "axis"])
    assert got.loc[("screening-fix", "a"), "effect"] == pytest.approx(-0.4, abs=0.02)
    assert got.loc[("screening-break", "a"), "effect"] == pytest.approx(0.7, abs=0.02)
    # Fixing a closes half the gap; breaking a in the working config opens 7/8.
    assert got.loc[("screening-fix", "a"), "share_of_gap"] == pytest.approx(
        0.5, abs=0.05)
    assert got.loc[("screening-break", "a"), "share_of_gap"] == pytest.approx(
        0.875, abs=0.05)
    assert got.loc[("screening-fix", "a"), "rank"] == 1
    assert got.loc[("screening-fix", "b"), "rank"] == 2


def test_ranking_metric_prefers_the_clearest_separation():
    rows = []
    for side, acc, mse in ((F, 0.10, 0.20), (W, 0.90, 0.19)):
        for s, jitter in enumerate((-0.01, 0.0, 0.01)):
            rows.append({"axis:a": side, "axis:b": side, "acc": acc + jitter,
                         "mse": mse + 0.05 * jitter * (s - 1)})
    base = fx.baselines(pd.DataFrame(rows), AXES, ("mse", "acc"))
    assert base["acc"]["separation"] > base["mse"]["separation"]
    assert fx.ranking_metric(base) == "acc"
    empty = {"acc": {"gap": math.nan, "separation": math.nan, "relative_gap": math.nan}}
    assert fx.ranking_metric(empty) is None


def test_missing_values_give_nan_effects_and_are_counted():
    runs = screening_frame({(F, F): 1.0, (W, F): 0.6, (F, W): 0.9, (W, W): 0.2})
    runs.loc[(runs["axis:a"] == W) & (runs["axis:b"] == F), "y"] = np.nan
    table = fx.screening_effects(runs, AXES, METRIC, resamples=50)
    fix_a = table[(table["design"] == "screening-fix") & (table["axis"] == "a")].iloc[0]
    assert math.isnan(fix_a["effect"]) and math.isnan(fix_a["ci_low"])
    assert fix_a["n_missing"] == 4 and fix_a["n_runs"] == 4


def test_causes_rank_by_share_and_skip_nothing():
    runs = screening_frame({(F, F): 1.0, (W, F): 0.6, (F, W): 0.9, (W, W): 0.2})
    base = fx.baselines(runs, AXES, METRIC)
    screen = fx.screening_effects(runs, AXES, METRIC, resamples=50)
    factors = {f"axis:{a.name}": {F: a.failing, W: a.working} for a in AXES}
    fact = fx.factorial_effects(runs, factors, {c: F for c in factors}, METRIC,
                                resamples=50)
    table = fx.add_ranks(fx.add_shares(pd.concat([screen, fact]), base, AXES))
    causes = fx.ablation_causes(table, "y", ["a"])
    assert [c["axis"] for c in causes] == ["a", "b"]
    assert [c["design"] for c in causes] == ["factorial", "screening-fix"]
    assert set(causes[0]) >= {"axis", "from", "to", "metric", "effect", "ci", "rank"}
    assert causes[0]["from"] == {"lr": 0.001} and causes[0]["to"] == {"lr": 0.01}
    assert causes[0]["ci"][0] <= causes[0]["effect"] <= causes[0]["ci"][1]
    assert [c["rank"] for c in causes] == [1, 2]


def test_docstring_examples_run():
    result = doctest.testmod(fx)
    assert result.attempted > 0 and result.failed == 0
