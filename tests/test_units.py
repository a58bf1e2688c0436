"""Units of a log-likelihood: bits per dimension, the change of variables of dequantized
pixels against the exact probability of the 8-bit values, and the labels of each data."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_vae.data.pixels import dequantize
from pyro_vae.inference import units
from pyro_vae.models.config import VAEConfig
from pyro_vae.models.likelihoods import LIKELIHOODS

D = 784


def test_nats_per_image_is_bits_per_dim_times_d_ln2():
    # A model that gives each of the 256 values of every pixel probability 1/256 spends
    # exactly 8 bits per pixel: D log 256 nats per image.
    assert units.bits_per_dim(D * math.log(256), D) == pytest.approx(8.0, rel=1e-12)
    assert units.nats_per_image(8.0, D) == pytest.approx(D * 8 * math.log(2), rel=1e-12)
    assert units.nats_per_image(1.0, D) == pytest.approx(543.4274, abs=1e-4)  # 784 ln 2
    for nats in (-3335.38, 0.0, 96.91):
        assert units.nats_per_image(units.bits_per_dim(nats, D), D) == pytest.approx(nats)


def test_uniform_density_on_dequantized_pixels_is_eight_bits():
    # The uniform density on [0, 1]^D has log p = 0 everywhere; dequantized, it is the
    # uniform distribution over the 256 values: 8 bits per dimension, after the correction.
    r = units.in_units(0.0, D, units.DEQUANTIZED, std_error=0.5)
    assert r["bits_per_dim"] == pytest.approx(8.0)
    assert r["dequantization_nats"] == pytest.approx(D * math.log(256))
    assert r["std_error_bits_per_dim"] == pytest.approx(0.5 / (D * math.log(2)))
    assert r["dataset"] == "8-bit MNIST"
    # Only dequantized data get the term: the discrete likelihood's nats are already P(k).
    assert units.in_units(0.0, D, units.DISCRETE)["bits_per_dim"] == 0.0


# A fixed factorized density on 4 pixels with 8-bit values K: where the density is smooth
# the bound is nearly tight; a pole (Kumaraswamy a < 1 at 0) and a Normal narrower than a
# bin make log p vary inside the bin, so Jensen's gap is visible.
K = torch.tensor([0, 37, 128, 255], dtype=torch.uint8)
KUMARASWAMY = {0: (0.6, 3.0), 1: (2.0, 5.0)}  # pixel -> (a, b)
NORMAL = {2: (0.5, 0.002), 3: (0.95, 0.05)}  # pixel -> (loc, scale)


def log_density(x: torch.Tensor) -> torch.Tensor:
    """log p(x) per pixel for x [..., 4] in (0, 1), float64: [..., 4]."""
    out = torch.empty_like(x)
    for i, (a, b) in KUMARASWAMY.items():
        xi = x[..., i]
        out[..., i] = math.log(a * b) + (a - 1) * xi.log() + (b - 1) * torch.log1p(-(xi**a))
    for i, (loc, scale) in NORMAL.items():
        out[..., i] = torch.distributions.Normal(loc, scale).log_prob(x[..., i])
    return out


def cdf(x: torch.Tensor, i: int) -> torch.Tensor:
    if i in KUMARASWAMY:
        a, b = KUMARASWAMY[i]
        return 1 - (1 - x**a) ** b
    loc, scale = NORMAL[i]
    return torch.distributions.Normal(loc, scale).cdf(x)


def exact_log_prob() -> float:
    """log P(K): the density integrated over each pixel's bin [k / 256, (k + 1) / 256]."""
    k = K.double()
    return sum(
        math.log((cdf((k[i] + 1) / 256, i) - cdf(k[i] / 256, i)).item()) for i in range(len(K))
    )


def quadrature_expected_log_density(points: int = 200_000) -> float:
    """E_u[log p((K + u) / 256)], u ~ U(0, 1) per pixel, by the midpoint rule."""
    u = (torch.arange(points, dtype=torch.float64) + 0.5) / points
    x = (K.double() + u[:, None]) / 256
    return log_density(x).mean(0).sum().item()


def test_dequantized_estimate_is_the_discrete_bound_within_monte_carlo_error():
    n = 20_000
    g = torch.Generator().manual_seed(0)
    x = dequantize(K.expand(n, len(K)), generator=g).double()  # the pipeline's own noise
    log_p = log_density(x).sum(-1)
    se = log_p.std().item() / math.sqrt(n)
    estimate = log_p.mean().item() - units.dequantization_nats(len(K))
    bound = quadrature_expected_log_density() - units.dequantization_nats(len(K))
    exact = exact_log_prob()
    # The Monte Carlo estimate is E_u[log p] - D log 256 within its standard error ...
    assert abs(estimate - bound) < 4 * se
    # ... which lies below log P(K) (Jensen), here by far more than the estimate's error.
    assert bound < exact
    assert exact - estimate > 20 * se
    # The same per-pixel units through in_units: nats of the density -> bound on -log P.
    reported = units.in_units(-log_p.mean().item(), len(K), units.DEQUANTIZED)
    assert reported["nats_per_image"] == pytest.approx(-estimate)
    # Negative control: without the D log 256 term the "bound" lies far above log P(K).
    assert log_p.mean().item() - exact > 100 * se


@pytest.mark.parametrize(
    "binarize,likelihood,expected",
    [
        ("dynamic", "bernoulli", units.BINARIZED),
        ("threshold", "bernoulli", units.BINARIZED),
        ("dequantize", "gaussian", units.DEQUANTIZED),
        ("dequantize", "beta", units.DEQUANTIZED),
        ("none", "discretized-logistic", units.DISCRETE),
        ("none", "beta", units.GRAYSCALE),
        ("none", "continuous-bernoulli", units.GRAYSCALE),
        ("dynamic", "continuous-bernoulli", units.BINARIZED_DENSITY),
        (None, "gaussian", units.UNSPECIFIED),
    ],
)
def test_each_data_mode_says_what_its_numbers_are_about(binarize, likelihood, expected):
    lik = LIKELIHOODS[likelihood](VAEConfig())
    label = units.data_label(binarize, lik)
    assert label == expected
    # Only binarized and 8-bit numbers belong to a dataset rows can be compared within.
    comparable = expected in (units.BINARIZED, units.DEQUANTIZED, units.DISCRETE)
    assert (units.in_units(1.0, D, label)["dataset"] is not None) == comparable
    assert "(not comparable)" in expected or comparable or expected == units.UNSPECIFIED


def test_unresolved_data_mode_is_an_error():
    with pytest.raises(ValueError, match="resolved"):
        units.data_label("auto", LIKELIHOODS["gaussian"](VAEConfig()))
