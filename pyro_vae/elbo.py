"""The ELBO computed on the device from Pyro traces, split into its reconstruction and KL terms.

``elbo_terms`` is the same estimator as ``pyro.infer.Trace_ELBO`` (``analytic_kl=False``) or
``pyro.infer.TraceMeanField_ELBO`` (``analytic_kl=True``), with vectorized particles, but it never
reads a value back to the host (Pyro's ELBOs call ``.item()`` on every site), and it returns the
per-image terms that the training metrics and figures need. The tests check it against Pyro's
own ELBOs on the same random draws.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor
from torch.distributions import kl_divergence

PARTICLE_PLATE = "num_particles_vectorized"


@dataclass
class ELBOTerms:
    """One ELBO estimate on a batch of B images (nats)."""

    loss: Tensor  # scalar: -ELBO summed over the batch, mean over particles; differentiable
    log_lik: Tensor  # [B] E_q[log p(x | z)] per image (mean over particles)
    kl: Tensor  # [B] KL(q(z | x) || p(z)) per image: analytic, or its Monte Carlo estimate
    analytic_kl: bool  # True when every latent site used an analytic KL

    @property
    def kl_kind(self) -> str:
        return "analytic" if self.analytic_kl else "monte-carlo"


def get_traces(
    model: Callable, guide: Callable, *args, num_particles: int = 1, particle_dim: int = -2
) -> tuple[poutine.Trace, poutine.Trace]:
    """Runs the guide, then the model replayed on the guide's draws, like Pyro's ELBOs.

    With ``num_particles > 1`` both run inside an outer plate at ``particle_dim`` (to the left
    of the data plate), so every site gains a leading particle dimension.
    """
    if num_particles > 1:
        model = pyro.plate(PARTICLE_PLATE, num_particles, dim=particle_dim)(model)
        guide = pyro.plate(PARTICLE_PLATE, num_particles, dim=particle_dim)(guide)
    guide_trace = poutine.trace(guide).get_trace(*args)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
    # Plates record "sample" sites of their own (subsample indices); they are not variables.
    return prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)


def _site_log_prob(site: dict) -> Tensor:
    log_prob = site["fn"].log_prob(site["value"])
    return scale_and_mask(log_prob, site["scale"], site["mask"])


def _per_image(t: Tensor | float, num_particles: int, batch: int, ref: Tensor) -> Tensor:
    """A site term of shape [P, B], [B] or a scalar -> [B] (mean over particles)."""
    t = torch.as_tensor(t, dtype=ref.dtype, device=ref.device)
    if num_particles > 1 and t.dim() >= 2:
        t = t.mean(0)
    return t.expand(batch) if t.dim() == 0 else t.reshape(batch)


def elbo_terms(
    model: Callable,
    guide: Callable,
    *args,
    num_particles: int = 1,
    analytic_kl: bool = False,
) -> ELBOTerms:
    """Estimates the ELBO of ``model``/``guide`` on ``args`` (e.g. ``x, y``).

    Observed sites make up log p(x | z); latent sites make up the KL, as
    ``kl_divergence(q, p)`` where ``analytic_kl`` and one is registered, else log q(z) - log p(z)
    at the guide's draw (exactly Pyro's TraceMeanField_ELBO fallback).
    """
    model_trace, guide_trace = get_traces(model, guide, *args, num_particles=num_particles)
    log_lik = kl = None
    used_analytic = True
    batch = None
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample":
            continue
        if site["is_observed"]:
            term = _site_log_prob(site)
            log_lik = term if log_lik is None else log_lik + term
            continue
        guide_site = guide_trace.nodes[name]
        term = None
        if analytic_kl:
            try:
                term = scale_and_mask(
                    kl_divergence(guide_site["fn"], site["fn"]),
                    guide_site["scale"],
                    guide_site["mask"],
                )
            except NotImplementedError:
                pass
        if term is None:
            used_analytic = False
            term = _site_log_prob(guide_site) - _site_log_prob(site)
        kl = term if kl is None else kl + term
    if log_lik is None or kl is None:
        raise ValueError("the model needs an observed site and a latent site shared with the guide")
    batch = log_lik.shape[-1]
    log_lik = _per_image(log_lik, num_particles, batch, log_lik)
    kl = _per_image(kl, num_particles, batch, log_lik)
    loss = kl.sum() - log_lik.sum()
    return ELBOTerms(loss=loss, log_lik=log_lik, kl=kl, analytic_kl=analytic_kl and used_analytic)
