"""Linear-probe accuracy at CONTEXT.md's 30 epochs against the default 100.

On the bundled sample, for the features the project's figures probe: raw
pixels, an untrained 784-256 tanh encoder (``probe-random``) and the code of
``authors`` after its 10 epochs. Prints one row per feature set and seed,
with the change from the short probe to the default one.

Usage::

    python benchmarks/probe_strength.py            # seed 0 (about 40 s)
    python benchmarks/probe_strength.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse

import torch

from tourbillon.config import resolve
from tourbillon.probe import PROBE_EPOCHS, probe_accuracy
from tourbillon.train import Trainer

SHORT = 30  # the probe behind CONTEXT.md's table


def features(variant: str, seed: int) -> tuple[torch.Tensor, ...]:
    """Train codes, train labels, test codes and test labels of the code
    ``variant`` passes to its head, after training."""
    trainer = Trainer(resolve(variant, {"seed": seed}), probe_epochs=0)
    trainer.fit()
    data = trainer.data
    return (trainer._features(data.x_train)[-1][1].flatten(1), data.y_train,
            trainer._features(data.x_test)[-1][1].flatten(1), data.y_test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    torch.set_num_threads(1)

    print(f"{'features':<22}{'seed':>5}{SHORT:>6} ep{PROBE_EPOCHS:>6} ep{'change':>9}")
    for seed in args.seeds:
        for variant in ("probe-pixels", "probe-random", "authors"):
            train_x, y_train, test_x, y_test = features(variant, seed)
            short, full = (probe_accuracy(train_x, y_train, test_x, y_test,
                                          epochs=epochs, seed=seed)
                           for epochs in (SHORT, PROBE_EPOCHS))
            print(f"{variant:<22}{seed:>5}{short:>9.3f}{full:>9.3f}"
                  f"{full - short:>+9.3f}")


if __name__ == "__main__":
    main()
