"""The hand-written PyTorch VAE that the benchmarks measure pyro-vae against.

The same network as ``pyro_vae.VAE`` with its defaults (encoder 784-400-2x50 with softplus and a
softplus scale, decoder 50-400-784 producing Bernoulli logits) and the same loss: the negative
ELBO summed over the batch, with the Monte Carlo KL log q(z|x) - log p(z) at the reparametrized
draw (Trace_ELBO semantics) or the closed-form Gaussian KL (TraceMeanField_ELBO semantics).
No Pyro anywhere: this is what a user would write by hand.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MIN_SCALE = 1e-4  # as pyro_vae.networks.GUIDE_MIN_SCALE
LOG_2PI = math.log(2 * math.pi)


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.Softplus())
    return nn.Sequential(*layers)


class ReferenceVAE(nn.Module):
    def __init__(self, x_dim: int = 784, z_dim: int = 50, hidden: int = 400) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.encoder = _mlp([x_dim, hidden, 2 * z_dim])
        self.decoder = _mlp([z_dim, hidden, x_dim])

    def loss_terms(self, x: Tensor, analytic_kl: bool = False) -> tuple[Tensor, Tensor]:
        """Per-image log p(x | z) and KL, each [B]."""
        loc, raw = self.encoder(x).split(self.z_dim, dim=-1)
        scale = F.softplus(raw) + MIN_SCALE
        eps = torch.randn_like(loc)
        z = loc + scale * eps
        logits = self.decoder(z)
        log_lik = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
        if analytic_kl:
            kl = 0.5 * (scale.pow(2) + loc.pow(2) - 1 - 2 * scale.log()).sum(-1)
        else:
            log_q = (-0.5 * eps.pow(2) - scale.log() - 0.5 * LOG_2PI).sum(-1)
            log_p = (-0.5 * z.pow(2) - 0.5 * LOG_2PI).sum(-1)
            kl = log_q - log_p
        return log_lik, kl

    def loss(self, x: Tensor, analytic_kl: bool = False) -> Tensor:
        log_lik, kl = self.loss_terms(x, analytic_kl)
        return (kl - log_lik).sum()


def reference_step(model: ReferenceVAE, optimizer: torch.optim.Optimizer, x: Tensor) -> Tensor:
    optimizer.zero_grad(set_to_none=True)
    loss = model.loss(x)
    loss.backward()
    optimizer.step()
    return loss
