"""How long each stage of ``tourbillon diagnose`` takes, in one run.

Runs the default diagnosis (reference against authors on the bundled sample)
in a temporary directory and prints the seconds of each stage and the total;
the last line is the total against the 5-minute budget.

    python benchmarks/diagnose_stages.py [--seeds 0,1,2] [--workers N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from diagnostics.diagnose import DiagnoseOptions, Subject, diagnose
from tourbillon.config import resolve

BUDGET_S = 300.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    seeds = tuple(int(s) for s in args.seeds.split(","))
    with tempfile.TemporaryDirectory() as out:
        options = DiagnoseOptions(epochs=args.epochs, seeds=seeds, workers=args.workers,
                                  out=Path(out))
        started = time.perf_counter()
        result = diagnose(Subject("failing", resolve("reference")),
                          Subject("working", resolve("authors")), options)
        total = time.perf_counter() - started
    for stage, seconds in result.timings.items():
        print(f"{stage:<8}{seconds:8.1f} s")
    runs = len(result.ablation.runs)
    print(f"verdict: {result.verdict['verdict']}, {runs} ablation runs")
    print(f"total: {total:.1f} s of {BUDGET_S:.0f} s "
          f"({total / BUDGET_S:.2f} of budget)")


if __name__ == "__main__":
    main()
