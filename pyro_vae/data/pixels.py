"""How uint8 pixels become the data a likelihood scores: binarized (afresh or by threshold),
dequantized, or grayscale, on the device, one batch at a time."""

from __future__ import annotations

import torch
from torch import Tensor

from pyro_vae.models.likelihoods import Likelihood

# The test set is binarized (or dequantized) once, with this seed, so every run and checkpoint
# scores the same data.
TEST_DATA_SEED = 0


# The data mode 'auto' picks from the likelihood's data kind; densities get dequantized pixels.
AUTO_DATA_MODE = {"binary": "dynamic", "8-bit": "none"}
# Dequantization noise u takes the midpoints of this many equal steps of (0, 1): k + u then
# fits float32's 24 bits exactly, so (k + u) / 256 is exact and strictly inside (0, 1).
# torch.rand's [0, 1) would give exactly 0 at k = 0 (outside a Beta's support), and for
# u within 2**-17 of 1, 255 + u rounds to 256, i.e. x = 1. The steps are 2**-23 apart in x,
# two float32 steps just below 1: finer than that float32 cannot tell apart anyway.
DEQUANTIZE_STEPS = 2**15


def resolve_data_mode(data_mode: str, likelihood: Likelihood) -> str:
    """'auto': dynamic binarization for binary likelihoods, the raw 8-bit values (none) for
    discrete 8-bit ones, dequantized pixels for densities. Runs record the resolved mode, so
    a run made when 'auto' meant 'none' for densities still evaluates on 'none'."""
    if data_mode == "auto":
        return AUTO_DATA_MODE.get(likelihood.data_kind, "dequantize")
    return data_mode


def dequantize(x_uint8: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """uint8 [N, D] -> float (k + u) / 256 [N, D] with u ~ U(0, 1) per pixel, on x's device.

    A density on these pixels bounds the 8-bit images' log-probability after the change of
    variables term (``units.dequantization_nats``).
    """
    steps = torch.randint(
        DEQUANTIZE_STEPS, x_uint8.shape, generator=generator, device=x_uint8.device
    )
    u = (steps.float() + 0.5) / DEQUANTIZE_STEPS
    return (x_uint8.float() + u) / 256


def to_pixels(x_uint8: Tensor, data_mode: str, likelihood: Likelihood, generator=None) -> Tensor:
    """uint8 [N, D] -> float [N, D] in the likelihood's representation, on x's device.

    data_mode: "dynamic" (a fresh Bernoulli(k / 255) draw), "threshold" (k / 255 > 0.5),
    "dequantize" (a fresh (k + u) / 256, not passed to ``prepare``) or "none" (k / 255).
    """
    if data_mode == "dequantize":
        return dequantize(x_uint8, generator)
    x = x_uint8.float().div_(255.0)
    if data_mode == "dynamic":
        x = torch.bernoulli(x, generator=generator)
    elif data_mode == "threshold":
        x = (x > 0.5).float()
    return likelihood.prepare(x)
