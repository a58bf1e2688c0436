"""The training objectives as objects: one walk over the Pyro traces, a few lines per bound.

:func:`walk` runs the guide, then the model replayed on the guide's draws (as Pyro's ELBOs
do), checks what the per-image terms need, and turns every site into per-image log-densities
``[P, B]`` (particles, images). Each objective is a small class that turns those terms into a
bound on log p(x), in the shape of Pyro's own ``ELBO`` family (``pyro/infer/elbo.py``):

- :class:`ELBO`: Trace_ELBO, the Monte Carlo KL ``log q(z) - log p(z)`` at the guide's draw;
- :class:`MeanFieldELBO`: TraceMeanField_ELBO, the analytic KL where one is registered;
- :class:`IWAE`: the importance-weighted bound L_K of Burda et al. (2016), K = num_particles,
  whose gradient is RenyiELBO(alpha=0)'s;
- :class:`EnumELBO`: TraceEnum_ELBO, the guide's discrete sites (the missing labels of the
  semi-supervised VAE) summed out exactly, every value in one batched pass, with the M2
  classification term alpha * -log q(y | x) on the labels given.

The importance-sampled log-likelihood (``loglik.py``) takes its log-weights from the same walk.
Adding an objective is one class with ``@register_objective``; the registry-wide tests check
it against its ``pyro_equivalent`` on the same draws, with no new test code.

Nothing here reads a value back to the host (Pyro's ELBOs call ``.item()`` on every site), so
the objectives trace into one graph (``steps.py``). Scales (``poutine.scale``: the KL weight
of a beta-VAE, a user's subsample factor) enter the bound as they enter Pyro's; the reported
per-image terms ``log_lik`` and ``kl`` leave them out, so metrics and test figures are the
unweighted ELBO whatever the training weight.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import config_enumerate
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor, nn
from torch.distributions import Distribution, kl_divergence

PARTICLE_PLATE = "num_particles_vectorized"


@dataclass
class SiteTerms:
    """Per-image log-densities of one walk, each ``[P, B]`` (P particles, B images).

    ``log_lik``, ``log_p``, ``log_q`` and ``kl`` carry the sites' scales (what a bound is made
    of); the ``raw_`` fields leave the scales out (what the metrics report). ``kl`` is, per
    latent site, the analytic KL where one was asked for and registered, else
    ``log q - log p`` at the draw; ``estimators`` says which, site by site.
    """

    log_lik: Tensor
    log_p: Tensor
    log_q: Tensor
    kl: Tensor
    raw_log_lik: Tensor
    raw_log_p: Tensor
    raw_log_q: Tensor
    raw_kl: Tensor
    estimators: dict[str, str] = field(default_factory=dict)
    # Enumerated walks (EnumELBO): every field above is [E, P, B], E the values of the guide's
    # discrete sites, and this is log q of each value [E, P, B] (unmasked: the weights of the
    # sum over them, as Pyro's Dice weighs enumerated sites). None when nothing is enumerated.
    enum_log_q: Tensor | None = None
    # Masked observations (Pyro's obs_mask: a label observed on some images, drawn by the
    # guide on the rest): the guide's log q of the observed values [P, B] (0 elsewhere), and
    # which images are observed [B] bool. None when the model has none.
    observed_log_q: Tensor | None = None
    observed: Tensor | None = None

    @property
    def num_particles(self) -> int:
        return self.log_lik.shape[-2]

    def expectation(self, value: Tensor) -> Tensor:
        """A per-image term [(E,) P, B] -> [B]: the mean over particles, and for enumerated
        terms the sum over the enumerated values weighted by their probability under q."""
        if self.enum_log_q is None:
            return value.mean(0)
        return (self.enum_log_q.exp() * value).sum(0).mean(0)

    @property
    def raw_log_w(self) -> Tensor:
        """Unscaled log importance weights log p(x, z) - log q(z | x): ``[P, B]``."""
        return self.raw_log_lik + self.raw_log_p - self.raw_log_q


@dataclass
class ELBOTerms:
    """One objective's estimate on a batch of B images (nats)."""

    loss: Tensor  # scalar: minus the bound summed over the batch; differentiable; scales kept
    log_lik: Tensor  # [B] E_q[log p(x | z)] per image (mean over particles), unscaled
    kl: Tensor  # [B] KL(q(z | x) || p(z)) per image, analytic or Monte Carlo, unscaled
    analytic_kl: bool  # True when every latent site used an analytic KL
    estimators: dict[str, str] = field(default_factory=dict)  # latent site -> its KL estimator
    # Images whose masked observation (the semi-supervised VAE's label) is given [B] bool, and
    # the guide's -log q of it [B] (0 elsewhere): M2's classification term. None without.
    labelled: Tensor | None = None
    classification: Tensor | None = None

    @property
    def kl_kind(self) -> str:
        """ "analytic", "monte-carlo", or per site where they differ ("z2 analytic, z1
        monte-carlo": stacked latents under MeanFieldELBO, the closed form only on top)."""
        if self.analytic_kl:
            return "analytic"
        return describe_estimators(self.estimators) if self.estimators else "monte-carlo"


def describe_estimators(estimators: dict[str, str]) -> str:
    """The KL estimator of every latent site in a few words: the one kind when all sites share
    it, else "site kind" per site in the model's order ("z2 analytic, z1 monte-carlo")."""
    kinds = set(estimators.values())
    if len(kinds) == 1:
        return kinds.pop()
    return ", ".join(f"{site} {kind}" for site, kind in estimators.items())


def get_traces(
    model: Callable,
    guide: Callable,
    *args,
    num_particles: int = 1,
    particle_dim: int = -2,
    plate: str = PARTICLE_PLATE,
    always_plate: bool = False,
    enumerate: bool = False,
) -> tuple[poutine.Trace, poutine.Trace]:
    """Runs the guide, then the model replayed on the guide's draws, like Pyro's ELBOs.

    With ``num_particles > 1`` (or ``always_plate``) both run inside an outer plate at
    ``particle_dim`` (to the left of the data plate), so every site gains a particle dimension.
    ``enumerate``: the guide's discrete sites take all their values at once, in dimensions to
    the left of the particle plate, as ``TraceEnum_ELBO`` runs ``config_enumerate(guide,
    "parallel")``.
    """
    if num_particles > 1 or always_plate:
        model = pyro.plate(plate, num_particles, dim=particle_dim)(model)
        guide = pyro.plate(plate, num_particles, dim=particle_dim)(guide)
    if enumerate:
        first = particle_dim - 1 if num_particles > 1 or always_plate else -2
        guide = poutine.enum(config_enumerate(guide, "parallel"), first_available_dim=first)
    guide_trace = poutine.trace(guide).get_trace(*args)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
    # Plates record "sample" sites of their own (subsample indices); they are not variables.
    return prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)


def _data_frame_size(site: dict) -> int | None:
    """The size of the plate at dim -1 around a site (the data plate), None outside one."""
    sizes = [f.size for f in site["cond_indep_stack"] if f.vectorized and f.dim == -1]
    return sizes[0] if sizes else None


def _sample_sites(trace: poutine.Trace) -> list[dict]:
    return [s for s in trace.nodes.values() if s["type"] == "sample"]


def check_traces(
    model_trace: poutine.Trace, guide_trace: poutine.Trace, need_rsample: bool = True
) -> int:
    """Raises ValueError where the per-image terms would be wrong; returns the batch size B.

    They need: every sample site inside one data plate at dim -1 (a global latent would be
    counted once per image); every latent model site drawn by the guide, with the model's
    event shape (a layer of another size would broadcast into a wrong number), and no guide
    site the model lacks (its log q would be left out); and, for a gradient
    (``need_rsample``), every guide draw reparameterized (there is no score-function term).
    """
    sites = _sample_sites(model_trace)
    observed = [s for s in sites if s["is_observed"]]
    if not observed:
        raise ValueError("the model has no observed site: the objectives need obs=x somewhere")
    batch = _data_frame_size(observed[0])
    for site in [*sites, *_sample_sites(guide_trace)]:
        size = _data_frame_size(site)
        if size is None or size != batch:
            raise ValueError(
                f"site {site['name']!r} lies outside the data plate at dim -1 (of size {batch}): "
                "its log-density is not per image and the objective would miscount it; use "
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
        model_event, guide_event = tuple(site["fn"].event_shape), tuple(fn.event_shape)
        if model_event != guide_event:
            raise ValueError(
                f"the guide draws {name!r} with event shape {guide_event} but the model's "
                f"{name!r} has {model_event}: a latent layer must have one size in both"
            )
        if _enumerated(guide_trace.nodes[name]):
            continue  # summed out exactly: no gradient estimator needed
        if need_rsample and not getattr(fn, "has_rsample", False):
            if getattr(fn, "has_enumerate_support", False):
                raise ValueError(
                    f"the guide's site {name!r} ({type(fn).__name__}) is discrete: sum it out "
                    "with the objective EnumELBO (--elbo enum; Pyro's TraceEnum_ELBO)"
                )
            raise ValueError(
                f"the guide's site {name!r} ({type(fn).__name__}) is not reparameterized: "
                "the objectives have no score-function term; use pyro.infer.Trace_ELBO, "
                "which adds it"
            )
    if not any(not s["is_observed"] for s in sites):
        raise ValueError("the model has no latent site: there is no KL term to estimate")
    latent = {s["name"] for s in sites if not s["is_observed"]}
    for site in _sample_sites(guide_trace):
        if site["name"] not in latent:
            raise ValueError(
                f"the guide's site {site['name']!r} is not a latent site of the model: its "
                "log q would be left out of the bound; draw only the model's latents in the "
                "guide, with the model's names"
            )
    return batch


def _enumerated(site: dict) -> bool:
    return site["infer"].get("_enumerate_dim") is not None


def _enum_shape(guide_trace: poutine.Trace, particle_dim: int) -> tuple[int, ...]:
    """The sizes of the enumeration dims, left of the particle plate: () when none."""
    dims = {
        s["infer"]["_enumerate_dim"]: s["value"].shape[s["infer"]["_enumerate_dim"]]
        for s in _sample_sites(guide_trace)
        if _enumerated(s)
    }
    if not dims:
        return ()
    low = min(dims)
    shape = [1] * (particle_dim - low)
    for dim, size in dims.items():
        shape[dim - low] = size
    return tuple(shape)


def _masked_observation(name: str, model_trace: poutine.Trace) -> str | None:
    """For the observed half of a Pyro ``obs_mask`` site ("y_observed"), the name of its
    latent half ("y_unobserved"), which the guide draws; None for any other site."""
    if not name.endswith("_observed"):
        return None
    latent = name.removesuffix("_observed") + "_unobserved"
    site = model_trace.nodes.get(latent)
    return latent if site is not None and not site["is_observed"] else None


def _per_image(
    t: Tensor | float, num_particles: int, batch: int, ref: Tensor, enum: tuple[int, ...] = ()
) -> Tensor:
    """A site term of shape [P, B], [B] or a scalar -> [P, B]; with enumeration dims ``enum``
    (broadcasting against [*enum, P, B]) -> [E, P, B], E their product."""
    t = torch.as_tensor(t, dtype=ref.dtype, device=ref.device)
    if enum:
        size = math.prod(enum)
        return t.expand(*enum, num_particles, batch).reshape(size, num_particles, batch)
    if t.dim() < 2:
        t = t.expand(batch) if t.dim() == 0 else t.reshape(batch)
        return t.expand(num_particles, batch)
    return t.reshape(num_particles, batch)


def _masked(value: Tensor, site: dict) -> Tensor:
    return scale_and_mask(value, 1.0, site["mask"])


def _scaled(value: Tensor, site: dict) -> Tensor:
    """``value`` (masked already) times the site's scale, as Pyro's ELBOs weigh it."""
    return scale_and_mask(value, site["scale"], None)


def analytic_sites(model_trace: poutine.Trace, guide_trace: poutine.Trace) -> set[str]:
    """The latent sites whose KL may be taken in closed form.

    The closed form KL(q(z_s | ...) || p(z_s | ...)) at the drawn values of the other latents
    is site s's term of the ELBO only when the latents p(z_s | ...) may depend on (those the
    model draws before s) are drawn by the guide before s, too: then they are fixed when
    z_s ~ q. With a bottom-up guide over top-down layers, p(z_l | z_{l+1}) depends on z_{l+1},
    which the guide draws after z_l from q(z_{l+1} | z_l): the closed form there would be
    biased, so that site keeps the Monte Carlo estimate. The top layer's KL (and a one-layer
    VAE's) is exact. Pyro's TraceMeanField_ELBO instead warns when the orders differ.
    """
    model_order = [s["name"] for s in _sample_sites(model_trace) if not s["is_observed"]]
    guide_order = [s["name"] for s in _sample_sites(guide_trace) if not s["is_observed"]]
    ok = set()
    for i, name in enumerate(model_order):
        drawn_before = set(guide_order[: guide_order.index(name)])
        if set(model_order[:i]) <= drawn_before:
            ok.add(name)
    return ok


class _TermLists:
    """walk's per-site terms, as Pyro's ELBOs weigh them (``scaled``) and unweighted, and what
    the sites say besides: each latent's estimator, the enumeration weights, and the guide's
    density of the labels an ``obs_mask`` site observed (with which images those are)."""

    KINDS = ("log_lik", "log_p", "log_q", "kl")

    def __init__(self) -> None:
        self.scaled: dict[str, list[Tensor]] = {k: [] for k in self.KINDS}
        self.raw: dict[str, list[Tensor]] = {k: [] for k in self.KINDS}
        self.estimators: dict[str, str] = {}
        self.enum_log_q: list[Tensor] = []
        self.observed_log_q: list[Tensor] = []
        self.observed: Tensor | None = None

    def add(self, kind: str, raw: Tensor, scaled: Tensor) -> None:
        self.raw[kind].append(raw)
        self.scaled[kind].append(scaled)

    def add_given_label(self, site: dict, q: Distribution, log_p: Tensor, batch: int) -> None:
        """The observed half of an ``obs_mask`` site: log p(y) of the given labels is a prior
        term with no guide density of its own; q(y | x) at them is kept apart."""
        self.add("log_p", log_p, _scaled(log_p, site))
        self.add("kl", -log_p, -_scaled(log_p, site))
        self.observed_log_q.append(_masked(q.log_prob(site["value"]), site))
        given = torch.ones(batch, dtype=torch.bool, device=log_p.device)
        given = given if site["mask"] is None else given & site["mask"].reshape(-1, batch)[0]
        self.observed = given if self.observed is None else self.observed | given

    def add_latent(
        self, name: str, site: dict, guide_site: dict, log_p: Tensor, closed_form: bool
    ) -> None:
        """A latent site: its KL term in closed form where ``closed_form`` and one is
        registered, else log q(z) - log p(z) at the guide's draw; for an enumerated site, the
        weights of the exact sum too."""
        if _enumerated(guide_site):
            # The weights of the exact sum: q of each value, unmasked (a masked image's
            # enumerated values carry terms that do not depend on them, and sum to 1).
            self.enum_log_q.append(guide_site["fn"].log_prob(guide_site["value"]))
        log_q = _masked(guide_site["fn"].log_prob(guide_site["value"]), guide_site)
        kl = _closed_form_kl(guide_site, site) if closed_form else None
        self.estimators[name] = "monte-carlo" if kl is None else "analytic"
        if _enumerated(guide_site):
            self.estimators[name] = "enumerated"
        self.add("log_p", log_p, _scaled(log_p, site))
        self.add("log_q", log_q, _scaled(log_q, guide_site))
        if kl is None:
            self.add("kl", log_q - log_p, _scaled(log_q, guide_site) - _scaled(log_p, site))
        else:
            self.add("kl", kl, _scaled(kl, guide_site))


def _closed_form_kl(guide_site: dict, model_site: dict) -> Tensor | None:
    """KL(q || p) of one latent site in closed form, masked; None where none is registered."""
    try:
        return _masked(kl_divergence(guide_site["fn"], model_site["fn"]), guide_site)
    except NotImplementedError:
        return None


def walk(
    model: Callable,
    guide: Callable,
    *args,
    num_particles: int = 1,
    analytic_kl: bool = False,
    need_rsample: bool = True,
    plate: str = PARTICLE_PLATE,
    always_plate: bool = False,
    enumerate: bool = False,
) -> SiteTerms:
    """The per-image terms of ``model``/``guide`` on ``args`` (e.g. ``x, y``): the one trace
    walk every objective, the evaluation and the importance-sampled NLL share.

    ``enumerate``: the guide's discrete sites are enumerated (:func:`get_traces`); the terms
    are then [E, P, B] with the weights ``enum_log_q``. The observed half of a Pyro
    ``obs_mask`` site ("y_observed") counts with the latent it belongs to, in log p(z, y), not
    in log p(x | z); its deterministic site ("y") counts nothing.

    Observed sites make up log p(x | z). Latent sites make up the KL: ``kl_divergence(q, p)``
    where ``analytic_kl``, one is registered and the closed form is the site's term
    (:func:`analytic_sites`), else log q(z) - log p(z) at the guide's draw (exactly Pyro's
    TraceMeanField_ELBO fallback). ``estimators`` in the result says which, per site. Raises
    ValueError for a model/guide pair the terms would get wrong (see :func:`check_traces`).
    """
    always_plate = always_plate or enumerate  # enumeration dims sit left of the particles
    model_trace, guide_trace = get_traces(
        model,
        guide,
        *args,
        num_particles=num_particles,
        plate=plate,
        always_plate=always_plate,
        enumerate=enumerate,
    )
    batch = check_traces(model_trace, guide_trace, need_rsample=need_rsample)
    closed_form = analytic_sites(model_trace, guide_trace) if analytic_kl else set()
    terms = _TermLists()
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site["infer"].get("_deterministic"):
            continue
        log_p = _masked(site["fn"].log_prob(site["value"]), site)
        latent = _masked_observation(name, model_trace) if site["is_observed"] else None
        if latent is not None:
            terms.add_given_label(site, guide_trace.nodes[latent]["fn"], log_p, batch)
        elif site["is_observed"]:
            terms.add("log_lik", log_p, _scaled(log_p, site))
        else:
            terms.add_latent(name, site, guide_trace.nodes[name], log_p, name in closed_form)
    scaled, raw = terms.scaled, terms.raw
    ref = raw["log_lik"][0]
    p = num_particles if num_particles > 1 or always_plate else 1
    enum = _enum_shape(guide_trace, -2) if enumerate else ()

    def total(terms: list[Tensor], lead: tuple[int, ...] = enum) -> Tensor:
        return sum(_per_image(t, p, batch, ref, lead) for t in terms)

    return SiteTerms(
        **{k: total(v) for k, v in scaled.items()},
        **{f"raw_{k}": total(v) for k, v in raw.items()},
        estimators=terms.estimators,
        enum_log_q=total(terms.enum_log_q) if enum else None,
        observed_log_q=total(terms.observed_log_q, ()) if terms.observed_log_q else None,
        observed=terms.observed,
    )


class Objective:
    """A bound on log p(x) estimated from one :func:`walk`; subclasses give :meth:`bound`.

    ``objective.terms(model, guide, x, y)`` returns :class:`ELBOTerms` (loss and per-image
    terms); ``objective(model, guide)`` returns the loss as a ``torch.nn.Module``, as Pyro's
    ``ELBO.__call__`` does, for the ELBO-as-module path.
    """

    name: ClassVar[str]  # the registry's name (the CLI's --elbo)
    label: ClassVar[str]  # what the metrics call it
    analytic_kl: ClassVar[bool] = False
    enumerates: ClassVar[bool] = False  # sums the guide's discrete sites out (walk's enumerate)
    # The sums a training step reports beside the loss (stat_sums), in order.
    stat_names: ClassVar[tuple[str, ...]] = ("recon", "kl")

    def __init__(self, num_particles: int = 1) -> None:
        if num_particles < 1:
            raise ValueError(f"num_particles must be at least 1, got {num_particles}")
        self.num_particles = num_particles

    def bound(self, t: SiteTerms) -> Tensor:
        """The bound per image, ``[B]``, differentiable, from the walk's scaled terms."""
        raise NotImplementedError

    def pyro_equivalent(self) -> pyro.infer.ELBO:
        """The Pyro ELBO this objective equals on the same draws (loss and gradients), run on
        :meth:`pyro_guide` of the guide."""
        raise NotImplementedError

    def pyro_guide(self, guide: Callable) -> Callable:
        """The guide as :meth:`pyro_equivalent` takes it (TraceEnum_ELBO: enumerated)."""
        return guide

    def test_estimate(self) -> Objective:
        """The ELBO estimator whose test -ELBO a run of this objective reports every epoch."""
        return ELBO(self.num_particles)

    @property
    def test_bound_samples(self) -> int:
        """K of the bound -L_K a run of this objective reports every epoch (0: none)."""
        return 0

    def terms(self, model: Callable, guide: Callable, *args) -> ELBOTerms:
        t = walk(
            model,
            guide,
            *args,
            num_particles=self.num_particles,
            analytic_kl=self.analytic_kl,
            enumerate=self.enumerates,
        )
        return ELBOTerms(
            loss=-self.bound(t).sum(),
            log_lik=t.expectation(t.raw_log_lik),
            kl=t.expectation(t.raw_kl),
            analytic_kl=self.analytic_kl and all(v == "analytic" for v in t.estimators.values()),
            estimators=t.estimators,
            labelled=t.observed,
            classification=None if t.observed_log_q is None else -t.observed_log_q.mean(0),
        )

    def stat_sums(self, t: ELBOTerms) -> list[Tensor]:
        """The batch's sums named by ``stat_names``, detached: -E_q log p(x | z), the KL."""
        return [-t.log_lik.sum().detach(), t.kl.sum().detach()]

    def __call__(self, model: Callable, guide: Callable) -> nn.Module:
        return ObjectiveLoss(self, model, guide)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_particles={self.num_particles})"


class ObjectiveLoss(nn.Module):
    """``objective(model, guide)``: minus the bound summed over the batch, as a module whose
    parameters are the model's and the guide's (if they are modules)."""

    def __init__(self, objective: Objective, model: Callable, guide: Callable) -> None:
        super().__init__()
        self.objective = objective
        self.model, self.guide = model, guide

    def forward(self, *args) -> Tensor:
        return self.objective.terms(self.model, self.guide, *args).loss


OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Class decorator: ``cls.name`` becomes a name of ``--elbo`` and of ``make_objective``."""
    if cls.name in OBJECTIVES:
        raise ValueError(f"an objective named {cls.name!r} is registered already")
    OBJECTIVES[cls.name] = cls
    return cls


def make_objective(name: str, num_particles: int = 1) -> Objective:
    """The one place an objective's name (config, command line) becomes an object."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name](num_particles)


def _pyro_kwargs(objective: Objective) -> dict:
    return {
        "num_particles": objective.num_particles,
        "vectorize_particles": True,
        "max_plate_nesting": 1,
    }


@register_objective
class ELBO(Objective):
    """Trace_ELBO: E_q[log p(x | z)] - (log q(z | x) - log p(z)) at the guide's draws."""

    name = "trace"
    label = "Trace_ELBO"

    def bound(self, t: SiteTerms) -> Tensor:
        return (t.log_lik - t.kl).mean(0)

    def pyro_equivalent(self) -> pyro.infer.ELBO:
        return pyro.infer.Trace_ELBO(**_pyro_kwargs(self))


@register_objective
class MeanFieldELBO(ELBO):
    """TraceMeanField_ELBO: the KL in closed form where one is registered, else Monte Carlo."""

    name = "meanfield"
    label = "TraceMeanField_ELBO"
    analytic_kl = True

    def test_estimate(self) -> Objective:
        return MeanFieldELBO(self.num_particles)

    def pyro_equivalent(self) -> pyro.infer.ELBO:
        return pyro.infer.TraceMeanField_ELBO(**_pyro_kwargs(self))


@register_objective
class IWAE(Objective):
    """The importance-weighted bound (Burda et al. 2016), K = ``num_particles``::

        L_K = log (1/K) sum_k p(x, z_k) / q(z_k | x),   z_k ~ q(z | x)

    Its gradient is the normalized weights times the gradient of each log-weight, as
    ``pyro.infer.RenyiELBO(alpha=0)`` computes it, image by image. K = 1 is Trace_ELBO. The
    reported ``log_lik`` and ``kl`` are the ELBO's two terms from the same K draws.
    """

    name = "iwae"
    label = "IWAE (RenyiELBO, alpha=0)"

    def __init__(self, num_particles: int = 5) -> None:
        super().__init__(num_particles)

    def test_estimate(self) -> Objective:
        return ELBO(1)  # the test -ELBO of one draw; the run's own bound is -L_K beside it

    @property
    def test_bound_samples(self) -> int:
        return self.num_particles

    def bound(self, t: SiteTerms) -> Tensor:
        log_w = t.log_lik + t.log_p - t.log_q  # [K, B]
        return log_w.logsumexp(0) - math.log(t.num_particles)

    def pyro_equivalent(self) -> pyro.infer.ELBO:
        return pyro.infer.RenyiELBO(alpha=0, **_pyro_kwargs(self))


@register_objective
class EnumELBO(ELBO):
    """TraceEnum_ELBO: the ELBO with the guide's discrete sites summed out exactly.

    For the semi-supervised VAE (M2, Kingma et al. 2014) the missing labels: the guide's site
    "y_unobserved" takes its C values in one batched pass (a dimension of size C left of the
    particles), and each value's terms are weighted by q(y | x)::

        labelled:    log p(x, y) >= E_q[log p(x | y, z)] - KL(q(z | x, y) || p(z | y)) + log p(y)
        unlabelled:  log p(x)    >= sum_y q(y | x) (that bound at y) + H(q(y | x))

    z stays a Monte Carlo draw (Trace_ELBO's estimator), one per value of y. On a model without
    discrete guide sites it is :class:`ELBO`. ``alpha``: the weight of M2's classification term
    alpha * -log q(y | x) per labelled image, added to the loss (not to the bound, nor to the
    reported terms); the paper's alpha = 0.1 N for the mean over the labelled images is
    0.1 N / (labelled images per epoch) here (``semi_supervised_alpha``), as the loss is a sum
    over a batch's images.
    """

    name = "enum"
    label = "TraceEnum_ELBO"
    enumerates = True
    stat_names = (*ELBO.stat_names, "labelled_neg_elbo", "labelled", "classification")

    def __init__(self, num_particles: int = 1, alpha: float = 0.0) -> None:
        super().__init__(num_particles)
        if not alpha >= 0:
            raise ValueError(f"the classification weight alpha must be at least 0, got {alpha}")
        self.alpha = float(alpha)

    def bound(self, t: SiteTerms) -> Tensor:
        return t.expectation(t.log_lik - t.kl)

    def terms(self, model: Callable, guide: Callable, *args) -> ELBOTerms:
        t = super().terms(model, guide, *args)
        if self.alpha and t.classification is not None:
            t.loss = t.loss + self.alpha * t.classification.sum()
        return t

    def stat_sums(self, t: ELBOTerms) -> list[Tensor]:
        """Also the labelled images' -ELBO sum, their number and their -log q(y | x) sum."""
        if t.labelled is None:
            zero = t.log_lik.new_zeros(())
            return [*super().stat_sums(t), zero, zero, zero]
        given = t.labelled.to(t.log_lik.dtype)
        neg_elbo = (given * (t.kl - t.log_lik)).sum()
        sums = [neg_elbo, given.sum(), t.classification.sum()]
        return [*super().stat_sums(t), *(v.detach() for v in sums)]

    def test_estimate(self) -> Objective:
        return EnumELBO(self.num_particles)

    def pyro_equivalent(self) -> pyro.infer.ELBO:
        return pyro.infer.TraceEnum_ELBO(**_pyro_kwargs(self), strict_enumeration_warning=False)

    def pyro_guide(self, guide: Callable) -> Callable:
        return config_enumerate(guide, "parallel")

    def __repr__(self) -> str:
        return f"EnumELBO(num_particles={self.num_particles}, alpha={self.alpha:g})"


# The M2 paper's weight of the classification term on the mean over the labelled images:
# alpha = 0.1 N, N the number of training images (Kingma et al. 2014, section 3.2).
PAPER_ALPHA_PER_IMAGE = 0.1


def semi_supervised_alpha(num_images: int, labelled_per_epoch: int) -> float:
    """The paper's alpha = 0.1 N on the mean over the labelled images, per labelled image of a
    batch: 0.1 N / (labelled images an epoch shows), since the loss here sums over a batch's
    images and an epoch is a pass over the N images. E.g. 60 for 100 labels of MNIST's 60000
    images, each seen once an epoch."""
    if labelled_per_epoch < 1:
        raise ValueError("a semi-supervised run needs at least one labelled image an epoch")
    return PAPER_ALPHA_PER_IMAGE * num_images / labelled_per_epoch


def elbo_terms(
    model: Callable, guide: Callable, *args, num_particles: int = 1, analytic_kl: bool = False
) -> ELBOTerms:
    """The ELBO of ``model``/``guide`` on ``args``: :class:`MeanFieldELBO` when
    ``analytic_kl``, else :class:`ELBO`, with ``num_particles`` vectorized particles."""
    objective = MeanFieldELBO if analytic_kl else ELBO
    return objective(num_particles).terms(model, guide, *args)


def iwae_terms(model: Callable, guide: Callable, *args, num_particles: int = 5) -> ELBOTerms:
    """The importance-weighted bound L_K of ``model``/``guide`` (:class:`IWAE`)."""
    return IWAE(num_particles).terms(model, guide, *args)
