"""The HTML report built from small real runs and synthetic ablation results.

Two variants (``reference`` failing, ``authors`` working) are trained for two
epochs on 256 digits, two seeds each. Until the recorder writes
``records.jsonl``, the fixture writes one in the recorder's format, and reads
it with a tiny reader unless ``diagnostics.records`` exists.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from diagnostics import tags
from diagnostics.report import build_report, environment, finding_key
from diagnostics.report.sections import SECTIONS
from tourbillon.config import resolve
from tourbillon.data import load_dataset
from tourbillon.train import Trainer

CHROMIUM = Path("/usr/bin/chromium")
SEEDS = (0, 1)
# Integrated gradients with captum's 64 Gauss-Legendre points on these small
# tanh models: |convergence delta| <= 1e-6 + 1% of |F(x) - F(baseline)|.
DELTA_ABSOLUTE, DELTA_RELATIVE = 1e-6, 1e-2


# -- records: writing the recorder's format and reading it back ----------------


def write_records(run_dir: Path, config, steps: int, stalls: bool) -> None:
    """A ``records.jsonl`` in the recorder's format, with seeded values."""
    rng = np.random.default_rng(7)
    blocks = len(config.sizes) - 1
    lines = []
    for step in range(1, steps + 1):
        scalars = {}
        for k in range(blocks):
            for half in tags.HALVES:
                for i in range(config.circulations):
                    spread = 0.2 * (0.05 ** (step / steps) if stalls and i == 1 else 1)
                    scalars[tags.activation(k, half, i, "batch_std")] = (
                        spread * (1 + 0.05 * rng.standard_normal()))
                    scalars[tags.activation(k, half, i, "mean")] = float(rng.random())
                scalars[tags.drift(k, half)] = float(rng.random() / step)
                scalars[tags.descent_alignment(k, half)] = float(rng.uniform(-1, 1))
            for i in range(config.circulations):
                scalars[tags.true_error(k, i)] = 0.2 / step + 0.01 * i
            scalars[tags.weight_alignment(k)] = 0.01 * step
        scalars[tags.train_loss()] = 1.0 / step  # a tag outside any block
        lines.append({"step": step, "epoch": 1 + (step - 1) * 2 // steps,
                      "scalars": scalars})
    lines.append({"step": steps, "event": "not_measured", "what": "block0/settle",
                  "why": "one circulation only"} if not stalls else
                 {"step": 3, "event": "nonfinite", "tag": tags.drift(0, "enc")})
    text = "".join(json.dumps(line) + "\n" for line in lines)
    (run_dir / "records.jsonl").write_text(text)


def tiny_load_records(run_dir: Path) -> pd.DataFrame:
    """Long-format records (step, epoch, tag, value, block, half, circulation,
    quantity) from ``records.jsonl``; event lines are skipped."""
    rows = []
    for line in (Path(run_dir) / "records.jsonl").read_text().splitlines():
        entry = json.loads(line)
        for tag, value in entry.get("scalars", {}).items():
            rows.append({"step": entry["step"], "epoch": entry.get("epoch"),
                         "tag": tag, "value": value, **tags.parse(tag)})
    return pd.DataFrame(rows)


def records_loader():
    try:
        from diagnostics.records import load_records
    except ImportError:
        return tiny_load_records
    return load_records


# -- fixtures ------------------------------------------------------------------


@pytest.fixture(scope="module")
def data():
    return load_dataset("mnist-sample", max_train=256, max_test=128)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data) -> pd.DataFrame:
    """Four trained runs: two cells (failing, working) x two seeds."""
    root = tmp_path_factory.mktemp("runs")
    rows = []
    for cell, variant in (("failing", "reference"), ("working", "authors")):
        for seed in SEEDS:
            config = resolve(variant, {"epochs": 2, "head_epochs": 2, "seed": seed})
            run_dir = root / f"{cell}-{seed}"
            trainer = Trainer(config, data, out_dir=run_dir, probe_epochs=2)
            final = trainer.fit()[-1]
            if not (run_dir / "records.jsonl").exists():
                write_records(run_dir, config, trainer.step, stalls=cell == "failing")
            rows.append({"cell": cell, "seed": seed, "run_dir": str(run_dir),
                         "lr": config.lr, "test_recon_mse": final["test_recon_mse"],
                         "test_accuracy": final["test_accuracy"],
                         "probe_accuracy": final["probe_accuracy"],
                         "diverged": final["diverged"]})
    return pd.DataFrame(rows)


def synthetic_findings() -> list[dict]:
    return [
        {"rule": "collapsed_code", "run": "failing", "block": 0, "half": "enc",
         "circulation": 1, "step": 3,
         "evidence": {"batch_std": 0.011, "threshold": 0.02},
         "title": "Codes stop depending on the input", "severity": "high",
         "message": "The circulation-1 code of block 0 varies little across "
                    "the batch from step 3 on."},
        {"rule": "drift_grows", "run": "failing", "block": 1, "half": None,
         "circulation": None, "step": 2, "evidence": {"slope": 0.5},
         "tags": [tags.drift(1, "enc"), tags.drift(1, "dec")],
         "message": "The rule errors of block 1 grow."},
        {"rule": "nonfinite", "run": "elsewhere", "block": 0, "half": "dec",
         "circulation": 0, "step": 9, "evidence": {"value": math.inf},
         "message": "A value became infinite in a run outside this report."},
    ]


AXES = [  # axis, failing values, working values, effect on recon MSE, half-width
    ("encoder_rule", {"encoder_rule": "autograd"}, {"encoder_rule": "authors"},
     -0.10, 0.02),
    ("optimizer", {"optimizer": "adam", "lr": 0.001}, {"optimizer": "sgd", "lr": 0.01},
     -0.04, 0.03),
    ("head", {"head": "joint"}, {"head": "after"}, 0.005, 0.01),
]


def synthetic_ablation() -> tuple[pd.DataFrame, list[dict]]:
    """Effects and causes in the ablation's format (see ablation/effects.py):
    two designs, main effects and one interaction, one NaN effect."""
    rows = []
    for design in ("screening-fix", "factorial"):
        for metric, scale in (("test_recon_mse", 1.0), ("probe_accuracy", -3.0)):
            for rank, (axis, a, b, e, w) in enumerate(AXES, start=1):
                e, w = e * scale, w * abs(scale)
                nan = design == "factorial" and axis == "head"
                rows.append({"design": design, "kind": "main", "axis": axis,
                             "from": json.dumps(a), "to": json.dumps(b),
                             "metric": metric, "effect": math.nan if nan else e,
                             "ci_low": math.nan if nan else e - w,
                             "ci_high": math.nan if nan else e + w,
                             "share_of_gap": math.nan if nan else e / (0.14 * scale),
                             "rank": pd.NA if nan else rank, "n_runs": 4,
                             "n_missing": 4 if nan else 0})
            rows.append({"design": design, "kind": "interaction",
                         "axis": "encoder_rule:optimizer", "from": "{}", "to": "{}",
                         "metric": metric, "effect": 0.01, "ci_low": -0.01,
                         "ci_high": 0.03, "share_of_gap": math.nan, "rank": 1,
                         "n_runs": 8, "n_missing": 0})
    effects = pd.DataFrame(rows).astype({"rank": "Int64"})
    causes = []
    for rank, (axis, a, b, e, w) in enumerate(AXES, start=1):
        measured = axis != "head"
        causes.append({"axis": axis, "from": a, "to": b, "metric": "test_recon_mse",
                       "effect": e if measured else None,
                       "ci": [e - w, e + w] if measured else [None, None],
                       "rank": rank, "design": "factorial",
                       "share_of_gap": e / 0.14 if measured else None})
    return effects, causes


VERDICT = {"verdict": "stalls",
           "reasons": ["test_recon_mse 0.23 is no better than the mean image's "
                       "0.067", "probe accuracy 12% is below raw pixels' 90.9%"]}


@pytest.fixture(scope="module")
def report(tmp_path_factory, runs, data) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    effects, causes = synthetic_ablation()
    findings = synthetic_findings()
    failing, working = (Path(runs.loc[i, "run_dir"]) for i in (0, 2))
    config_diff = resolve("reference").diff(resolve("authors"))
    return build_report(
        out, verdict=VERDICT, causes=causes, effects=effects, runs=runs,
        findings=findings,
        removed_by={finding_key(findings[0]): ["encoder_rule"],
                    ("drift_grows", 1, None, None): []},
        run_dirs={"failing": failing, "working": working}, config_diff=config_diff,
        environment=environment(["tourbillon", "diagnose", "--seed", "0"], SEEDS),
        data=data, records_loader=records_loader())


@pytest.fixture(scope="module")
def page(report) -> str:
    return report.read_text()


# -- HTML helpers ----------------------------------------------------------------


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src") or "")
        for name in ("src", "href", "data", "poster"):
            if attrs.get(name):
                self.links.append(attrs[name])


def parse(text: str) -> _Links:
    parser = _Links()
    parser.feed(text)
    return parser


def decode_png(uri: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix), uri[:40]
    raw = base64.b64decode(uri[len(prefix):], validate=True)
    assert raw.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(raw))
    image.load()
    return image


def not_measured_rows(text: str) -> list[str]:
    rows = re.findall(r'<td class="not-measured">not measured: (.*?)</td>', text)
    return [html.unescape(r) for r in rows]


# -- the full report -------------------------------------------------------------


def test_report_is_self_contained(page, report):
    links = parse(page)
    assert not any(re.match(r"\s*(https?:)?//", v, re.I) for v in links.links)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", page)
    assert "script" not in links.tags and "link" not in links.tags
    assert len(links.images) >= 10
    for uri in links.images:
        image = decode_png(uri)
        assert image.width > 20 and image.height > 20
    assert report.stat().st_size < 3_000_000


def test_every_section_heading_is_present(page):
    for anchor, title in SECTIONS.items():
        assert f'<h2 id="{anchor}">{html.escape(title)}</h2>' in page


def test_verdict_causes_and_environment(page):
    assert '<span class="verdict stalls">stalls</span>' in page
    assert "probe accuracy 12% is below raw pixels" in page
    # Ranked causes with effect and interval, rank 1 first.
    section = page[page.index('id="causes"'):page.index('id="findings"')]
    first = section.index('<td>1</td>\n<td class="axis">encoder_rule</td>')
    assert first < section.index('<td>2</td>\n<td class="axis">optimizer</td>')
    assert "<td>[-0.12, -0.08]</td>" in section  # rank 1's interval
    assert "<td>optimizer=adam, lr=0.001</td>" in section  # from, as fields
    assert "<td>not measured</td>\n<td>[None, None]</td>" in section
    assert "designs: screening-fix, factorial" in section
    assert "4 interaction effect(s) are in the effects table" in section
    assert section.count("<img") == 2  # one forest per metric
    assert "2 effect(s) are NaN" in html.unescape(page)
    for key in ("torch", "captum", "tensorboard", "python", "platform", "seeds"):
        assert f"<th>{key}</th>" in page
    assert "tourbillon diagnose --seed 0" in page
    assert "<code>encoder_rule</code></td><td>autograd</td><td>authors" in page


def test_finding_cards(page):
    cards = re.findall(r'<div class="card".*?</div>', page, re.S)
    assert len(cards) == 3
    first, second, third = cards
    assert "Codes stop depending on the input" in first
    assert "<code>block0/enc/c1</code>" in first and "first step 3" in first
    assert "<img" in first and "<code>encoder_rule</code>" in first
    assert "<img" in second  # from the finding's own tags
    assert "No axis change in the ablation removed it." in second
    third = html.unescape(third)
    assert "not measured: nonfinite:elsewhere:block0/dec/c0: run 'elsewhere'" in third
    assert "block0/dec/c0: the ablation did not check this finding" in third


def test_records_events_are_listed(page):
    assert "<td>failing</td><td>nonfinite</td>" in page
    assert "<td>working</td><td>not_measured</td>" in page


def test_attributions_show_a_small_convergence_delta(page):
    section = page[page.index('id="attributions"'):page.index('id="config-diff"')]
    assert section.count("convergence delta</th>") == 2  # failing and working
    rows = re.findall(r"<tr><td>\d+</td><td>\d</td><td>\d</td>"
                      r"<td>([^<]+)</td><td>([^<]+)</td><td>([^<]+)</td></tr>", section)
    assert len(rows) == 8
    for change, total, delta in rows:
        change, total, delta = float(change), float(total), float(delta)
        assert abs(delta) <= DELTA_ABSOLUTE + DELTA_RELATIVE * abs(change)
        # The delta is the completeness gap (table entries have 4 digits).
        assert total - change == pytest.approx(delta, abs=1e-3 * abs(change) + 1e-7)


def test_findings_json_is_written_next_to_the_report(report):
    written = json.loads((report.parent / "findings.json").read_text())
    assert written["verdict"] == "stalls"
    assert [c["rank"] for c in written["causes"]] == [1, 2, 3]
    assert written["causes"][2]["ci"] == [None, None]
    assert written["findings"][2]["evidence"] == {"value": "inf"}
    for finding in written["findings"]:
        assert {"rule", "run", "block", "half", "circulation", "step", "evidence",
                "message"} <= set(finding)


def test_learning_curves_come_from_every_cell(page, runs):
    section = page[page.index('id="learning-curves"'):page.index('id="batch-spread"')]
    assert "4 ablation runs" in section
    assert section.count("<img") == 1
    # The per-cell summary: runs, then the seed mean of each final metric.
    for cell in ("failing", "working"):
        rows = [r for r in runs.to_dict("records") if r["cell"] == cell]
        means = [sum(r[m] for r in rows) / len(rows)
                 for m in ("test_recon_mse", "test_accuracy", "probe_accuracy")]
        cells = "".join(f"<td>{v:.4g}</td>" for v in means)
        assert f"<tr><td>{cell}</td><td>2</td>{cells}<td>0</td></tr>" in section


# -- missing inputs ----------------------------------------------------------------


def test_missing_inputs_are_shown_as_not_measured(tmp_path, runs):
    bare = tmp_path / "bare"
    bare.mkdir()
    failing = Path(runs.loc[0, "run_dir"])
    out = build_report(
        tmp_path / "report.html", verdict={"verdict": "learns", "reasons": []},
        causes=[], effects=None, runs=None, findings=None, removed_by=None,
        run_dirs={"failing": failing, "bare": bare}, config_diff=None,
        environment={}, data=None, records_loader=records_loader(),
        not_checked=[{"rule": "probe", "what": "block0", "why": "no labels"}])
    text = out.read_text()
    reasons = not_measured_rows(text)
    expected = [
        "no ablation was run", "no ablation effects to plot",
        "the detectors did not run", "no ablation runs",
        f"run 'bare' has no records.jsonl", "run 'bare' recorded no batch_std",
        "run 'failing': no data set was given", "run 'bare' has no checkpoint.pt",
        "no config diff was given", "no environment was given",
        "rule probe did not check block0: no labels",
    ]
    for phrase in expected:
        assert any(phrase in r for r in reasons), phrase
    assert f"{len(reasons)} item(s) not measured" in text
    for anchor in SECTIONS:
        assert f'<h2 id="{anchor}">' in text
    assert json.loads((tmp_path / "findings.json").read_text()) == {
        "verdict": "learns", "causes": [], "findings": []}


def test_bad_inputs_are_refused(tmp_path):
    common = dict(causes=None, effects=None, runs=None, removed_by=None,
                  run_dirs={}, config_diff=None, environment={}, data=None)
    with pytest.raises(ValueError, match="verdict must be one of"):
        build_report(tmp_path / "a.html", verdict={"verdict": "maybe"},
                     findings=None, **common)
    with pytest.raises(ValueError, match=r"finding 0 lacks \['message'\]"):
        finding = {k: v for k, v in synthetic_findings()[0].items() if k != "message"}
        build_report(tmp_path / "b.html", verdict=VERDICT, findings=[finding],
                     **common)


# -- rendered in a browser -----------------------------------------------------------

_COUNT_BROKEN = """<script>
window.addEventListener("load", function () {
  var images = Array.from(document.images);
  var broken = images.filter(function (i) {
    return !i.complete || i.naturalWidth == 0;
  });
  document.body.setAttribute("data-images", images.length);
  document.body.setAttribute("data-broken-images", broken.length);
});
</script>"""


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update",
               "--no-first-run", "--disable-sync", "--disable-quic",
               f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=90)


@pytest.mark.skipif(not CHROMIUM.exists(),
                    reason="/usr/bin/chromium is absent (CI installs it)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    # A screenshot that is not blank.
    shot = tmp_path / "report.png"
    result = chromium(f"--screenshot={shot}", "--window-size=1280,4000",
                      "--hide-scrollbars", report.as_uri(), profile=tmp_path / "p1")
    assert shot.exists(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (4000, 1280)
    assert pixels.std() > 10.0
    assert (pixels < 128).mean() > 0.01  # text and figures, not a white page

    # No broken image once loaded: a copy counts them on window load.
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", _COUNT_BROKEN + "</body>"))
    result = chromium("--run-all-compositor-stages-before-draw",
                      "--virtual-time-budget=5000", "--dump-dom", probe.as_uri(),
                      profile=tmp_path / "p2")
    counts = re.search(r'data-images="(\d+)" data-broken-images="(\d+)"',
                       result.stdout)
    assert counts, result.stderr[-2000:]
    assert int(counts[1]) == report.read_text().count("<img")
    assert int(counts[2]) == 0
