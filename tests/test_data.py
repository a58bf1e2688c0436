"""Binarization, dequantization and batching of MNIST on the device, on small synthetic uint8
images (and the real test set where it matters); damaged IDX files are named with what is
wrong with them."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_vae.data.images import ImageData
from pyro_vae.data.pixels import dequantize, resolve_data_mode, to_pixels
from pyro_vae.data.torchvision_data import idx_problem, load_mnist
from pyro_vae.models.config import VAEConfig
from pyro_vae.models.likelihoods import (
    LIKELIHOODS,
    BernoulliLikelihood,
    BetaLikelihood,
    DiscretizedLogisticLikelihood,
    GaussianLikelihood,
)


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
    data = ImageData(x, ids, x[:10].float(), ids[:10], "threshold", BernoulliLikelihood())
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


def test_dequantization_is_fresh_uniform_noise_inside_each_pixels_bin():
    x, _ = synthetic()
    a, b = to_pixels(x, "dequantize", GaussianLikelihood()), dequantize(x)
    for d in (a, b):
        assert d.dtype == torch.float32 and ((d > 0) & (d < 1)).all()
        assert torch.equal((d * 256).floor().to(torch.uint8), x)  # inside pixel k's bin
    assert not torch.equal(a, b)  # a new draw each time a batch is used
    u = a * 256 - x.float()  # exact: (k + u) / 256 is exact in float32
    # u ~ U(0, 1): mean 1/2 and variance 1/12, within their standard errors.
    n = u.numel()
    assert abs(u.mean().item() - 0.5) < 4 * math.sqrt(1 / 12 / n)
    assert abs(u.var().item() - 1 / 12) < 4 * math.sqrt(1 / 180 / n)


def test_dequantized_pixels_stay_strictly_inside_the_unit_interval():
    # The extreme values with the extreme noise: 0 + smallest u, 255 + largest u.
    ends = torch.tensor([[0] * 392 + [255] * 392], dtype=torch.uint8).expand(5000, 784)
    x = dequantize(ends)
    assert x.min() > 0 and x.max() < 1
    assert BetaLikelihood().check(x) is None  # the open support of the Beta accepts them
    # Negative control: torch.rand's u in [0, 1) can reach 1 - 2**-24, and 255 + u then
    # rounds to 256 in float32: the pixel would be exactly 1, outside the Beta's support.
    naive = (torch.tensor(255.0) + torch.tensor(1 - 2**-24)) / 256
    assert naive.item() == 1.0
    with pytest.raises(ValueError, match="strictly inside"):
        BetaLikelihood().check(naive.reshape(1, 1))


def test_auto_gives_each_likelihood_its_data():
    expected = {
        "bernoulli": "dynamic",
        "discretized-logistic": "none",
        "continuous-bernoulli": "dequantize",
        "gaussian": "dequantize",
        "laplace": "dequantize",
        "beta": "dequantize",
    }
    assert set(expected) == set(LIKELIHOODS)  # a new likelihood: say what auto gives it
    for name, mode in expected.items():
        lik = LIKELIHOODS[name](VAEConfig())
        assert resolve_data_mode("auto", lik) == mode
        # A mode a run recorded is kept as it is (old runs recorded "none" for densities).
        assert resolve_data_mode("none", lik) == "none"


def test_raw_values_are_the_discretized_likelihoods_data_exactly():
    x, _ = synthetic()
    lik = DiscretizedLogisticLikelihood()
    pixels = to_pixels(x, "none", lik)
    assert torch.equal(pixels, x.float() / 255)  # prepare() leaves the raw values alone
    lik.check(pixels)
    with pytest.raises(ValueError, match="raw 8-bit.*--data-mode none"):
        lik.check(to_pixels(x, "dequantize", lik))


@pytest.mark.mnist
def test_test_set_is_dequantized_once_with_the_fixed_seed(mnist_dir):
    lik = BetaLikelihood()
    a, b = (ImageData.load(mnist_dir, lik, "auto", train_subset=64, test_subset=50) for _ in "ab")
    assert a.data_mode == "dequantize"
    assert torch.equal(a.test_x, b.test_x)  # the same test data for every run and checkpoint
    raw = load_mnist(mnist_dir, train=False)[0][:50]
    assert torch.equal((a.test_x * 256).floor().to(torch.uint8), raw)
    assert ((a.test_x > 0) & (a.test_x < 1)).all()
    # Training batches are dequantized afresh each time.
    first, second = (next(a.train_batches(64))[0] for _ in "ab")
    assert not torch.equal(first.sort(0).values, second.sort(0).values)
