"""Time one training step of the ``authors`` variant against its matmul floor.

The step is ``Trainer.train_step`` on a 784-256 block, batch 64, random [0, 1]
data, with the variant's real objective (block 0 active, as in the first
stage of its sequential schedule). The floor is the five matrix products the
step cannot avoid, as bare ``torch.addmm`` / ``torch.mm`` calls of the same
shapes:

- forward: ``E(x0)`` (64x784 @ 784x256), ``D(h0)`` (64x256 @ 256x784) and
  ``E(x1)`` (64x784 @ 784x256);
- weight gradients: encoder ``(256x64) @ (64x784)`` and decoder
  ``(784x64) @ (64x256)``.

Both are timed in one process on one thread, interleaved, and compared by
their medians. The last line printed is ``ratio: X.XX`` (step / floor).

Usage::

    python benchmarks/train_step.py            # 400 repetitions
    python benchmarks/train_step.py --quick    # 20 repetitions, a smoke test
    python benchmarks/train_step.py --profile  # also where the step's time goes
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from tourbillon.config import resolve
from tourbillon.data import Dataset
from tourbillon.train import Trainer

B, D, H = 64, 784, 256


def random_dataset(n: int = 256) -> Dataset:
    """Random [0, 1] pixels and labels in the MNIST layout."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, D, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return Dataset(name="mnist-sample", x_train=x, y_train=y, x_test=x[:64],
                   y_test=y[:64], image_shape=(1, 28, 28), classes=10)


def make_step() -> Callable[[], None]:
    """One ``Trainer.train_step`` of the authors' variant on a fixed batch."""
    config = resolve("authors")
    assert config.sizes == (D, H) and config.batch_size == B
    trainer = Trainer(config, data=random_dataset(), probe_epochs=0)
    x, y = trainer.data.x_train[:B], trainer.data.y_train[:B]

    def step() -> None:
        trainer.train_step(x, y, [0])

    return step


def make_floor() -> Callable[[], None]:
    """The step's five matrix products, nothing else."""
    g = torch.Generator().manual_seed(1)
    A, a = torch.randn(H, D, generator=g), torch.randn(H, generator=g)
    W, w = torch.randn(D, H, generator=g), torch.randn(D, generator=g)
    x0 = torch.rand(B, D, generator=g)
    x1, h0 = torch.rand(B, D, generator=g), torch.rand(B, H, generator=g)
    delta_h, delta_x = torch.randn(B, H, generator=g), torch.randn(B, D, generator=g)

    def floor() -> None:
        torch.addmm(a, x0, A.t())  # E(x0): (B, H)
        torch.addmm(w, h0, W.t())  # D(h0): (B, D)
        torch.addmm(a, x1, A.t())  # E(x1): (B, H)
        torch.mm(delta_h.t(), x0)  # encoder weight gradient: (H, D)
        torch.mm(delta_x.t(), h0)  # decoder weight gradient: (D, H)

    return floor


def time_interleaved(fns: dict[str, Callable[[], None]], reps: int,
                     warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each function, alternating calls rep by rep."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def profile_step(step: Callable[[], None], reps: int = 50) -> None:
    """Print the operators that take the step's time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 repetitions")
    parser.add_argument("--reps", type=int, default=400)
    parser.add_argument("--profile", action="store_true",
                        help="print a torch.profiler table of the step")
    args = parser.parse_args()
    reps, warmup = (20, 3) if args.quick else (args.reps, 20)

    torch.set_num_threads(1)
    torch.manual_seed(0)
    step, floor = make_step(), make_floor()
    if args.profile:
        profile_step(step)
    times = time_interleaved({"step": step, "floor": floor}, reps, warmup)
    step_s, floor_s = (statistics.median(times[k]) for k in ("step", "floor"))
    print(f"repetitions: {reps}, threads: {torch.get_num_threads()}")
    print(f"step:  {step_s * 1e3:.3f} ms (median Trainer.train_step, authors, "
          f"{D}-{H}, batch {B})")
    print(f"floor: {floor_s * 1e3:.3f} ms (median of its 5 bare matmuls)")
    print(f"ratio: {step_s / floor_s:.2f}")


if __name__ == "__main__":
    main()
