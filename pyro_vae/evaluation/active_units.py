"""Active units (Burda, Grosse & Salakhutdinov 2016, section 5.2): how many latent coordinates
the model uses.

A latent unit u is active when the variance over the data of its posterior mean,
Var_x E_q[z_u | x], exceeds 0.01: an inactive unit's posterior is the same for every image,
so the decoder cannot read anything from it (posterior collapse, unit by unit).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from pyro_vae.models.vae import VAE, labels_for

# The paper's threshold on Var_x E_q[z_u | x].
ACTIVE_THRESHOLD = 0.01


@torch.no_grad()
def active_units(
    vae: VAE, batches: Iterable[tuple[Tensor, Tensor]], threshold: float = ACTIVE_THRESHOLD
) -> dict:
    """The number of active units of ``vae`` on the images of ``batches`` (x [B, D], y [B]).

    Returns ``active`` (the count), ``num_units`` (z_dim), ``threshold``, ``num_images`` and
    ``variances``: Var_x E_q[z_u | x] per unit, in the order of z. The variance is over the
    images given (the paper's code used 500 training images; pyro-vae evaluates on the test
    set unless told otherwise).
    """
    means = [vae.encode(x, labels_for(vae, y))[0].double() for x, y in batches]
    if not means:
        raise ValueError("no images to measure the active units on")
    loc = torch.cat(means)
    if loc.shape[0] < 2:
        raise ValueError("the variance over the data needs at least 2 images")
    variances = loc.var(0)
    return {
        "active": int((variances > threshold).sum()),
        "num_units": int(loc.shape[1]),
        "threshold": threshold,
        "num_images": int(loc.shape[0]),
        "variances": variances.tolist(),
    }
