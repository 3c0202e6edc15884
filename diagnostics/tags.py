"""One tag scheme for every recorded quantity.

The recorder writes these tags to TensorBoard and to ``records.jsonl``; the
detectors and the report read them back by the same names. Words: a *block*
is one circular autoencoder, a *half* is its encoder (``enc``) or decoder
(``dec``), circulation ``c{i}`` is the i-th walk around the loop, a *code* is
the encoder's result and a *reconstruction* the decoder's.

=================================  ==============================================
tag                                meaning
=================================  ==============================================
block{k}/{half}/c{i}/mean          mean activation of that call
block{k}/{half}/c{i}/std           standard deviation over all elements
block{k}/{half}/c{i}/batch_std     mean over units of the std across the batch
                                   (does the result still depend on the input?)
block{k}/{half}/c{i}/saturated     fraction of units near a bound of a bounded
                                   activation
block{k}/{half}/c{i}/constant      fraction of units constant over the batch
block{k}/drift/{half}              rule error: mean squared (output - target)
block{k}/drift_rel/{half}          drift divided by the target's variance
block{k}/true_error/c{i}           MSE of circulation i's reconstruction against
                                   the block's actual input
block{k}/settle/c{i}               MSE between reconstructions of circulations
                                   i - 1 and i (does the loop settle?)
block{k}/grad_norm/{half}/{param}  gradient norm of a parameter
block{k}/update_ratio/{half}/{p}   ||update|| / ||weight|| of one optimizer step
block{k}/align/{half}              cosine between the local update and the
                                   negative gradient of the true reconstruction
                                   error (is the rule a descent direction?)
block{k}/align/weights             cosine between encoder weight A and decoder
                                   weight B transposed
block{k}/probe/{first,code}        linear-probe accuracy on the first-pass code
                                   and on the code passed up
block{k}/batch_probe/{first,code}  the same, from a probe fitted and scored on
                                   a held-out labelled batch during training
block{k}/{half}/c{i}/hist          histogram of that call's activations
block{k}/reconstructions           image grid: a fixed batch, then its
                                   reconstruction at every circulation
train/loss                         the training objective of the step
test/{recon_mse,accuracy,probe_accuracy}   the trainer's epoch metrics
=================================  ==============================================
"""

from __future__ import annotations

import re

HALVES = ("enc", "dec")
ACTIVATION_STATS = ("mean", "std", "batch_std", "saturated", "constant")


def activation(block: int, half: str, circulation: int, stat: str) -> str:
    return f"block{block}/{half}/c{circulation}/{stat}"


def drift(block: int, half: str, relative: bool = False) -> str:
    return f"block{block}/{'drift_rel' if relative else 'drift'}/{half}"


def true_error(block: int, circulation: int) -> str:
    return f"block{block}/true_error/c{circulation}"


def settle(block: int, circulation: int) -> str:
    return f"block{block}/settle/c{circulation}"


def grad_norm(block: int, half: str, param: str) -> str:
    return f"block{block}/grad_norm/{half}/{param}"


def update_ratio(block: int, half: str, param: str) -> str:
    return f"block{block}/update_ratio/{half}/{param}"


def descent_alignment(block: int, half: str) -> str:
    return f"block{block}/align/{half}"


def weight_alignment(block: int) -> str:
    return f"block{block}/align/weights"


def probe(block: int, which: str) -> str:
    return f"block{block}/probe/{which}"


def batch_probe(block: int, which: str) -> str:
    return f"block{block}/batch_probe/{which}"


def activation_histogram(block: int, half: str, circulation: int) -> str:
    return f"block{block}/{half}/c{circulation}/hist"


def reconstruction_grid(block: int) -> str:
    return f"block{block}/reconstructions"


def train_loss() -> str:
    return "train/loss"


def test_metric(name: str) -> str:
    """``test/{name}`` for the trainer's epoch metrics (``recon_mse``, ...)."""
    return f"test/{name}"


_PATTERN = re.compile(
    r"block(?P<block>\d+)/(?P<kind>[a-z_]+)(?:/(?P<rest>.*))?$"
)


def parse(tag: str) -> dict[str, object]:
    """Split a block tag into ``block``, ``half``, ``circulation``, ``quantity``.

    Missing parts are ``None``; a tag outside the ``block{k}/`` scheme gives
    ``{"quantity": tag}`` and ``None`` elsewhere.
    """
    match = _PATTERN.match(tag)
    result: dict[str, object] = {"block": None, "half": None, "circulation": None,
                                 "quantity": tag}
    if not match:
        return result
    result["block"] = int(match["block"])
    kind, parts = match["kind"], (match["rest"] or "").split("/")
    if kind in HALVES:  # block/half/c{i}/stat
        result.update(half=kind, circulation=int(parts[0][1:]), quantity=parts[1])
    elif kind in ("true_error", "settle"):
        result.update(circulation=int(parts[0][1:]), quantity=kind)
    elif kind in ("drift", "drift_rel", "align"):
        half = parts[0] if parts[0] in HALVES else None
        result.update(half=half, quantity=kind if half else f"{kind}/{parts[0]}")
    elif kind in ("grad_norm", "update_ratio"):
        result.update(half=parts[0], quantity=f"{kind}/{'/'.join(parts[1:])}")
    else:
        result.update(quantity=f"{kind}/{'/'.join(parts)}".rstrip("/"))
    return result
