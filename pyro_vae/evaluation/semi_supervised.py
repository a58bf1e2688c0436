"""Scoring the semi-supervised VAE's classifier q(y | x): test accuracy and confusion matrix,
and the test bound with the labels hidden.

``label_accuracy`` labels every test image with q(y | x)'s most likely class and counts, per
true class, what it said. ``hidden_labels`` turns test batches into unlabelled ones (y = -1),
so the test -ELBO sums y out: a bound on -log p(x) rather than -log p(x, y).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor

from pyro_vae.models.vae import UNLABELLED, VAE


@torch.no_grad()
def label_accuracy(
    vae: VAE,
    batches: Iterable[tuple[Tensor, Tensor]],
    all_reduce: Callable[[Tensor], Tensor] | None = None,
) -> dict:
    """How often argmax_y q(y | x) is the true label, over ``batches`` of (x, y).

    Returns ``accuracy``, its binomial ``std_error``, ``num_images``, ``per_class`` (the
    accuracy on each true class) and ``confusion``, C x C counts (row: true label, column:
    q(y | x)'s). ``all_reduce``: sums the counts over the ranks (each scores its own part).
    The counts stay on the device; the host reads them once.
    """
    c = vae.config.num_classes
    device = next(vae.parameters()).device
    confusion = torch.zeros(c * c, dtype=torch.long, device=device)
    for x, y in batches:
        predicted = vae.classify(x).argmax(-1)
        confusion += torch.bincount(y.to(device) * c + predicted, minlength=c * c)
    if all_reduce is not None:
        all_reduce(confusion)
    confusion = confusion.reshape(c, c).cpu()
    n = int(confusion.sum())
    if not n:
        raise ValueError("no test images to classify")
    accuracy = float(confusion.diagonal().sum()) / n
    totals = confusion.sum(1).clamp(min=1).double()
    return {
        "accuracy": accuracy,
        "std_error": math.sqrt(accuracy * (1 - accuracy) / n),
        "num_images": n,
        "per_class": (confusion.diagonal().double() / totals).tolist(),
        "confusion": confusion.tolist(),
        "classifier": "argmax q(y | x)",
    }


def hidden_labels(batches: Iterable[tuple[Tensor, Tensor]]) -> Iterator[tuple[Tensor, Tensor]]:
    """The batches with every label missing (-1): their -ELBO bounds -log p(x)."""
    for x, y in batches:
        yield x, torch.full_like(y, UNLABELLED)


def format_accuracy(result: dict, classes: list[str] | None = None) -> str:
    """The printed report: the accuracy, per class, and the confusion matrix."""
    c = len(result["confusion"])
    names = [str(k) for k in (classes or range(c))]
    width = max(6, *(len(n) + 1 for n in names))
    lines = [
        f"test accuracy of q(y | x): {result['accuracy']:.2%} +- {result['std_error']:.2%} "
        f"({result['num_images']} images)",
        "per class: "
        + "  ".join(f"{n} {a:.1%}" for n, a in zip(names, result["per_class"], strict=True)),
        "confusion matrix (row: true label, column: argmax q(y | x)):",
        " " * width + "".join(f"{n:>{width}}" for n in names),
    ]
    for n, row in zip(names, result["confusion"], strict=True):
        lines.append(f"{n:>{width}}" + "".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)
