"""Evaluation of a trained VAE: the test ELBO (either estimator), per image, in nats."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from .elbo import elbo_terms
from .model import VAE

ESTIMATORS = {"trace": "Trace_ELBO", "meanfield": "TraceMeanField_ELBO"}


def labels_for(vae: VAE, y: Tensor) -> Tensor | None:
    """The labels the model takes: y for a conditional VAE, None otherwise."""
    return y if vae.config.num_classes else None


@torch.no_grad()
def evaluate_elbo(
    vae: VAE, batches: Iterable[tuple[Tensor, Tensor]], elbo: str = "trace", num_particles: int = 1
) -> dict:
    """Mean -ELBO, reconstruction term -E_q log p(x|z) and KL per image over ``batches``.

    Sums stay on the device; the host reads them once at the end.
    """
    analytic = elbo == "meanfield"
    kinds = set()
    n = 0
    sums = None
    for x, y in batches:
        t = elbo_terms(
            vae.model,
            vae.guide,
            x,
            labels_for(vae, y),
            num_particles=num_particles,
            analytic_kl=analytic,
        )
        s = torch.stack([-t.log_lik.sum(), t.kl.sum()]).double()
        sums = s if sums is None else sums + s
        kinds.add(t.kl_kind)
        n += x.shape[0]
    if sums is None:
        raise ValueError("no data to evaluate")
    recon, kl = (sums / n).tolist()
    return {
        "estimator": ESTIMATORS[elbo],
        "neg_elbo": recon + kl,
        "recon": recon,
        "kl": kl,
        "kl_kind": kinds.pop() if len(kinds) == 1 else "mixed",
        "num_images": n,
        "num_particles": num_particles,
    }
