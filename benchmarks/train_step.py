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

More steps place the figure. A ladder climbs from the *bare update*, the
same update written out by hand with no trainer, model, rules or optimizer
(the three products of the forward, the delta rules' errors, each gradient
product folded into its momentum buffer by one ``addmm`` and the parameter
update), to the trainer's step, adding one piece of the toolkit per rung:

1. the model's forward in place of the hand-written one;
2. the rules' products (``rule_gradients``: errors, slopes and objectives) in
   place of the hand-written errors;
3. the optimizer's ``step_products`` in place of the hand-written update;
4. the trainer around them (``Trainer.train_step``).

Two autograd steps show what the explicit update saves: the least an
autograd step of the update does (the forward by hand, no modules; the
project's rule objectives; ``backward``; the authors' SGD), and the trainer
with ``update=autograd``. Tests hold every step to the trainer's update.

All are timed in one process on one thread, interleaved in an order shuffled
every repetition (a fixed order made the step timed right after the floor up
to 0.07x of the floor slower, whichever step it was), and compared by their
medians. The last line printed is ``ratio: X.XX`` (step / floor).

Usage::

    python benchmarks/train_step.py            # 400 repetitions
    python benchmarks/train_step.py --quick    # 20 repetitions, a smoke test
    python benchmarks/train_step.py --profile  # also where the step's time goes
    python benchmarks/train_step.py --batch 256  # other batch sizes
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

from tourbillon.config import resolve
from tourbillon.data import Dataset
from tourbillon.optim import make_optimizer
from tourbillon.rules import (LayerGradient, decoder_objective, encoder_objective,
                              rule_gradients)
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


def _copied_params(trainer: Trainer) -> list[torch.Tensor]:
    """Copies of block 0's encoder (A, a) and decoder (W, w) weights of
    ``trainer``, as leaves that require grad."""
    return [t.detach().clone().requires_grad_() for t in _block_params(trainer)]


def _block_params(trainer: Trainer) -> list[torch.Tensor]:
    """Block 0's encoder (A, a) and decoder (W, w) weights of ``trainer``."""
    block = trainer.model.blocks[0]
    return [t for layer in (block.encoder[0], block.decoder[0])
            for t in (layer.weight, layer.bias)]


class HandUpdate:
    """The authors' SGD written out, with ``trainer``'s settings, over
    ``params``, a block's encoder (A, a) and decoder (W, w) weights: each
    gradient product folded into a momentum buffer of its own by one
    ``addmm`` (a bias's as a row), then the parameter update."""

    def __init__(self, trainer: Trainer, params: list[torch.Tensor]) -> None:
        (group,) = trainer.optimizer.param_groups
        self.lr0, self.decay = group["lr0"], group["decay"]
        self.beta = group["momentum"]
        self.params = [p.detach() for p in params]
        self.buffers = [torch.zeros_like(p) for p in self.params]
        self.rows = [self.buffers[1].unsqueeze(0), self.buffers[3].unsqueeze(0)]
        self.ones = torch.ones(1, trainer.config.batch_size)
        self.steps = 0

    def __call__(self, delta_h: torch.Tensor, x0: torch.Tensor,
                 delta_x: torch.Tensor, h0: torch.Tensor) -> None:
        """Step from the errors at the pre-activations and the layers' inputs
        (encoder: ``delta_h``, ``x0``; decoder: ``delta_x``, ``h0``)."""
        A, a, W, w = self.params
        mA, ma, mW, mw = self.buffers
        ra, rw = self.rows
        beta, ones = self.beta, self.ones
        alpha = (1 - beta) / x0.shape[0]  # summed errors: 1/B
        lr = self.lr0 / (1 + self.decay * self.steps)
        self.steps += 1
        with torch.no_grad():
            torch.addmm(ra, ones, delta_h, beta=beta, alpha=alpha, out=ra)
            a.sub_(ma, alpha=lr)
            torch.addmm(mA, delta_h.t(), x0, beta=beta, alpha=alpha, out=mA)
            A.sub_(mA, alpha=lr)
            torch.addmm(rw, ones, delta_x, beta=beta, alpha=alpha, out=rw)
            w.sub_(mw, alpha=lr)
            torch.addmm(mW, delta_x.t(), h0, beta=beta, alpha=alpha, out=mW)
            W.sub_(mW, alpha=lr)


def make_bare_step(trainer: Trainer, x0: torch.Tensor
                   ) -> tuple[Callable[[], None], list[torch.Tensor]]:
    """The authors' update of block 0 by hand, on copies of ``trainer``'s
    weights (encoder A, a; decoder W, w): no model, rules, optimizer or
    autograd.

    Returns the step and its parameters ``[A, a, W, w]``.
    """
    params = _copied_params(trainer)
    update = HandUpdate(trainer, params)
    A, a, W, w = update.params

    def bare() -> None:
        with torch.no_grad():
            h0 = torch.tanh(F.linear(x0, A, a))
            x1 = F.linear(h0, W, w)  # identity decoder
            h1 = torch.tanh(F.linear(x1, A, a))
            delta_h = (h1 - h0).mul_(1 - h0 * h0)  # encoder: authors' rule
            delta_x = x1 - x0  # decoder: data target
        update(delta_h, x0, delta_x, h0)

    return bare, params


LADDER = ("+ the model's forward", "+ the rules' products",
          "+ the optimizer's step_products")


def make_rung(rung: int, batch: int = B
              ) -> tuple[Callable[[], None], list[torch.Tensor]]:
    """Rung ``rung`` (1 to 3) of the ladder from the bare update to the
    trainer's step, on a trainer of its own: the model's forward (1), then the
    rules' products (2), then the optimizer's ``step_products`` (3) in place
    of the hand-written piece; the rest stays by hand.

    Returns the step and its parameters ``[A, a, W, w]``.
    """
    trainer = make_trainer(batch)
    model, config, optimizer = trainer.model, trainer.config, trainer.optimizer
    x0 = trainer.data.x_train[:batch]
    params = _block_params(trainer)
    update = HandUpdate(trainer, params)

    def step() -> None:
        with torch.no_grad():
            out = model(x0, upto=0)
        if rung == 1:
            with torch.no_grad():
                h0, x1 = out["enc_target_0"], out["dec_output_0"]
                delta_h = (out["enc_output_0"] - h0).mul_(1 - h0 * h0)
                delta_x = x1 - x0
            update(delta_h, x0, delta_x, h0)
            return
        gradients: list[LayerGradient] = rule_gradients(model, out, config, [0])
        if rung == 2:
            encoder, decoder = gradients
            update(encoder.delta, encoder.presyn, decoder.delta, decoder.presyn)
        else:
            optimizer.step_products(gradients)

    return step, params


def make_autograd_step(trainer: Trainer, x0: torch.Tensor
                       ) -> tuple[Callable[[], None], list[torch.Tensor]]:
    """The least an autograd step of the same update does, on copies of
    ``trainer``'s weights: the forward by hand (no modules; the second
    encoder pass, whose graph the rule never uses, without one), the
    project's rule objectives, ``backward`` and the optimizer.

    Returns the step and its parameters ``[A, a, W, w]``.
    """
    params = _copied_params(trainer)
    optimizer = make_optimizer(params, trainer.config)
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
                     warmup: int, seed: int = 0) -> dict[str, list[float]]:
    """Seconds per call of each function: every repetition calls each once,
    in an order shuffled anew (seeded)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    order = list(fns)
    rng = random.Random(seed)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        rng.shuffle(order)
        for name in order:
            fn = fns[name]
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux), else its
    architecture: ratios differ from one CPU to another."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


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
    step, floor = make_step(trainer), make_floor(args.batch)
    if args.profile:
        profile_step(step)
    ladder = ["bare", *LADDER, "step"]
    fns = {"step": step, "floor": floor, "bare": make_bare_step(trainer, x0)[0]}
    fns.update({name: make_rung(i, args.batch)[0]
                for i, name in enumerate(LADDER, start=1)})
    fns["autograd"] = make_autograd_step(trainer, x0)[0]
    fns["step_autograd"] = make_step(make_trainer(args.batch, update="autograd"))
    medians = {name: statistics.median(t)
               for name, t in time_interleaved(fns, reps, warmup).items()}
    floor_s = medians["floor"]
    ratios = {name: t / floor_s for name, t in medians.items()}

    print(f"cpu: {cpu_name()}, torch {torch.__version__}")
    print(f"repetitions: {reps} (each in a shuffled order), "
          f"threads: {torch.get_num_threads()}")
    print(f"floor: {floor_s * 1e3:.3f} ms (median of its 5 bare matmuls)")
    print(f"step:  {medians['step'] * 1e3:.3f} ms (median Trainer.train_step, "
          f"authors, {D}-{H}, batch {args.batch}, update=explicit)")
    print("From the update by hand to the trainer's step, one piece at a time "
          "(x the floor):")
    labels = {"bare": "bare: the update by hand", "step": "= Trainer.train_step"}
    for before, name in zip([None, *ladder], ladder):
        added = "" if before is None else f"  ({ratios[name] - ratios[before]:+.2f})"
        print(f"  {labels.get(name, name):34} {ratios[name]:.2f}{added}")
    print("Through autograd (x the floor):")
    print(f"  {'the update, no model or trainer':34} {ratios['autograd']:.2f}")
    print(f"  {'the trainer with update=autograd':34} {ratios['step_autograd']:.2f}")
    print(f"ratio: {ratios['step']:.2f}")


if __name__ == "__main__":
    main()
