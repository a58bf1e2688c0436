"""Active units (Burda, Grosse & Salakhutdinov 2016, section 5.2): how many latent coordinates
the model uses, per stochastic layer.

A latent unit u is active when the variance over the data of its posterior mean,
Var_x E_q[z_u | x], exceeds 0.01: an inactive unit's posterior is the same for every image,
so the decoder cannot read anything from it (posterior collapse, unit by unit).

For stacked latents the mean of layer l is that of q(z_l | z_l-1) at one draw of the layers
below from the guide, as the authors' code measures it (``iwae.get_units_variances``: the means
of each q layer at the guide's samples of the layer before). For one layer it is the encoder's
loc, with no draw at all.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyro.poutine as poutine
import torch
from torch import Tensor

from pyro_vae.models.user_model import UserModel
from pyro_vae.models.vae import VAE, labels_for

# The paper's threshold on Var_x E_q[z_u | x].
ACTIVE_THRESHOLD = 0.01


def guide_means(vae: VAE | UserModel, x: Tensor, y: Tensor | None) -> dict[str, Tensor]:
    """The mean of every latent site of one run of the guide, site -> [B, d] (each layer's at
    the guide's draw of the layers it depends on), in the guide's order."""
    trace = poutine.trace(vae.guide).get_trace(x, y)
    return {
        name: site["fn"].mean.reshape(x.shape[0], -1)
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and name in vae.sites
    }


@torch.no_grad()
def active_units(
    vae: VAE | UserModel,
    batches: Iterable[tuple[Tensor, Tensor]],
    threshold: float = ACTIVE_THRESHOLD,
) -> dict:
    """The number of active units of ``vae`` on the images of ``batches`` (x [B, D], y [B]),
    per latent layer. Stacked latents draw from the guide (seed the caller's RNG).

    Returns ``layers``: per latent site, bottom first, its ``site``, ``active`` count,
    ``num_units`` and ``variances`` (Var_x E_q[z_u | x] per unit, in the order of the layer);
    and, over all layers, ``active`` and ``num_units`` (for one layer its own, with its
    ``variances``), ``threshold`` and ``num_images``. The variance is over the images given
    (the paper's code used 500 training images; pyro-vae evaluates on the test set unless
    told otherwise).
    """
    parts: dict[str, list[Tensor]] = {}
    for x, y in batches:
        for name, mean in guide_means(vae, x, labels_for(vae, y)).items():
            parts.setdefault(name, []).append(mean.double())
    if not parts:
        raise ValueError("no images to measure the active units on")
    layers = []
    for name in vae.sites:
        loc = torch.cat(parts[name])
        if loc.shape[0] < 2:
            raise ValueError("the variance over the data needs at least 2 images")
        variances = loc.var(0)
        layers.append(
            {
                "site": name,
                "active": int((variances > threshold).sum()),
                "num_units": int(loc.shape[1]),
                "variances": variances.tolist(),
            }
        )
    out = {
        "active": sum(layer["active"] for layer in layers),
        "num_units": sum(layer["num_units"] for layer in layers),
        "threshold": threshold,
        "num_images": int(loc.shape[0]),
        "layers": layers,
    }
    if len(layers) == 1:
        out["variances"] = layers[0]["variances"]
    return out


def describe_active_units(result: dict) -> str:
    """``active units: 21 of 50 (...)``, or per layer ``active units: z1 37 of 100, z2 8 of
    50 (...)``: the line ``pyro-vae evaluate`` prints."""
    layers = result["layers"]
    if len(layers) == 1:
        counts = f"{result['active']} of {result['num_units']}"
    else:
        counts = ", ".join(f"{u['site']} {u['active']} of {u['num_units']}" for u in layers)
    return (
        f"active units: {counts} (Var_x E_q[z_u | x] > {result['threshold']:g} over "
        f"{result['num_images']} test images)"
    )
