"""The ELBO (and the IWAE bound) computed on the device from Pyro traces, split into its
reconstruction and KL terms.

``elbo_terms`` is the same estimator as ``pyro.infer.Trace_ELBO`` (``analytic_kl=False``) or
``pyro.infer.TraceMeanField_ELBO`` (``analytic_kl=True``), with vectorized particles, but it never
reads a value back to the host (Pyro's ELBOs call ``.item()`` on every site), and it returns the
per-image terms that the training metrics and figures need. The tests check it against Pyro's
own ELBOs on the same random draws.
"""

from __future__ import annotations

import math
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


def _data_frame_size(site: dict) -> int | None:
    """The size of the plate at dim -1 around a site (the data plate), None outside one."""
    sizes = [f.size for f in site["cond_indep_stack"] if f.vectorized and f.dim == -1]
    return sizes[0] if sizes else None


def check_traces(model_trace: poutine.Trace, guide_trace: poutine.Trace) -> int:
    """Raises ValueError where ``elbo_terms`` would be wrong; returns the batch size B.

    The per-image terms need: every sample site inside one data plate at dim -1 (a global
    latent would be counted once per image); every latent model site drawn by the guide; and
    every guide draw reparameterized (there is no score-function term here).
    """
    sites = [s for s in model_trace.nodes.values() if s["type"] == "sample"]
    observed = [s for s in sites if s["is_observed"]]
    if not observed:
        raise ValueError("the model has no observed site: elbo_terms needs obs=x somewhere")
    batch = _data_frame_size(observed[0])
    for site in [*sites, *(s for s in guide_trace.nodes.values() if s["type"] == "sample")]:
        size = _data_frame_size(site)
        if size is None or size != batch:
            raise ValueError(
                f"site {site['name']!r} lies outside the data plate at dim -1 (of size {batch}): "
                "its log-density is not per image and elbo_terms would miscount it; use "
                "pyro.infer.Trace_ELBO for models with global latent variables"
            )
    for site in sites:
        if site["is_observed"]:
            continue
        name = site["name"]
        if name not in guide_trace.nodes or guide_trace.nodes[name]["type"] != "sample":
            raise ValueError(
                f"the model's latent site {name!r} is not drawn by the guide: every latent "
                "site needs a guide site of the same name"
            )
        fn = guide_trace.nodes[name]["fn"]
        if not getattr(fn, "has_rsample", False):
            raise ValueError(
                f"the guide's site {name!r} ({type(fn).__name__}) is not reparameterized: "
                "elbo_terms has no score-function term; use pyro.infer.Trace_ELBO, which adds it"
            )
    return batch


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
    at the guide's draw (exactly Pyro's TraceMeanField_ELBO fallback). Raises ValueError for a
    model/guide pair it would get wrong (see :func:`check_traces`).
    """
    model_trace, guide_trace = get_traces(model, guide, *args, num_particles=num_particles)
    batch = check_traces(model_trace, guide_trace)
    log_lik = kl = None
    used_analytic = True
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
    if kl is None:
        raise ValueError("the model has no latent site: there is no KL term to estimate")
    log_lik = _per_image(log_lik, num_particles, batch, log_lik)
    kl = _per_image(kl, num_particles, batch, log_lik)
    loss = kl.sum() - log_lik.sum()
    return ELBOTerms(loss=loss, log_lik=log_lik, kl=kl, analytic_kl=analytic_kl and used_analytic)


OBJECTIVES = {
    "trace": "Trace_ELBO",
    "meanfield": "TraceMeanField_ELBO",
    "iwae": "IWAE (RenyiELBO, alpha=0)",
}


def iwae_terms(model: Callable, guide: Callable, *args, num_particles: int = 5) -> ELBOTerms:
    """The importance-weighted bound of Burda et al. (2016), per image, K = ``num_particles``::

        L_K = log (1/K) sum_k p(x, z_k) / q(z_k | x),   z_k ~ q(z | x)

    ``loss`` = -sum over images of L_K; its gradient is the IWAE gradient (the normalized
    weights times the gradient of each log-weight), as ``pyro.infer.RenyiELBO(alpha=0,
    vectorize_particles=True)`` computes it, image by image. ``log_lik`` and ``kl`` are the
    ELBO's two terms from the same K draws (their difference is the ELBO, at most L_K). K = 1
    is Trace_ELBO.
    """
    model_trace, guide_trace = get_traces(model, guide, *args, num_particles=num_particles)
    batch = check_traces(model_trace, guide_trace)
    log_lik = log_p = log_q = 0.0
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample":
            continue
        if site["is_observed"]:
            log_lik = log_lik + _site_log_prob(site)
        else:
            log_p = log_p + _site_log_prob(site)
            log_q = log_q + _site_log_prob(guide_trace.nodes[name])
    log_w = log_lik + log_p - log_q  # [K, B] (or [B] for K = 1)
    if num_particles > 1:
        bound = log_w.logsumexp(0) - math.log(num_particles)
    else:
        bound = log_w
    per_image_lik = _per_image(log_lik, num_particles, batch, log_w)
    kl = _per_image(log_q - log_p, num_particles, batch, log_w)
    return ELBOTerms(loss=-bound.sum(), log_lik=per_image_lik, kl=kl, analytic_kl=False)


def objective_terms(
    model: Callable,
    guide: Callable,
    *args,
    objective: str = "trace",
    num_particles: int = 1,
) -> ELBOTerms:
    """The training objective by name (``OBJECTIVES``): ``elbo_terms`` for "trace" and
    "meanfield", ``iwae_terms`` for "iwae"."""
    if objective == "iwae":
        return iwae_terms(model, guide, *args, num_particles=num_particles)
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {sorted(OBJECTIVES)}")
    return elbo_terms(
        model, guide, *args, num_particles=num_particles, analytic_kl=objective == "meanfield"
    )
