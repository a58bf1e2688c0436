"""Which training images keep their label in a semi-supervised run, and how an epoch mixes them
with the unlabelled ones.

``--labelled N`` (``TrainConfig.labelled``) keeps N / C images of each of the C classes, drawn
with ``--label-seed``; every other training image loses its label, which becomes -1
(``models.vae.UNLABELLED``: the semi-supervised VAE's data convention). The draw depends on the
training labels and the seed alone, so the same data and seed give the same images on every
machine; the run records the seed, the count per class and the SHA-256 of the indices.

An epoch is, by default, a pass over all N training images in one shuffled order, the labelled
ones among them. ``--labelled-per-batch M`` instead puts M labelled images in every batch,
cycling through the labelled set in a fresh order each pass, beside B - M unlabelled ones: the
epoch is then a pass over the unlabelled images.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

from pyro_vae.models.vae import UNLABELLED


def draw_labelled(y: Tensor, num: int, num_classes: int, seed: int) -> Tensor:
    """The indices [num] (ascending, int64, on the CPU) of ``num / num_classes`` images of
    each class of the labels ``y`` [N], drawn uniformly with ``seed``; a one-line ValueError
    when ``num`` does not fit the data."""
    n = y.shape[0]
    if num > n:
        raise ValueError(f"--labelled {num} is more than the {n} training images; use at most {n}")
    if num % num_classes:
        raise ValueError(
            f"--labelled {num} does not split into {num_classes} classes of equal size; use a "
            f"multiple of {num_classes}"
        )
    per_class = num // num_classes
    y = y.cpu()
    counts = torch.bincount(y, minlength=num_classes)
    if int(counts.min()) < per_class:
        small = int(counts.argmin())
        raise ValueError(
            f"--labelled {num} needs {per_class} images of each class, but class {small} has "
            f"{int(counts[small])}; use at most {num_classes * int(counts.min())}"
        )
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(num_classes):
        members = torch.nonzero(y == c)[:, 0]
        chosen.append(members[torch.randperm(len(members), generator=g)[:per_class]])
    return torch.cat(chosen).sort().values


def hide_labels(y: Tensor, labelled: Tensor) -> Tensor:
    """``y`` with every label but those at ``labelled`` set to -1 (missing)."""
    out = torch.full_like(y, UNLABELLED)
    idx = labelled.to(y.device)
    out[idx] = y[idx]
    return out


def labelled_record(labelled: Tensor, y: Tensor, num_classes: int, seed: int) -> dict:
    """What a run records of its draw: the count, seed, images per class and the SHA-256 of
    the indices (int64, ascending), which a resumed run checks."""
    idx = labelled.cpu().to(torch.int64).contiguous()
    per_class = torch.bincount(y.cpu()[idx], minlength=num_classes).tolist()
    return {
        "num": int(idx.numel()),
        "seed": seed,
        "per_class": per_class,
        "sha256": hashlib.sha256(idx.numpy().tobytes()).hexdigest(),
    }


def mixed_order(
    labelled: Tensor, unlabelled: Tensor, batch_size: int, per_batch: int, generator
) -> Tensor:
    """An epoch's order of image indices: batches of ``per_batch`` labelled images (cycled, a
    fresh permutation each pass) followed by ``batch_size - per_batch`` unlabelled ones (one
    permutation), until the unlabelled images run out; the last batch holds the rest of them.
    Its length is ``num_batches * per_batch + len(unlabelled)``."""
    rest = batch_size - per_batch
    steps = -(-len(unlabelled) // rest)
    device = labelled.device
    unl = unlabelled[torch.randperm(len(unlabelled), generator=generator, device=device)]
    passes = -(-steps * per_batch // len(labelled))
    lab = torch.cat(
        [
            labelled[torch.randperm(len(labelled), generator=generator, device=device)]
            for _ in range(passes)
        ]
    )[: steps * per_batch]
    full = len(unl) // rest
    order = torch.cat(
        [lab[: full * per_batch].reshape(full, per_batch), unl[: full * rest].reshape(full, rest)],
        dim=1,
    ).reshape(-1)
    if full < steps:
        order = torch.cat([order, lab[full * per_batch :], unl[full * rest :]])
    return order


def mixed_batches(num_unlabelled: int, batch_size: int, per_batch: int) -> int:
    """Batches of an epoch of :func:`mixed_order`."""
    return -(-num_unlabelled // (batch_size - per_batch))
