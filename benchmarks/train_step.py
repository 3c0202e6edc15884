"""Time one training step of the ``authors`` variant against its matmul floor.

The step is ``Trainer.train_step`` on a 784-256 block, batch 64, random [0, 1]
data, with the variant's real objective (block 0 active, as in the first
stage of its sequential schedule) and its default update, ``explicit``. The
floor is the five matrix products the step cannot avoid, as bare
``torch.addmm`` / ``torch.mm`` calls of the same shapes:

- forward: ``E(x0)`` (64x784 @ 784x256), ``D(h0)`` (64x256 @ 256x784) and
  ``E(x1)`` (64x784 @ 784x256);
- weight gradients: encoder ``(256x64) @ (64x784)`` and decoder
  ``(784x64) @ (64x256)``.

Three more functions place the step:

- the *bare step*, the same update written out by hand with no trainer,
  model, rules or optimizer: the three products of the forward under
  ``no_grad``, the delta rules' errors, each gradient product folded into its
  momentum buffer by one ``addmm`` and the parameter update;
- the *autograd step*, the least an autograd step of the update does: the
  forward by hand (no modules), the project's rule objectives, ``backward``
  and the authors' SGD;
- the trainer's step with ``update=autograd``.

Between them they show how much of the step's time is PyTorch's eager
execution at this size, how much autograd and how much the toolkit's
machinery (model, rules, trainer). Tests hold the bare and autograd steps to
the trainer's update.

All are timed in one process on one thread, interleaved, and compared by
their medians. The last line printed is ``ratio: X.XX`` (step / floor).

Usage::

    python benchmarks/train_step.py            # 400 repetitions
    python benchmarks/train_step.py --quick    # 20 repetitions, a smoke test
    python benchmarks/train_step.py --profile  # also where the step's time goes
    python benchmarks/train_step.py --batch 256  # other batch sizes
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

from tourbillon.config import resolve
from tourbillon.data import Dataset
from tourbillon.optim import make_optimizer
from tourbillon.rules import decoder_objective, encoder_objective
from tourbillon.train import Trainer

B, D, H = 64, 784, 256


def random_dataset(n: int = 256) -> Dataset:
    """Random [0, 1] pixels and labels in the MNIST layout."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, D, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return Dataset(name="mnist-sample", x_train=x, y_train=y, x_test=x[:64],
                   y_test=y[:64], image_shape=(1, 28, 28), classes=10)


def make_trainer(batch: int = B, update: str = "auto") -> Trainer:
    """A trainer of the authors' variant on random data."""
    config = resolve("authors", {"batch_size": batch, "update": update})
    assert config.sizes == (D, H)
    return Trainer(config, data=random_dataset(max(256, batch)), probe_epochs=0)


def make_step(trainer: Trainer) -> Callable[[], None]:
    """One ``Trainer.train_step`` of block 0 on the first batch."""
    batch = trainer.config.batch_size
    x, y = trainer.data.x_train[:batch], trainer.data.y_train[:batch]

    def step() -> None:
        trainer.train_step(x, y, [0])

    return step


def make_floor(batch: int = B) -> Callable[[], None]:
    """The step's five matrix products, nothing else."""
    g = torch.Generator().manual_seed(1)
    A, a = torch.randn(H, D, generator=g), torch.randn(H, generator=g)
    W, w = torch.randn(D, H, generator=g), torch.randn(D, generator=g)
    x0 = torch.rand(batch, D, generator=g)
    x1, h0 = torch.rand(batch, D, generator=g), torch.rand(batch, H, generator=g)
    delta_h = torch.randn(batch, H, generator=g)
    delta_x = torch.randn(batch, D, generator=g)

    def floor() -> None:
        torch.addmm(a, x0, A.t())  # E(x0): (B, H)
        torch.addmm(w, h0, W.t())  # D(h0): (B, D)
        torch.addmm(a, x1, A.t())  # E(x1): (B, H)
        torch.mm(delta_h.t(), x0)  # encoder weight gradient: (H, D)
        torch.mm(delta_x.t(), h0)  # decoder weight gradient: (D, H)

    return floor


def _copied_params(trainer: Trainer
                   ) -> tuple[list[torch.Tensor], torch.optim.Optimizer]:
    """Copies of block 0's encoder (A, a) and decoder (W, w) weights of
    ``trainer``, with an optimizer of its config over them."""
    block = trainer.model.blocks[0]
    layers = (block.encoder[0], block.decoder[0])
    params = [t.detach().clone().requires_grad_()
              for layer in layers for t in (layer.weight, layer.bias)]
    return params, make_optimizer(params, trainer.config)


def make_bare_step(trainer: Trainer, x0: torch.Tensor
                   ) -> tuple[Callable[[], None], list[torch.Tensor]]:
    """The authors' update of block 0 by hand, on copies of ``trainer``'s
    weights (encoder A, a; decoder W, w): no model, rules, optimizer or
    autograd.

    Returns the step and its parameters ``[A, a, W, w]``.
    """
    params, optimizer = _copied_params(trainer)
    (group,) = optimizer.param_groups
    lr0, decay, beta = group["lr0"], group["decay"], group["momentum"]
    A, a, W, w = (p.detach() for p in params)
    mA, ma, mW, mw = (torch.zeros_like(p) for p in params)
    ones = torch.ones(x0.shape[0])
    steps = 0

    def bare() -> None:
        nonlocal steps
        with torch.no_grad():
            h0 = torch.tanh(F.linear(x0, A, a))
            x1 = F.linear(h0, W, w)  # identity decoder
            h1 = torch.tanh(F.linear(x1, A, a))
            alpha = (1 - beta) / x0.shape[0]  # summed errors: 1/B
            lr = lr0 / (1 + decay * steps)
            steps += 1
            delta_h = (h1 - h0).mul_(1 - h0 * h0)  # encoder: authors' rule
            torch.addmm(mA, delta_h.t(), x0, beta=beta, alpha=alpha, out=mA)
            A.sub_(mA, alpha=lr)
            torch.addmv(ma, delta_h.t(), ones, beta=beta, alpha=alpha, out=ma)
            a.sub_(ma, alpha=lr)
            delta_x = x1 - x0  # decoder: data target
            torch.addmm(mW, delta_x.t(), h0, beta=beta, alpha=alpha, out=mW)
            W.sub_(mW, alpha=lr)
            torch.addmv(mw, delta_x.t(), ones, beta=beta, alpha=alpha, out=mw)
            w.sub_(mw, alpha=lr)

    return bare, params


def make_autograd_step(trainer: Trainer, x0: torch.Tensor
                       ) -> tuple[Callable[[], None], list[torch.Tensor]]:
    """The least an autograd step of the same update does, on copies of
    ``trainer``'s weights: the forward by hand (no modules; the second
    encoder pass, whose graph the rule never uses, without one), the
    project's rule objectives, ``backward`` and the optimizer.

    Returns the step and its parameters ``[A, a, W, w]``.
    """
    params, optimizer = _copied_params(trainer)
    A, a, W, w = params
    config = trainer.config

    def autograd() -> None:
        h0 = torch.tanh(F.linear(x0, A, a))
        x1 = F.linear(h0.detach(), W, w)  # identity decoder
        with torch.no_grad():
            h1 = torch.tanh(F.linear(x1, A, a))
        out = {"enc_output": h1, "enc_target": h0.detach(), "enc_presyn": h0,
               "dec_output": x1, "dec_target": x0}
        loss = encoder_objective(out, config) + decoder_objective(out, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return autograd, params


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
    parser.add_argument("--batch", type=int, default=B,
                        help=f"batch size (default {B}, the authors')")
    parser.add_argument("--profile", action="store_true",
                        help="print a torch.profiler table of the step")
    args = parser.parse_args()
    reps, warmup = (20, 3) if args.quick else (args.reps, 20)

    torch.set_num_threads(1)
    torch.manual_seed(0)
    trainer = make_trainer(args.batch)
    assert trainer.explicit, "authors' default update should be explicit"
    x0 = trainer.data.x_train[:args.batch]
    bare, _ = make_bare_step(trainer, x0)
    autograd, _ = make_autograd_step(trainer, x0)
    step, floor = make_step(trainer), make_floor(args.batch)
    step_autograd = make_step(make_trainer(args.batch, update="autograd"))
    if args.profile:
        profile_step(step)
    fns = {"step": step, "floor": floor, "bare": bare, "autograd": autograd,
           "step_autograd": step_autograd}
    medians = {name: statistics.median(t)
               for name, t in time_interleaved(fns, reps, warmup).items()}
    step_s, floor_s = medians["step"], medians["floor"]
    print(f"repetitions: {reps}, threads: {torch.get_num_threads()}")
    print(f"step:     {step_s * 1e3:.3f} ms (median Trainer.train_step, authors, "
          f"{D}-{H}, batch {args.batch}, update=explicit)")
    for name, label, what in (
            ("step_autograd", "step with update=autograd",
             "the trainer through autograd"),
            ("autograd", "autograd", "the same update through autograd, no model "
             "or trainer"),
            ("bare", "bare", "the same update by hand")):
        print(f"{label}: {medians[name] * 1e3:.3f} ms ({what}, "
              f"{medians[name] / floor_s:.2f}x the floor)")
    print(f"floor:    {floor_s * 1e3:.3f} ms (median of its 5 bare matmuls)")
    print(f"ratio: {step_s / floor_s:.2f}")


if __name__ == "__main__":
    main()
