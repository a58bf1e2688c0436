"""Likelihoods p(x | z): modules from the decoder's output to a Pyro distribution over pixels.

A likelihood says how many decoder outputs it needs per pixel (``params_per_pixel``), which
data it accepts (``data_kind``) and checks a batch against that support with an error that
suggests the fix. Adding a likelihood is one class and one line in ``LIKELIHOODS``.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyro_vae.models.config import VAEConfig
from pyro_vae.models.discretized import DiscretizedLogistic, eight_bit_grid, to_grid
from pyro_vae.runtime.settings import publish_registry

# Beta data must lie strictly inside (0, 1); pixels are squeezed into [EPS, 1 - EPS].
BETA_EPS = 1e-3
# Learned pixel scales and concentrations stay above this, so log-densities stay finite
# (networks.GUIDE_MIN_SCALE is the guide's floor).
LIKELIHOOD_MIN_SCALE = 1e-3
# The discretized logistic's scale floor: its probabilities never exceed 1, so the floor only
# keeps (x - loc) / scale finite. At 1/39 of a bin, one bin can hold all but e^-19 of the
# mass; at LIKELIHOOD_MIN_SCALE (a quarter of a bin) an interior pixel's probability stops at 0.75.
DISCRETE_MIN_SCALE = 1e-4


class Likelihood(nn.Module):
    """Base class. Subclasses set the class attributes and implement ``forward``."""

    params_per_pixel: int = 1
    # "binary": {0, 1}; "8-bit": the 256 values k / 255; "unit": [0, 1]; "open-unit": (0, 1);
    # "real": any float. The first two are discrete (probabilities), the others densities.
    data_kind: str = "real"
    name: str = "custom"

    def prepare(self, x: Tensor) -> Tensor:
        """Maps grayscale pixels in [0, 1] to this likelihood's data representation.

        Dequantized pixels (``data.to_pixels(..., "dequantize")``) do not pass through here:
        they are scored as drawn, since a change to them would need its Jacobian in the bound.
        """
        return x

    def check(self, x: Tensor) -> None:
        """Raises ValueError when ``x`` is outside this likelihood's support."""
        bad = _support_violation(x, self.data_kind)
        if bad:
            raise ValueError(f"the {self.name} likelihood needs {bad}; {_fix_hint(self.data_kind)}")

    def forward(self, out: Tensor) -> dist.Distribution:
        raise NotImplementedError

    def pixels(self, base: dist.Distribution) -> dist.Distribution:
        """One event over the pixels whose support error (from Pyro's validation) says the fix.

        Checking inside ``log_prob``, where Pyro validates anyway, costs nothing extra per step.
        """
        return _explained_independent(self.name, self.data_kind)(base, 1)


_EXPLAINED: dict[tuple[str, str], type] = {}


def _explained_independent(name: str, kind: str) -> type:
    """An Independent subclass per (likelihood, data kind); expand() keeps the class."""
    if (name, kind) not in _EXPLAINED:

        def log_prob(self, value: Tensor) -> Tensor:
            try:
                return dist.Independent.log_prob(self, value)
            except ValueError as e:
                if "support" not in str(e):
                    raise
                bad = _support_violation(value, kind) or "values inside its support"
                raise ValueError(f"the {name} likelihood needs {bad}; {_fix_hint(kind)}") from None

        _EXPLAINED[name, kind] = type(
            "PixelIndependent", (dist.Independent,), {"log_prob": log_prob}
        )
    return _EXPLAINED[name, kind]


def _support_violation(x: Tensor, kind: str) -> str:
    if kind == "binary" and not ((x == 0) | (x == 1)).all():
        return "pixels that are exactly 0 or 1 but got grayscale values"
    if kind == "unit" and not ((x >= 0) & (x <= 1)).all():
        return "pixels in [0, 1]"
    if kind == "open-unit" and not ((x > 0) & (x < 1)).all():
        return "pixels strictly inside (0, 1)"
    if kind == "8-bit" and not eight_bit_grid.check(x).all():
        return "the raw 8-bit pixel values k / 255, k = 0..255"
    return ""


def _fix_hint(kind: str) -> str:
    if kind == "binary":
        return (
            "binarize the data (--data-mode dynamic or threshold) or use a likelihood for "
            "grayscale pixels (--likelihood continuous-bernoulli)"
        )
    if kind == "8-bit":
        return (
            "give it the pixels undequantized (--data-mode none, which auto picks for it); "
            "dequantized pixels are for the continuous likelihoods"
        )
    if kind == "open-unit":
        return (
            "squeeze the pixels with the likelihood's prepare() or dequantize them "
            "(--data-mode dequantize); the data pipeline does either"
        )
    return "scale the pixels to [0, 1] (--data-mode dequantize or none give grayscale in [0, 1])"


class BernoulliLikelihood(Likelihood):
    """x_i ~ Bernoulli(logits = out_i): binarized pixels."""

    data_kind = "binary"
    name = "bernoulli"

    def forward(self, out: Tensor) -> dist.Distribution:
        return self.pixels(dist.Bernoulli(logits=out))


class ContinuousBernoulliLikelihood(Likelihood):
    """x_i ~ ContinuousBernoulli(logits = out_i): grayscale in [0, 1] (Loaiza-Ganem 2019)."""

    data_kind = "unit"
    name = "continuous-bernoulli"

    def forward(self, out: Tensor) -> dist.Distribution:
        return self.pixels(dist.ContinuousBernoulli(logits=out))


class _LocScaleLikelihood(Likelihood):
    """Location = sigmoid(out) in (0, 1); scale fixed, or learned per pixel (2 outputs)."""

    family: type[dist.Distribution] = dist.Normal

    def __init__(self, scale: float | None = None) -> None:
        super().__init__()
        self.scale = scale
        self.params_per_pixel = 1 if scale is not None else 2

    def forward(self, out: Tensor) -> dist.Distribution:
        if self.scale is not None:
            return self.pixels(self.family(torch.sigmoid(out), self.scale))
        loc, raw_scale = out.chunk(2, dim=-1)
        return self.pixels(
            self.family(torch.sigmoid(loc), F.softplus(raw_scale) + LIKELIHOOD_MIN_SCALE)
        )


class GaussianLikelihood(_LocScaleLikelihood):
    """x_i ~ N(sigmoid(out_i), scale): grayscale; fixed or learned per-pixel scale."""

    family = dist.Normal
    data_kind = "real"
    name = "gaussian"


class LaplaceLikelihood(_LocScaleLikelihood):
    """x_i ~ Laplace(sigmoid(out_i), scale): grayscale; fixed or learned per-pixel scale."""

    family = dist.Laplace
    data_kind = "real"
    name = "laplace"


class BetaLikelihood(Likelihood):
    """x_i ~ Beta(a_i, b_i), both from the decoder: dequantized pixels (inside (0, 1) as
    drawn), or grayscale squeezed into (0, 1)."""

    params_per_pixel = 2
    data_kind = "open-unit"
    name = "beta"

    def prepare(self, x: Tensor) -> Tensor:
        return x.clamp(BETA_EPS, 1 - BETA_EPS)

    def forward(self, out: Tensor) -> dist.Distribution:
        raw_a, raw_b = out.chunk(2, dim=-1)
        return self.pixels(
            dist.Beta(
                F.softplus(raw_a) + LIKELIHOOD_MIN_SCALE, F.softplus(raw_b) + LIKELIHOOD_MIN_SCALE
            )
        )


class DiscretizedLogisticLikelihood(Likelihood):
    """x_i ~ DiscretizedLogistic(loc = out_i, scale = softplus(out'_i) + floor), over the 256
    pixel values.

    The decoder gives a location (unbounded, so the edge bins can take all the mass) and a
    per-pixel scale: 2 outputs per pixel. Its log-likelihood is that of the 8-bit images.
    """

    params_per_pixel = 2
    data_kind = "8-bit"
    name = "discretized-logistic"

    def prepare(self, x: Tensor) -> Tensor:
        return to_grid(x)

    def forward(self, out: Tensor) -> dist.Distribution:
        loc, raw_scale = out.chunk(2, dim=-1)
        return self.pixels(DiscretizedLogistic(loc, F.softplus(raw_scale) + DISCRETE_MIN_SCALE))


LIKELIHOODS: dict[str, Callable[[VAEConfig], Likelihood]] = {
    "bernoulli": lambda c: BernoulliLikelihood(),
    "continuous-bernoulli": lambda c: ContinuousBernoulliLikelihood(),
    "gaussian": lambda c: GaussianLikelihood(c.likelihood_scale),
    "laplace": lambda c: LaplaceLikelihood(c.likelihood_scale),
    "beta": lambda c: BetaLikelihood(),
    "discretized-logistic": lambda c: DiscretizedLogisticLikelihood(),
}
publish_registry("likelihoods", LIKELIHOODS)  # the choices of VAEConfig.likelihood


class _CallableLikelihood(Likelihood):
    """Wraps a user callable ``out -> distribution``; it decides its own support checks.

    The callable may say what it needs as attributes: ``params_per_pixel`` (default 1) and
    ``data_kind`` (default "real"; "binary" makes the data pipeline binarize for it).
    """

    def __init__(
        self,
        fn: Callable[[Tensor], dist.Distribution],
        params_per_pixel: int = 1,
        data_kind: str = "real",
    ) -> None:
        super().__init__()
        self.fn = fn
        self.params_per_pixel = params_per_pixel
        self.data_kind = data_kind

    def describe(self) -> str:
        return getattr(self.fn, "__qualname__", type(self.fn).__name__)

    def forward(self, out: Tensor) -> dist.Distribution:
        d = self.fn(out)
        return d if d.event_shape else d.to_event(1)


def build_likelihood(likelihood: str | Callable | Likelihood, config: VAEConfig) -> Likelihood:
    """The one place a likelihood name (or a user callable) becomes a likelihood module."""
    if isinstance(likelihood, str):
        if likelihood not in LIKELIHOODS:
            raise ValueError(
                f"unknown likelihood {likelihood!r}; choose one of {sorted(LIKELIHOODS)}"
            )
        return LIKELIHOODS[likelihood](config)
    if isinstance(likelihood, Likelihood):
        return likelihood
    if callable(likelihood):
        return _CallableLikelihood(
            likelihood,
            getattr(likelihood, "params_per_pixel", 1),
            getattr(likelihood, "data_kind", "real"),
        )
    raise TypeError(f"likelihood must be a name or a callable, got {type(likelihood).__name__}")
