"""The discretized logistic: a distribution over the 256 pixel values, checked in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_vae.models.discretized import DiscretizedLogistic, eight_bit_grid

VALUES = torch.arange(256, dtype=torch.float64) / 255  # every pixel value k / 255
LOCS = (-50.0, -1.0, 0.0, 0.3, 0.5, 1.0, 2.0, 50.0)
SCALES = (1e-4, 1e-3, 0.05, 1.0, 1e3)


def grid_params(dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Every loc x scale pair, as [P] tensors."""
    loc, scale = torch.cartesian_prod(torch.tensor(LOCS), torch.tensor(SCALES)).T
    return loc.to(dtype), scale.to(dtype)


def all_log_probs(log_prob, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """log P(k) of every value for every parameter pair: [256, P]."""
    values = VALUES.to(loc.dtype)[:, None].expand(256, loc.shape[0])
    return log_prob(loc, scale, values)


def ours(loc, scale, values):
    return DiscretizedLogistic(loc, scale).log_prob(values)


def reference(loc, scale, values, open_edges: bool = True):
    """F(upper) - F(lower) with the logistic CDF F, in float64, from the side of the tail the
    bin is in (so that two CDFs near 1 do not cancel). ``open_edges=False`` is a wrong
    variant: the edge bins closed at -1/2 and 255 + 1/2."""
    loc, scale, values = loc.double(), scale.double(), values.double()
    a = (values + 0.5 / 255 - loc) / scale
    b = (values - 0.5 / 255 - loc) / scale
    if open_edges:
        a = torch.where(values >= 1, math.inf, a)
        b = torch.where(values <= 0, -math.inf, b)
    above = values > loc
    p = torch.where(
        above, torch.sigmoid(-b) - torch.sigmoid(-a), torch.sigmoid(a) - torch.sigmoid(b)
    )
    return p.log()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_probabilities_of_the_256_values_sum_to_one(dtype):
    loc, scale = grid_params(dtype)
    lp = all_log_probs(ours, loc, scale)
    assert torch.isfinite(lp).all()
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(lp.logsumexp(0).exp(), torch.ones_like(loc), atol=tol, rtol=0)
    # Negative control: with closed edge bins the mass outside [0, 1] is lost.
    closed = lambda *args: reference(*args, open_edges=False)  # noqa: E731
    wrong = all_log_probs(closed, loc.double(), scale.double()).logsumexp(0).exp()
    assert (wrong < 1 - 0.1).any()


def test_log_prob_equals_the_float64_cdf_difference():
    loc = torch.tensor([0.2, 0.5, 0.7, -0.1, 1.05])
    scale = torch.tensor([0.01, 0.1, 1.0, 0.003, 0.02])
    lp = all_log_probs(ours, loc, scale)
    ref = all_log_probs(reference, loc, scale)
    assert torch.isfinite(ref).all()
    torch.testing.assert_close(lp.double(), ref, rtol=1e-5, atol=1e-4)


def test_log_prob_stays_exact_where_the_cdf_difference_underflows():
    # Bin 10 sits 1.7 units of 0.002 below loc = 0.9: both CDFs are ~e^-430, far below
    # float32's smallest number, so their difference is 0 and its log -inf.
    loc, scale = torch.tensor(0.9, requires_grad=True), torch.tensor(0.002)
    x = torch.tensor(10 / 255)
    lp = DiscretizedLogistic(loc, scale).log_prob(x)
    a = (10.5 / 255 - 0.9) / 0.002  # (upper - loc) / scale
    width = 1 / 255 / 0.002  # a - b
    # sigmoid(a) - sigmoid(b) = e^a (1 - e^-width) (1 + O(e^a)) for a << 0.
    assert lp.item() == pytest.approx(a + math.log(-math.expm1(-width)), rel=1e-6)
    lp.backward()
    assert torch.isfinite(loc.grad)
    naive = torch.sigmoid(torch.tensor(a)) - torch.sigmoid(torch.tensor(a - width))
    assert naive.log().item() == -math.inf  # what the mid-bin fallback exists for elsewhere


def test_mean_is_the_expectation_over_the_256_values():
    loc, scale = grid_params(torch.float64)
    p = all_log_probs(ours, loc, scale).exp()
    expected = (VALUES[:, None] * p).sum(0)
    mean = DiscretizedLogistic(loc, scale).mean
    torch.testing.assert_close(mean, expected, atol=1e-12, rtol=0)
    assert ((mean >= 0) & (mean <= 1)).all()


@pytest.mark.parametrize("loc,scale", [(0.5, 0.01), (-0.002, 0.004), (0.99, 0.02)])
def test_samples_follow_the_probabilities(loc, scale):
    n = 20_000
    torch.manual_seed(0)
    d = DiscretizedLogistic(torch.tensor(loc), torch.tensor(scale))
    x = d.sample((n,))
    assert eight_bit_grid.check(x).all()
    counts = torch.bincount((x * 255).round().long(), minlength=256).double()
    p = d.log_prob(VALUES.float()).double().exp()
    # Each bin's frequency is binomial: within 4 standard errors (plus one count).
    se = (p * (1 - p) / n).sqrt()
    assert ((counts / n - p).abs() <= 4 * se + 1 / n).all()


def test_support_is_the_grid_of_pixel_values():
    assert eight_bit_grid.check(VALUES.float()).all()
    assert eight_bit_grid.check(torch.arange(256, dtype=torch.uint8).float() / 255).all()
    dequantized = (torch.arange(256).float() + 0.5) / 256
    assert not eight_bit_grid.check(dequantized).any()
    assert not eight_bit_grid.check(torch.tensor([-1 / 255, 256 / 255])).any()


def test_expand_keeps_the_parameters():
    d = DiscretizedLogistic(torch.tensor([0.1, 0.6]), torch.tensor([0.05, 0.2]))
    e = d.expand((3, 2))
    assert e.batch_shape == (3, 2) and isinstance(e, DiscretizedLogistic)
    x = torch.tensor([[0.0, 1.0]]).expand(3, 2)
    torch.testing.assert_close(e.log_prob(x), d.log_prob(x[0]).expand(3, 2))
