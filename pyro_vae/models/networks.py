"""Encoder and decoder networks: PyroModules around plain torch layers; ``NETWORKS`` by name.

The contract every encoder and decoder keeps (the built-in ones here, and a user's own, see
``custom_networks.py``), for images of shape (C, H, W), D = C * H * W values each:

- encoder: x [B, C, H, W] (and the one-hot label [B, num_classes] for the conditional VAE)
  -> loc, scale, each [B, z_dim], scale > 0;
- decoder: z [..., B, z_dim] (and the one-hot label [B, num_classes]) -> the likelihood's raw
  parameters [..., B, params_per_pixel * D]: parameter p of value (c, h, w) at
  p * D + (c * H + h) * W + w. The leading dims are the ELBO's vectorized particles and the
  NLL's sample plate.

The layers are ordinary torch modules held by a PyroModule (an encoder or decoder class here):
when the PyroModule reads them inside a model or guide, Pyro issues the ``pyro.module`` statement
that lets classic ``pyro.infer.SVI`` find their weights, while the ELBO-as-module path
(``pyro.settings.set(module_local_params=True)``) sees ordinary ``nn.Parameter`` s. Plain layers
rather than ``PyroModule[nn.Linear]`` save a Pyro context and a param message per weight per call:
0.6 ms of a 5.9 ms training step on the CPU (measured, batch 128).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import Tensor, nn

from pyro_vae.models.config import VAEConfig
from pyro_vae.runtime.settings import publish_registry

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "softplus": nn.Softplus,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
}
publish_registry("activations", ACTIVATIONS)  # the choices of VAEConfig.activation

# Keeps the guide's scale away from 0, where log q(z | x) would blow up. Smaller than
# likelihoods.LIKELIHOOD_MIN_SCALE: a posterior may be far narrower than the noise on a pixel.
GUIDE_MIN_SCALE = 1e-4
# The convolutions: kernel 4, stride 2, padding 1 halve each side (floor(S / 2)), as in the
# DCGAN-style encoders of Pythae's and AntixK's baselines; the transposed convolutions double it
# back, with an output padding of 1 where the side was odd (28 -> 14 -> 7 -> 3 and back).
KERNEL, STRIDE, PADDING = 4, 2, 1


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def mlp(in_dim: int, hidden_dims: tuple[int, ...], out_dim: int, activation: str) -> nn.Module:
    """``Linear -> act -> ... -> Linear``; the last layer has no activation."""
    _activation(activation)
    layers: list[nn.Module] = []
    dims = (in_dim, *hidden_dims)
    for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
        layers += [nn.Linear(d_in, d_out), _activation(activation)]
    layers.append(nn.Linear(dims[-1], out_dim))
    return nn.Sequential(*layers)


def with_label(h: Tensor, y_onehot: Tensor | None) -> Tensor:
    """Appends the one-hot label to a network input, broadcasting the leading dims of both
    (particles; the labels a semi-supervised guide enumerates).

    h: [..., B, D], y_onehot: [..., B, C] or None -> [..., B, D + C].
    """
    if y_onehot is None:
        return h
    lead = torch.broadcast_shapes(h.shape[:-1], y_onehot.shape[:-1])
    y_onehot = y_onehot.to(h.dtype).expand(*lead, y_onehot.shape[-1])
    return torch.cat([h.expand(*lead, h.shape[-1]), y_onehot], dim=-1)


def loc_and_scale(out: Tensor, z_dim: int) -> tuple[Tensor, Tensor]:
    """[..., 2 * z_dim] -> loc, scale; softplus rather than exp: positive by construction
    without overflow for large inputs."""
    loc, raw_scale = out.split(z_dim, dim=-1)
    return loc, F.softplus(raw_scale) + GUIDE_MIN_SCALE


class Encoder(PyroModule):
    """The MLP: x [..., B, C, H, W] (and one-hot y [B, K]) -> loc, scale, each [..., B, z_dim].

    ``net`` takes the flattened image [..., B, x_dim] (with the label appended)."""

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        hidden_dims: tuple[int, ...],
        activation: str,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.net = mlp(x_dim + num_classes, hidden_dims, 2 * z_dim, activation)

    def forward(self, x: Tensor, y_onehot: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = x.flatten(-3)
        if y_onehot is not None and y_onehot.dim() > x.dim():
            out = self._every_label(x, y_onehot)
        else:
            out = self.net(with_label(x, y_onehot))
        return loc_and_scale(out, self.z_dim)

    def _every_label(self, x: Tensor, y_onehot: Tensor) -> Tensor:
        """The same network on x [B, D] under more labels than images (y [E, ..., B, C], the
        labels a semi-supervised guide enumerates): the first layer's x part is computed once,
        not E times (W [x, y] = W_x x + W_y y)."""
        first, d = self.net[0], x.shape[-1]
        h = F.linear(x, first.weight[:, :d], first.bias)
        h = h + F.linear(y_onehot.to(x.dtype), first.weight[:, d:])
        return self.net[1:](h)


class LatentLayer(Encoder):
    """One stochastic layer's Gaussian given the layer next to it: p(z_l | z_l+1) in the model,
    q(z_l+1 | z_l) in the guide. z_in [..., B, in_dim] (and one-hot y [B, C]) -> loc, scale,
    each [..., B, out_dim]; the encoder's two heads (a softplus scale above GUIDE_MIN_SCALE,
    where the IWAE paper's authors take exp)."""

    def forward(self, z: Tensor, y_onehot: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return loc_and_scale(self.net(with_label(z, y_onehot)), self.z_dim)

    def _every_label(self, x: Tensor, y_onehot: Tensor) -> Tensor:
        """The same network on x [B, D] under more labels than images (y [E, ..., B, C], the
        labels a semi-supervised guide enumerates): the first layer's x part is computed once,
        not E times (W [x, y] = W_x x + W_y y)."""
        net = self.net
        first = net[0]
        d = x.shape[-1]
        h = F.linear(x, first.weight[:, :d], first.bias)
        h = h + F.linear(y_onehot.to(x.dtype), first.weight[:, d:])
        return net[1:](h)


class Decoder(PyroModule):
    """The MLP: z [..., B, z_dim] (and one-hot y [B, K]) -> raw parameters [..., B, out_dim]."""

    def __init__(
        self,
        z_dim: int,
        out_dim: int,
        hidden_dims: tuple[int, ...],
        activation: str,
        num_classes: int,
    ) -> None:
        super().__init__()
        # The decoder mirrors the encoder: hidden sizes in reverse order.
        self.net = mlp(z_dim + num_classes, tuple(reversed(hidden_dims)), out_dim, activation)
        # The widest tensor per image: what the NLL's chunks are sized by.
        self.widest = max((out_dim, *hidden_dims))

    def forward(self, z: Tensor, y_onehot: Tensor | None = None) -> Tensor:
        return self.net(with_label(z, y_onehot))


def conv_sides(image_shape: tuple[int, int, int], channels: tuple[int, ...]) -> list[tuple]:
    """(H_i, W_i) after each stride-2 convolution, the image's first: [(H, W), ..., (H_L, W_L)].
    ValueError when the image is too small for that many layers."""
    _, h, w = image_shape
    sides = [(h, w)]
    for _ in channels:
        h, w = (h + 2 * PADDING - KERNEL) // STRIDE + 1, (w + 2 * PADDING - KERNEL) // STRIDE + 1
        sides.append((h, w))
    if not channels or min(sides[-1]) < 1:
        need = 2 ** len(channels)
        raise ValueError(
            f"the conv network's {len(channels)} stride-2 layers (conv_channels "
            f"{','.join(map(str, channels)) or 'none'}) need images of at least {need}x{need}, "
            f"got {image_shape[1]}x{image_shape[2]}; give fewer --conv-channels (at least one)"
        )
    return sides


class ConvEncoder(PyroModule):
    """Strided convolutions, then a linear head: x [..., B, C, H, W] (and one-hot y [B, K])
    -> loc, scale [..., B, z_dim]. The label joins the flattened features before the head."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        z_dim: int,
        channels: tuple[int, ...],
        activation: str,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.z_dim, self.image_shape = z_dim, tuple(image_shape)
        h, w = conv_sides(self.image_shape, channels)[-1]
        layers: list[nn.Module] = []
        for c_in, c_out in zip((image_shape[0], *channels[:-1]), channels, strict=True):
            layers += [nn.Conv2d(c_in, c_out, KERNEL, STRIDE, PADDING), _activation(activation)]
        self.convs = nn.Sequential(*layers)
        self.head = nn.Linear(channels[-1] * h * w + num_classes, 2 * z_dim)

    def forward(self, x: Tensor, y_onehot: Tensor | None = None) -> tuple[Tensor, Tensor]:
        lead = x.shape[:-3]  # conv layers take [N, C, H, W]: leading dims fold into N
        h = self.convs(x.reshape(-1, *self.image_shape)).flatten(1)
        return loc_and_scale(self.head(with_label(h.reshape(*lead, -1), y_onehot)), self.z_dim)


class ConvDecoder(PyroModule):
    """The encoder mirrored: a linear layer to the last feature map, then transposed
    convolutions up to ``params_per_pixel`` maps per channel at full size: z [..., B, z_dim]
    (and one-hot y [B, K], joined to z) -> [..., B, params_per_pixel * C * H * W]."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        z_dim: int,
        channels: tuple[int, ...],
        activation: str,
        num_classes: int,
        params_per_pixel: int,
    ) -> None:
        super().__init__()
        sides = conv_sides(tuple(image_shape), channels)
        self.features = (channels[-1], *sides[-1])
        self.fc = nn.Sequential(
            nn.Linear(z_dim + num_classes, math.prod(self.features)), _activation(activation)
        )
        outs = (*reversed(channels[:-1]), params_per_pixel * image_shape[0])
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(reversed(channels), outs, strict=True)):
            (h_out, w_out), (h_in, w_in) = sides[-2 - i], sides[-1 - i]
            pad = (h_out - STRIDE * h_in, w_out - STRIDE * w_in)  # 0, or 1 for an odd side
            layers.append(nn.ConvTranspose2d(c_in, c_out, KERNEL, STRIDE, PADDING, pad))
            if i < len(channels) - 1:
                layers.append(_activation(activation))
        self.deconvs = nn.Sequential(*layers)
        # The widest tensor per image (the NLL's chunks are sized by it): a layer's output.
        self.widest = max(
            math.prod(self.features),
            *(c * h * w for c, (h, w) in zip(outs, sides[-2::-1], strict=True)),
        )

    def forward(self, z: Tensor, y_onehot: Tensor | None = None) -> Tensor:
        lead = z.shape[:-1]
        h = self.fc(with_label(z, y_onehot)).reshape(-1, *self.features)
        return self.deconvs(h).reshape(*lead, -1)


def _mlp_networks(c: VAEConfig, out_dim: int, params_per_pixel: int) -> tuple[nn.Module, ...]:
    z1 = c.layers[0]  # the latent layer next to x: z itself for one layer
    encoder = Encoder(c.x_dim, z1, c.hidden_dims, c.activation, c.num_classes)
    return encoder, Decoder(z1, out_dim, c.hidden_dims, c.activation, c.num_classes)


def _conv_networks(c: VAEConfig, out_dim: int, params_per_pixel: int) -> tuple[nn.Module, ...]:
    args = (c.image_shape, c.layers[0], c.conv_channels, c.activation, c.num_classes)
    return ConvEncoder(*args), ConvDecoder(*args, params_per_pixel)


# name -> (config, decoder outputs, outputs per pixel) -> (encoder, decoder).
NETWORKS: dict[str, Callable[[VAEConfig, int, int], tuple[nn.Module, ...]]] = {
    "mlp": _mlp_networks,
    "conv": _conv_networks,
}
publish_registry("networks", NETWORKS)  # the choices of VAEConfig.network


def build_networks(config: VAEConfig, params_per_pixel: int) -> tuple[nn.Module, nn.Module]:
    """The one place a network name becomes an encoder and a decoder."""
    if config.network not in NETWORKS:
        raise ValueError(
            f"unknown network {config.network!r}; choose one of {sorted(NETWORKS)}, or pass "
            "encoder= and decoder= modules"
        )
    encoder, decoder = NETWORKS[config.network](
        config, params_per_pixel * config.x_dim, params_per_pixel
    )
    return encoder, decoder
