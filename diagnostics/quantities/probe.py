"""Linear-probe accuracy of every block's codes on a held-out labelled batch."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import tags
from ..schedule import Schedule
from .base import Capture, Quantity, Sink

RIDGE = 0.1  # ridge penalty, as a fraction of the mean feature variance x N


def ridge_probe_accuracy(train_x: Tensor, train_y: Tensor, test_x: Tensor,
                         test_y: Tensor, classes: int, ridge: float = RIDGE
                         ) -> float:
    """Test accuracy of a ridge-regression classifier fitted to one-hot labels.

    A closed-form linear probe: cheap enough to run during training and
    deterministic. Features are centred on the training mean; the penalty is
    ``ridge`` times the mean diagonal of the centred Gram matrix.

    Args:
        train_x: ``(N, ...)`` features, flattened to ``(N, F)``.
        train_y: ``(N,)`` int64 labels in ``[0, classes)``.
        test_x: ``(M, ...)`` features.
        test_y: ``(M,)`` labels.
    """
    X = train_x.detach().flatten(1).double()  # (N, F)
    Z = test_x.detach().flatten(1).double()  # (M, F)
    F_ = X.shape[1]
    Y = F.one_hot(train_y, classes).double()  # (N, C)
    x_mean, y_mean = X.mean(dim=0), Y.mean(dim=0)
    Xc = X - x_mean
    gram = Xc.T @ Xc  # (F, F)
    penalty = ridge * gram.diagonal().mean().clamp_min(1e-12)
    eye = torch.eye(F_, dtype=gram.dtype, device=gram.device)
    W = torch.linalg.solve(gram + penalty * eye, Xc.T @ (Y - y_mean))  # (F, C)
    scores = (Z - x_mean) @ W + y_mean  # (M, C)
    return (scores.argmax(dim=1) == test_y).double().mean().item()


def passed_code(output: object) -> Tensor | None:
    """The code a block passes up: ``code``, else ``enc_output`` of its dict."""
    if isinstance(output, Mapping):
        for key in ("code", "enc_output"):
            if isinstance(output.get(key), Tensor):
                return output[key]
    return None


class Probes(Quantity):
    """Probe accuracy on the first-pass code and on the code passed up.

    The probe batch is split in two: the first half fits the probe, the
    second half scores it.
    """

    name = "probes"

    def __init__(self, schedule: Schedule) -> None:
        super().__init__(schedule)
        self._reported: set[str] = set()

    def on_capture(self, capture: Capture, sink: Sink) -> None:
        if capture.labels is None:
            self._report(sink, "probes", "the probe batch has no labels")
            return
        y = capture.labels
        n = y.shape[0] // 2
        if n < 2:
            self._report(sink, "probes", "the probe batch has fewer than 4 examples")
            return
        classes = int(y.max()) + 1
        for k, block in capture.passes.items():
            codes = {"first": block.codes[0] if block.codes else None,
                     "code": passed_code(block.output)}
            for which, code in codes.items():
                if code is None:
                    self._report(sink, f"block{k} probe/{which}",
                                 "the block returned no such code")
                    continue
                accuracy = ridge_probe_accuracy(code[:n], y[:n], code[n:], y[n:],
                                                classes)
                sink.scalar(tags.batch_probe(k, which), accuracy)

    def _report(self, sink: Sink, what: str, why: str) -> None:
        if what not in self._reported:
            self._reported.add(what)
            sink.report_not_measured(what, why)
