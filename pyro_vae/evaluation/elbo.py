"""Evaluation of a trained VAE: the test ELBO (either estimator), per image, in nats and in
bits per dimension (``units.py``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from pyro_vae.inference.objectives import Objective, make_objective
from pyro_vae.inference.units import data_label, in_units
from pyro_vae.models.user_model import UserModel
from pyro_vae.models.vae import VAE, labels_for

# The two ELBO estimators a test -ELBO can use (evaluate --elbo): names of the objectives.
ESTIMATORS = ("trace", "meanfield")


@torch.no_grad()
def evaluate_elbo(
    vae: VAE | UserModel,
    batches: Iterable[tuple[Tensor, Tensor]],
    estimator: Objective | str = "trace",
    num_particles: int = 1,
    *,
    data_mode: str | None = None,
    all_reduce: Callable[[Tensor], Tensor] | None = None,
) -> dict:
    """Mean -ELBO, reconstruction term -E_q log p(x|z) and KL per image over ``batches``, by
    ``estimator`` (an objective, or its name with ``num_particles``), unweighted.

    ``all_reduce``: in a multi-process run, sums the per-rank sums over the ranks (each rank
    evaluates its own part of the test set) before the one host read.

    ``neg_elbo``, ``recon`` and ``kl`` are nats of the model on the data as given. ``data_mode``
    is the data mode the batches were made with (``ImageData.data_mode``): the units fields
    (``units.in_units``) then say which data the -ELBO is about and give it as a bound on that
    data's -log P, in nats per image and bits per dimension. Sums stay on the device; the host
    reads them once at the end.
    """
    if isinstance(estimator, str):
        estimator = make_objective(estimator, num_particles)
    kinds, estimators = set(), {}
    sums = torch.zeros(3, dtype=torch.float64, device=next(vae.parameters()).device)
    for x, y in batches:
        t = estimator.terms(vae.model, vae.guide, x, labels_for(vae, y))
        count = torch.tensor(x.shape[0], device=sums.device)
        sums += torch.stack([-t.log_lik.sum(), t.kl.sum(), count]).double()
        kinds.add(t.kl_kind)
        estimators = t.estimators
    if all_reduce is not None:
        all_reduce(sums)
    recon, kl, n = sums.tolist()
    if not n:
        raise ValueError("no data to evaluate")
    recon, kl, n = recon / n, kl / n, int(n)
    return {
        "estimator": estimator.label,
        "neg_elbo": recon + kl,
        "recon": recon,
        "kl": kl,
        "kl_kind": kinds.pop() if len(kinds) == 1 else "mixed" if kinds else "unknown",
        "estimators": estimators,  # latent site -> "analytic" or "monte-carlo"
        "num_images": n,
        "num_particles": estimator.num_particles,
        **in_units(recon + kl, vae.config.x_dim, data_label(data_mode, vae.likelihood)),
    }
