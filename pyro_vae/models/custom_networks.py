"""The user's own encoder and decoder: any ``nn.Module`` pair that keeps the networks' contract.

``VAE(encoder=my_encoder, decoder=my_decoder, image_shape=(C, H, W))`` takes them; both or
neither. What the VAE calls, for images of D = C * H * W values:

- ``encoder(x)`` with x [B, C, H, W] float -> ``(loc, scale)``, each [B, z_dim], scale > 0;
  for the conditional VAE (``num_classes > 0``) ``encoder(x, y_onehot)`` with y_onehot
  [B, num_classes];
- ``decoder(z)`` with z [..., B, z_dim] -> the likelihood's raw parameters
  [..., B, params_per_pixel * D] (a flat vector per image: parameter p of value (c, h, w) at
  p * D + (c * H + h) * W + w); ``decoder(z, y_onehot)`` for the conditional VAE, with
  y_onehot [B, num_classes] (``networks.with_label`` broadcasts it to z's leading dims). The
  leading dims (the ELBO's vectorized particles, the NLL's sample plate) must be kept: a conv
  decoder folds them into its batch and restores them, as ``networks.ConvDecoder`` does.

The semi-supervised VAE enumerates the labels its guide draws: the encoder and decoder then
see every label beside every image, folded into the batch (y_onehot [B', num_classes]), so the
contract above holds for them too.

The pair is checked once, when the VAE is built, on a batch of zeros (the modules in eval mode
for that call, so batch-norm statistics and dropout are left alone), with a one-line error when
an output does not fit. Their parameters train with the VAE's, in both of Pyro's modes.
"""

from __future__ import annotations

import torch
from pyro.nn import PyroModule
from torch import Tensor, nn

from pyro_vae.models.config import VAEConfig

# The batch of the construction check, and the particle dim the decoder must keep.
CHECK_BATCH, CHECK_PARTICLES = 2, 3


class CustomEncoder(PyroModule):
    """A user's encoder as the guide calls every encoder: ``forward(x, y_onehot=None)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, y_onehot: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if y_onehot is None:
            return self.net(x)
        if y_onehot.dim() == 2:
            return self.net(x, y_onehot)
        # More labels than images (y [E, ..., B, K], the labels a semi-supervised guide
        # enumerates): the contract's [B', C, H, W] and [B', K], every label with its image.
        lead = y_onehot.shape[:-1]
        images = x.expand(*lead, *x.shape[-3:]).reshape(-1, *x.shape[-3:])
        loc, scale = self.net(images, y_onehot.reshape(-1, y_onehot.shape[-1]))
        return loc.reshape(*lead, -1), scale.reshape(*lead, -1)


class CustomDecoder(PyroModule):
    """A user's decoder as the model calls every decoder: ``forward(z, y_onehot=None)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, z: Tensor, y_onehot: Tensor | None = None) -> Tensor:
        if y_onehot is None:
            return self.net(z)
        if y_onehot.dim() == 2:
            return self.net(z, y_onehot)
        # Enumerated labels (y [E, ..., B, K]): z and y broadcast and folded to [B', .].
        lead = torch.broadcast_shapes(z.shape[:-1], y_onehot.shape[:-1])
        flat_z = z.expand(*lead, z.shape[-1]).reshape(-1, z.shape[-1])
        flat_y = y_onehot.expand(*lead, y_onehot.shape[-1]).reshape(-1, y_onehot.shape[-1])
        return self.net(flat_z, flat_y).reshape(*lead, -1)


def custom_networks(
    encoder: nn.Module, decoder: nn.Module, config: VAEConfig, params_per_pixel: int
) -> tuple[CustomEncoder, CustomDecoder]:
    """The pair wrapped for the model and guide, after :func:`check_networks`."""
    for name, net in (("encoder", encoder), ("decoder", decoder)):
        if not isinstance(net, nn.Module):
            raise TypeError(f"{name} must be a torch.nn.Module, got {type(net).__name__}")
    # The plain modules are checked, not the wrappers: a PyroModule called outside the VAE
    # would put its weights in Pyro's param store under a name of its own.
    check_networks(encoder, decoder, config, params_per_pixel)
    return CustomEncoder(encoder), CustomDecoder(decoder)


def _shape(t: object) -> str:
    if torch.is_tensor(t):
        return str(list(t.shape))
    if isinstance(t, tuple | list):
        return "(" + ", ".join(_shape(v) for v in t) + ")"
    return type(t).__name__


def _device_dtype(net: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(iter(net.parameters()), None)
    return (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)


def _call(net: nn.Module, name: str, what: str, *args: Tensor | None, hint: str = "") -> object:
    """One forward in eval mode (training flags restored), under no_grad."""
    modes = {m: m.training for m in net.modules()}
    net.eval()
    arg, y_onehot = args
    try:
        with torch.no_grad():
            return net(arg) if y_onehot is None else net(arg, y_onehot)
    except Exception as e:  # noqa: BLE001 - any failure is the user's network not fitting
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(
            f"the {name} fails on {what} ({type(e).__name__}: {first}){hint}"
        ) from None
    finally:
        for m, mode in modes.items():
            m.train(mode)


def check_networks(
    encoder: nn.Module, decoder: nn.Module, config: VAEConfig, params_per_pixel: int
) -> None:
    """ValueError (one line) when the encoder's or the decoder's output does not fit the
    images ``config.image_shape`` and ``config.z_dim`` (see the module's contract); the
    modules are called as the VAE calls them (with the one-hot label when conditional)."""
    c, b, k = config, CHECK_BATCH, CHECK_PARTICLES
    z1 = c.layers[0]  # the latent layer next to x: z_dim for one layer
    zname = "z1's size" if c.stacked else "z_dim"
    label = f" and y_onehot [{b}, {c.num_classes}]" if c.num_classes else ""
    device, dtype = _device_dtype(encoder)
    y = torch.zeros(b, c.num_classes, device=device, dtype=dtype) if c.num_classes else None
    x = torch.zeros(b, *c.image_shape, device=device, dtype=dtype)
    what = f"x {list(x.shape)}{label}"
    out = _call(encoder, "encoder", what, x, y)
    pair = isinstance(out, tuple | list) and len(out) == 2 and all(map(torch.is_tensor, out))
    if not pair or any(tuple(t.shape) != (b, z1) for t in out):
        raise ValueError(
            f"the encoder returned {_shape(out)} for {what}; it must return (loc, scale), each "
            f"[batch, {zname}] = [{b}, {z1}], for the images {_hw(c.image_shape)}"
        )
    device, dtype = _device_dtype(decoder)
    y = y.to(device, dtype) if y is not None else None
    width = params_per_pixel * c.x_dim
    keep = "; keep z's leading dims: fold them into the batch and restore them"
    for lead in ((), (k,)):
        z = torch.zeros(*lead, b, z1, device=device, dtype=dtype)
        what = f"z {list(z.shape)}{label}"
        out = _call(decoder, "decoder", what, z, y, hint=keep if lead else "")
        if not torch.is_tensor(out) or tuple(out.shape) != (*lead, b, width):
            raise ValueError(
                f"the decoder returned {_shape(out)} for {what}; it must return "
                f"[..., batch, {params_per_pixel} x C*H*W] = {[*lead, b, width]} raw likelihood "
                f"parameters for the images {_hw(c.image_shape)}, flattened"
                f"{keep if lead else ''}"
            )


def _hw(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))
