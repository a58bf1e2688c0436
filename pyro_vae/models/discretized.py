"""A logistic discretized over the 256 pixel values: probabilities of the 8-bit bins themselves.

Pixel k (0..255) is stored as k / 255 in [0, 1] (what ``to_pixels(..., "none")`` gives). Bin k
is [(k - 1/2) / 255, (k + 1/2) / 255], the two edge bins open to -inf and +inf, so the 256
probabilities sum to 1 (Salimans et al. 2017, PixelCNN++, one component)::

    P(k) = F((k + 1/2) / 255) - F((k - 1/2) / 255),    F = sigmoid((x - loc) / scale)

A log-probability of the image is then a log-probability of the 8-bit data: no dequantization
and no change-of-variables term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution, constraints
from torch import Tensor

NUM_BINS = 256
# Half a bin, in the k / 255 representation.
HALF_BIN = 0.5 / (NUM_BINS - 1)
# How far x * 255 may sit from an integer and still be pixel k: float32's k / 255 * 255 is
# off by ~1e-5; dequantized pixels are off by far more almost everywhere.
GRID_TOLERANCE = 1e-3


class _EightBitGrid(constraints.Constraint):
    """Values k / 255 with k an integer in [0, 255]."""

    is_discrete = True
    event_dim = 0

    def check(self, value: Tensor) -> Tensor:
        k = value * (NUM_BINS - 1)
        on_grid = (k - k.round()).abs() <= GRID_TOLERANCE
        return on_grid & (value >= 0) & (value <= 1)

    def __repr__(self) -> str:
        return "EightBitGrid(k / 255, k = 0..255)"


eight_bit_grid = _EightBitGrid()


def to_grid(x: Tensor) -> Tensor:
    """The nearest pixel value k / 255 for x in [0, 1]: the identity on 8-bit pixels."""
    return (x.clamp(0, 1) * (NUM_BINS - 1)).round() / (NUM_BINS - 1)


class DiscretizedLogistic(TorchDistribution):
    """P(k / 255) for k = 0..255, elementwise; ``loc`` any real, ``scale`` > 0 (same shape).

    ``log_prob`` is exact in log space: for an interior bin, with a = (upper - loc) / scale and
    b = (lower - loc) / scale,

        sigmoid(a) - sigmoid(b) = sigmoid(a) * sigmoid(-b) * (1 - exp(-(a - b)))

    so log P = logsigmoid(a) + logsigmoid(-b) + log(-expm1(-(a - b))). No difference of two
    CDFs is ever formed, so nothing cancels or underflows even where P is below float's
    smallest number (a mid-bin density fallback is not needed); the edge bins drop a factor.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = eight_bit_grid
    has_rsample = False

    def __init__(self, loc: Tensor, scale: Tensor, validate_args: bool | None = None) -> None:
        self.loc, self.scale = torch.broadcast_tensors(torch.as_tensor(loc), torch.as_tensor(scale))
        super().__init__(self.loc.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> DiscretizedLogistic:
        new = self._get_checked_instance(DiscretizedLogistic, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc = self.loc.expand(batch_shape)
        new.scale = self.scale.expand(batch_shape)
        super(DiscretizedLogistic, new).__init__(batch_shape, validate_args=self._validate_args)
        return new

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        k = (value * (NUM_BINS - 1)).round()
        centre = k / (NUM_BINS - 1)
        a = (centre + HALF_BIN - self.loc) / self.scale
        b = (centre - HALF_BIN - self.loc) / self.scale
        width = 2 * HALF_BIN / self.scale  # a - b, computed without a cancellation
        top, bottom = k >= NUM_BINS - 1, k <= 0
        zero = torch.zeros((), dtype=a.dtype, device=a.device)
        # torch.where, not masking after the fact: each branch is finite, so are its gradients.
        return (
            torch.where(top, zero, F.logsigmoid(a))
            + torch.where(bottom, zero, F.logsigmoid(-b))
            + torch.where(top | bottom, zero, torch.log(-torch.expm1(-width)))
        )

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """Inverse CDF of the logistic, then the bin it falls in: [*sample_shape, *batch]."""
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device)
            # u = 0 gives -inf, which the clamp sends to the bottom bin, as it should.
            x = self.loc.expand(shape) + self.scale.expand(shape) * torch.logit(u)
            return (x * (NUM_BINS - 1)).round().clamp(0, NUM_BINS - 1) / (NUM_BINS - 1)

    @property
    def mean(self) -> Tensor:
        """E[x] = sum_k (k / 255) P(k) = (1 / 255) sum_{j=1..255} P(k >= j), exactly.

        One pass per bin edge keeps memory at one [batch] tensor (figures decode thousands of
        images at once); 255 elementwise passes cost little next to the decoder.
        """
        total = torch.zeros_like(self.loc)
        for j in range(1, NUM_BINS):
            edge = (j - 0.5) / (NUM_BINS - 1)
            total += torch.sigmoid((self.loc - edge) / self.scale)
        return total / (NUM_BINS - 1)
