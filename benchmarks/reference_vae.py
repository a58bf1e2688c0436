"""The hand-written PyTorch VAE (and CVAE) that the benchmarks measure pyro-vae against, with
the MLP (``ReferenceVAE``) or the conv network (``ReferenceConvVAE``).

The same networks as ``pyro_vae.VAE`` (encoder x[, one-hot y] -> hidden -> 2 x z_dim with a
softplus scale, decoder z[, one-hot y] -> hidden reversed -> Bernoulli logits; the activation
between layers) and the same loss: the negative ELBO summed over the batch, with the Monte Carlo
KL log q(z|x) - log p(z) at the reparametrized draw (Trace_ELBO semantics) or the closed-form
Gaussian KL (TraceMeanField_ELBO semantics). ``ReferenceStackedVAE``: the same for stacked
stochastic layers. No Pyro anywhere: what a user writes by hand.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MIN_SCALE = 1e-4  # as pyro_vae.models.networks.GUIDE_MIN_SCALE
LOG_2PI = math.log(2 * math.pi)
ACTIVATIONS = {"softplus": nn.Softplus, "tanh": nn.Tanh, "relu": nn.ReLU}


def _mlp(sizes: list[int], activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class ReferenceVAE(nn.Module):
    """``num_classes > 0``: the conditional VAE (the one-hot label joins both networks' inputs)."""

    def __init__(
        self,
        x_dim: int = 784,
        z_dim: int = 50,
        hidden: tuple[int, ...] = (400,),
        activation: str = "softplus",
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.num_classes = num_classes
        self.encoder = _mlp([x_dim + num_classes, *hidden, 2 * z_dim], activation)
        self.decoder = _mlp([z_dim + num_classes, *reversed(hidden), x_dim], activation)

    def loss_terms(
        self, x: Tensor, y: Tensor | None = None, analytic_kl: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Per-image log p(x | z) and KL, each [B]."""
        onehot = F.one_hot(y, self.num_classes).to(x.dtype) if self.num_classes else None
        h = torch.cat([x, onehot], -1) if onehot is not None else x
        loc, raw = self.encoder(h).split(self.z_dim, dim=-1)
        scale = F.softplus(raw) + MIN_SCALE
        eps = torch.randn_like(loc)
        z = loc + scale * eps
        logits = self.decoder(torch.cat([z, onehot], -1) if onehot is not None else z)
        log_lik = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
        if analytic_kl:
            kl = 0.5 * (scale.pow(2) + loc.pow(2) - 1 - 2 * scale.log()).sum(-1)
        else:
            log_q = (-0.5 * eps.pow(2) - scale.log() - 0.5 * LOG_2PI).sum(-1)
            log_p = (-0.5 * z.pow(2) - 0.5 * LOG_2PI).sum(-1)
            kl = log_q - log_p
        return log_lik, kl

    def loss(self, x: Tensor, y: Tensor | None = None, analytic_kl: bool = False) -> Tensor:
        log_lik, kl = self.loss_terms(x, y, analytic_kl)
        return (kl - log_lik).sum()


def _sides(h: int, w: int, layers: int) -> list[tuple[int, int]]:
    sides = [(h, w)]
    for _ in range(layers):
        h, w = h // 2, w // 2  # kernel 4, stride 2, padding 1
        sides.append((h, w))
    return sides


class ReferenceConvVAE(ReferenceVAE):
    """The conv network of ``pyro_vae.VAE(network="conv")``, written out: Conv2d(k 4, s 2,
    p 1) + activation per layer, a linear head to loc and raw scale; the decoder a linear
    layer + activation to the last feature map, then the transposed convolutions back (output
    padding 1 where a side was odd), to Bernoulli logits. The loss is the MLP reference's."""

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        z_dim: int = 50,
        channels: tuple[int, ...] = (32, 64, 128),
        activation: str = "softplus",
        num_classes: int = 0,
    ) -> None:
        nn.Module.__init__(self)
        self.z_dim, self.num_classes, self.image_shape = z_dim, num_classes, image_shape
        c, h, w = image_shape
        sides = _sides(h, w, len(channels))
        act = ACTIVATIONS[activation]
        convs: list[nn.Module] = []
        for a, b in zip((c, *channels[:-1]), channels, strict=True):
            convs += [nn.Conv2d(a, b, 4, 2, 1), act()]
        self.convs = nn.Sequential(*convs, nn.Flatten())
        self.features = (channels[-1], *sides[-1])
        self.head = nn.Linear(math.prod(self.features) + num_classes, 2 * z_dim)
        self.fc = nn.Sequential(nn.Linear(z_dim + num_classes, math.prod(self.features)), act())
        deconvs: list[nn.Module] = []
        outs = (*reversed(channels[:-1]), c)
        for i, (a, b) in enumerate(zip(reversed(channels), outs, strict=True)):
            (ho, wo), (hi, wi) = sides[-2 - i], sides[-1 - i]
            deconvs.append(nn.ConvTranspose2d(a, b, 4, 2, 1, (ho - 2 * hi, wo - 2 * wi)))
            if i < len(channels) - 1:
                deconvs.append(act())
        self.deconvs = nn.Sequential(*deconvs)

    def encoder(self, h: Tensor) -> Tensor:
        x, onehot = h[..., : math.prod(self.image_shape)], h[..., math.prod(self.image_shape) :]
        features = self.convs(x.reshape(-1, *self.image_shape))
        return self.head(torch.cat([features, onehot], -1) if self.num_classes else features)

    def decoder(self, h: Tensor) -> Tensor:
        return self.deconvs(self.fc(h).reshape(-1, *self.features)).flatten(1)


def reference_step(
    model: ReferenceVAE | ReferenceStackedVAE,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor | None = None,
) -> Tensor:
    optimizer.zero_grad(set_to_none=True)
    loss = model.loss(x, y)
    loss.backward()
    optimizer.step()
    return loss


def _gaussian(net: nn.Module, h: Tensor, size: int) -> tuple[Tensor, Tensor]:
    loc, raw = net(h).split(size, dim=-1)
    return loc, F.softplus(raw) + MIN_SCALE


def _normal_log_prob(z: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    return (-0.5 * ((z - loc) / scale).pow(2) - scale.log() - 0.5 * LOG_2PI).sum(-1)


class ReferenceStackedVAE(nn.Module):
    """Stacked stochastic layers by hand, as ``pyro_vae.VAE(latent_dims=...)`` builds them:
    the guide bottom-up, q(z1 | x) then q(z_l+1 | z_l); the model top-down, z_L ~ N(0, I),
    p(z_l | z_l+1), then p(x | z1); every Gaussian a softplus scale over MIN_SCALE. The loss is
    the Monte Carlo ELBO (Trace_ELBO semantics) at one reparameterized draw per layer."""

    def __init__(
        self,
        x_dim: int = 784,
        latent_dims: tuple[int, ...] = (100, 50),
        hidden: tuple[int, ...] = (200, 200),
        latent_hidden: tuple[int, ...] = (100, 100),
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        self.latent_dims = latent_dims
        pairs = list(zip(latent_dims[:-1], latent_dims[1:], strict=True))
        self.encoder = _mlp([x_dim, *hidden, 2 * latent_dims[0]], activation)
        self.up = nn.ModuleList(_mlp([lo, *latent_hidden, 2 * hi], activation) for lo, hi in pairs)
        self.down = nn.ModuleList(
            _mlp([hi, *reversed(latent_hidden), 2 * lo], activation) for lo, hi in pairs
        )
        self.decoder = _mlp([latent_dims[0], *reversed(hidden), x_dim], activation)

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        dims = self.latent_dims
        loc, scale = _gaussian(self.encoder, x, dims[0])
        zs = [loc + scale * torch.randn_like(loc)]
        log_q = _normal_log_prob(zs[0], loc, scale)
        for net, size in zip(self.up, dims[1:], strict=True):
            loc, scale = _gaussian(net, zs[-1], size)
            zs.append(loc + scale * torch.randn_like(loc))
            log_q = log_q + _normal_log_prob(zs[-1], loc, scale)
        log_p = (-0.5 * zs[-1].pow(2) - 0.5 * LOG_2PI).sum(-1)
        for i in reversed(range(len(self.down))):
            loc, scale = _gaussian(self.down[i], zs[i + 1], dims[i])
            log_p = log_p + _normal_log_prob(zs[i], loc, scale)
        logits = self.decoder(zs[0])
        log_lik = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
        return (log_q - log_p - log_lik).sum()
