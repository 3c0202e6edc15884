"""Train and evaluate a user's own protocol model with the original recipe.

A factory ``package.module:callable`` returns an ``nn.Module`` whose forward
follows the original output protocol: for each block ``k``, ``enc_target_k``,
``enc_output_k``, ``dec_target_k``, ``dec_output_k`` (or the unsuffixed keys
for a single block), and ``output`` (class logits) when it classifies. It is
trained as the original README trains its model: the sum of the MSE of every
output/target pair plus cross-entropy on ``output``, one backward pass, Adam
at lr 1e-3, batch 64.

Evaluation finds each block's ``encoder`` and ``decoder`` (see
:func:`diagnostics.placement.locate_blocks`) and reads, from the first call
of each in a forward pass, the block's input, its first-pass code and its
first reconstruction. The code passed up by block ``k`` is taken to be the
input of block ``k + 1``; for the top block, whose successor is the user's
own head, the first-pass code stands in for it.
"""

from __future__ import annotations

import importlib
import logging
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tourbillon.config import Config, resolve
from tourbillon.errors import ConfigError
from tourbillon.probe import accuracy
from tourbillon.train import Trainer

from .placement import BlockSite, locate_blocks

log = logging.getLogger(__name__)

PROTOCOL = ("enc_target", "enc_output", "dec_target", "dec_output")
USER_MODEL = "user_model.json"  # in a run directory: which factory built the model


def load_factory(spec: str) -> Callable[[], nn.Module]:
    """The callable named by ``package.module:attribute``."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"--model expects package.module:factory, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(
            f"cannot import {module_name!r} for --model: {error}") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ConfigError(f"{module_name} has no callable {attribute!r}")
    return factory


def recipe_config(name: str, **overrides) -> Config:
    """The original README's recipe (the ``reference`` recipe) under ``name``."""
    return resolve("reference", {"name": name, **overrides})


def protocol_suffixes(out: dict[str, Tensor]) -> list[str]:
    """Key suffixes of the blocks in a protocol output: ``["_0", "_1"]`` or ``[""]``."""
    if all(k in out for k in PROTOCOL):
        return [""]
    suffixes = []
    while all(f"{k}_{len(suffixes)}" in out for k in PROTOCOL):
        suffixes.append(f"_{len(suffixes)}")
    if not suffixes:
        raise ConfigError(
            f"the model's output has keys {sorted(out)}; the protocol needs "
            f"{', '.join(PROTOCOL)} (with _0, _1, ... for stacks) and 'output'")
    return suffixes


def recipe_loss(out: dict[str, Tensor], labels: Tensor | None) -> Tensor:
    """Sum of the MSE of every protocol pair, plus cross-entropy on ``output``."""
    loss = sum(F.mse_loss(out[f"{half}_output{s}"], out[f"{half}_target{s}"])
               for s in protocol_suffixes(out) for half in ("enc", "dec"))
    if labels is not None and "output" in out:
        loss = loss + F.cross_entropy(out["output"], labels)
    return loss


@contextmanager
def first_calls(sites: list[BlockSite]) -> Iterator[dict[tuple[int, str], tuple]]:
    """Capture (input, output) of the first call of every block half in a forward."""
    seen: dict[tuple[int, str], tuple] = {}
    handles = []

    def hook_for(key):
        def hook(module, inputs, output):
            seen.setdefault(key, (inputs[0].detach(), output.detach()))
        return hook

    try:
        for site in sites:
            for half, module in site.halves.items():
                hook = hook_for((site.index, half))
                handles.append(module.register_forward_hook(hook))
        yield seen
    finally:
        for handle in handles:
            handle.remove()


class ProtocolTrainer(Trainer):
    """The trainer for a user's protocol model built by ``factory``.

    Args:
        factory: returns the model (no required arguments).
        config: the recipe (see :func:`recipe_config`); its architecture
            fields are not used.
        encoder_name, decoder_name: child names of each block's halves.
        **options: as for :class:`tourbillon.train.Trainer`.
    """

    def __init__(self, factory: Callable[[], nn.Module], config: Config, *args,
                 encoder_name: str = "encoder", decoder_name: str = "decoder",
                 **options) -> None:
        self.factory = factory
        self.names = (encoder_name, decoder_name)
        super().__init__(config, *args, **options)

    def build_model(self) -> nn.Module:
        model = self.factory()
        if not isinstance(model, nn.Module):
            raise ConfigError(
                f"the factory returned {type(model).__name__}, not an nn.Module")
        self.sites, self.unplaced = locate_blocks(model, *self.names)
        return model

    def count_blocks(self) -> int:
        return len(self.sites)

    @property
    def has_head(self) -> bool:
        return False  # the model's own ``output`` is measured in ``evaluate``

    def objective(self, x: Tensor, y: Tensor, active: list[int]):
        out = self.model(x)
        return out, recipe_loss(out, y)

    def block_codes(self, x: Tensor) -> list[tuple[Tensor, Tensor, Tensor]]:
        with torch.no_grad(), first_calls(self.sites) as seen:
            self.model(x)
        result = []
        for k in range(self.num_blocks):
            if (k, "enc") not in seen or (k, "dec") not in seen:
                raise ConfigError(f"block {k}'s encoder or decoder was not called in a "
                                  "forward pass")
            code = seen[(k, "enc")][1]
            passed = seen[(k + 1, "enc")][0] if (k + 1, "enc") in seen else code
            result.append((code, passed, seen[(k, "dec")][1]))
        return result

    def evaluate(self, probes: bool = True) -> dict:
        metrics = super().evaluate(probes)
        x, y = self.data.x_test.to(self.device), self.data.y_test.to(self.device)
        self.model.eval()
        with torch.no_grad():
            out = self.model(x)
        self.model.train()
        if "output" in out and out["output"].dim() == 2:
            metrics["test_accuracy"] = accuracy(lambda _: out["output"], x, y)
        return metrics
