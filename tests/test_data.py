"""Binarization and batching of MNIST on the device, on small synthetic uint8 images; damaged
IDX files are named with what is wrong with them."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_vae.data import MNISTData, idx_problem, to_pixels
from pyro_vae.likelihoods import BernoulliLikelihood


def synthetic(n: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return torch.randint(0, 256, (n, 784), dtype=torch.uint8, generator=g), torch.arange(n) % 10


def test_dynamic_binarization_is_a_fresh_bernoulli_draw_of_the_intensity():
    x, _ = synthetic()
    lik = BernoulliLikelihood()
    a, b = to_pixels(x, "dynamic", lik), to_pixels(x, "dynamic", lik)
    for d in (a, b):
        assert d.dtype == torch.float32 and ((d == 0) | (d == 1)).all()
    assert not torch.equal(a, b)  # a new draw each time a batch is used
    p = x.float() / 255
    # E[pixel] = intensity; the SE of the mean of N Bernoulli draws is sqrt(sum p(1-p)) / N.
    se = math.sqrt((p * (1 - p)).sum().item()) / p.numel()
    assert abs(a.mean().item() - p.mean().item()) < 4 * se


def test_threshold_binarization_is_deterministic():
    x, _ = synthetic()
    lik = BernoulliLikelihood()
    t = to_pixels(x, "threshold", lik)
    assert torch.equal(t, (x.float() / 255 > 0.5).float())


def test_train_batches_cover_every_image_once_per_epoch_in_a_new_order():
    x, _ = synthetic(300)
    ids = torch.arange(300)  # stand-in labels that name each image
    data = MNISTData(x, ids, x[:10].float(), ids[:10], "threshold", BernoulliLikelihood())
    assert data.num_batches(128) == 3
    orders = []
    for _ in range(2):
        batches = list(data.train_batches(128))
        assert [len(b[0]) for b in batches] == [128, 128, 44]
        images = torch.cat([b[0] for b in batches])
        order = torch.cat([b[1] for b in batches])
        assert torch.equal(order.sort().values, ids)  # every image exactly once
        # Each image travels with its own label.
        assert torch.equal(images, to_pixels(x[order], "threshold", data.likelihood))
        orders.append(order)
    assert not torch.equal(orders[0], orders[1])  # reshuffled each epoch


def _idx(dims: list[int], payload: bytes | None = None) -> bytes:
    head = bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    return head + (payload if payload is not None else bytes(math.prod(dims)))


@pytest.mark.parametrize(
    "content,ndim,problem",
    [
        (_idx([3, 2, 2]), 3, ""),
        (_idx([5]), 1, ""),
        (b"", 3, "the file is empty"),
        (_idx([3, 2, 2])[:-1], 3, "expected 28 bytes for shape [3, 2, 2], found 27"),
        (_idx([3, 2, 2]) + b"x", 3, "found 29 (truncated or padded)"),
        (b"\x1f\x8b\x08\x00" + bytes(30), 3, "does not start like an uint8 IDX file of 3 dims"),
        (_idx([20]), 3, "does not start like"),  # a labels file where images belong
        (b"\x00\x00", 1, "shorter than the 8-byte header"),
    ],
    ids=["images", "labels", "empty", "truncated", "padded", "gzip", "wrong-ndim", "tiny"],
)
def test_idx_problem_names_what_is_wrong(tmp_path, content, ndim, problem):
    path = tmp_path / "f"
    path.write_bytes(content)
    found = idx_problem(path, ndim)
    assert (found == "") if not problem else (problem in found), found
