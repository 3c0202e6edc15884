"""docs/recording.md: its Python example runs and its claims match the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from diagnostics import schedule
from diagnostics.records import load_records

DOC = Path(__file__).resolve().parent.parent / "docs" / "recording.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_the_python_example_runs(tmp_path, monkeypatch, capsys):
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match="recorder: "):  # e.g. the head
        exec(compile(blocks[0], str(DOC), "exec"), {"__name__": "example"})
    printed = float(capsys.readouterr().out.strip())
    frame = load_records(tmp_path / "runs" / "my-model")
    assert sorted(frame.step.unique()) == [1, 3, 5, 7]  # cheap_every=2, 8 steps
    last = frame[frame.tag == "block0/true_error/c0"].sort_values("step").value
    assert printed == pytest.approx(last.iloc[-1])
    assert "block1/batch_probe/code" in set(frame.tag)


def test_the_documented_default_schedule_is_the_code_s():
    text = DOC.read_text()
    cheap, expensive = schedule.DEFAULT_CHEAP_EVERY, schedule.DEFAULT_EXPENSIVE_EVERY
    assert f"every {cheap} steps" in text
    assert f"every {expensive} steps" in text
