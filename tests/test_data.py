"""Binarization and batching of MNIST on the device, on small synthetic uint8 images."""

from __future__ import annotations

import math

import torch

from pyro_vae.data import MNISTData, to_pixels
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
