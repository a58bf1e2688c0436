"""The VAE: a Pyro model p(x, z | y) and an amortized guide q(z | x, y), both ``PyroModule`` s.

Generative story (model), for each image n in the plate ``"data"``::

    z_n ~ p(z | y_n)                              # prior, N(0, I) by default
    x_n ~ p(x | decoder(z_n, y_n))                # likelihood, Bernoulli(logits) by default

Guide::

    z_n ~ N(loc(x_n, y_n), diag(scale(x_n, y_n)^2))

The latent site "z" of both sits inside ``poutine.scale(kl_weight)``: with a weight beta the
ELBO of any Pyro objective becomes E_q[log p(x | z)] - beta KL(q || p), the beta-VAE (Higgins
et al. 2017), and a KL warm-up is beta rising from near 0 to 1. The weight is a buffer, so a
traced step reads it as an input and it may change every step.

The conditional VAE is the same model and guide built with ``num_classes > 0``: the one-hot
label is appended to the encoder's and the decoder's input.

The semi-supervised VAE (Kingma et al. 2014, "M2") is the same model and guide built with a
``classifier`` as well; labels may then be missing, written y = -1::

    model:  y_n ~ Categorical(1/C)     site "y": observed where y_n >= 0 (Pyro's obs_mask)
            z_n ~ p(z | y_n),  x_n ~ p(x | decoder(z_n, y_n))
    guide:  y_n ~ q(y | x_n)           site "y_unobserved", only where y_n = -1 (masked)
            z_n ~ N(loc(x_n, y_n), diag(scale(x_n, y_n)^2))

Pyro's ``obs_mask`` splits "y" into the sample sites "y_observed" (the given labels) and
"y_unobserved" (the missing ones, which the guide draws), and records the interleaved labels
as the deterministic site "y". Labelled and unlabelled images may share a batch; ``y=None``
means every label is missing. ``TraceEnum_ELBO`` with ``config_enumerate(guide, "parallel")``
sums y out exactly, as does the library's ``EnumELBO``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from pyro.infer.util import is_validation_enabled
from pyro.nn import PyroModule
from torch import Tensor, nn

from pyro_vae.models.config import VAEConfig
from pyro_vae.models.label_encoder import build_classifier
from pyro_vae.models.likelihoods import Likelihood, build_likelihood
from pyro_vae.models.networks import Decoder, Encoder
from pyro_vae.models.priors import PriorLike, as_latent_event, build_prior

# Default names of VAEs in Pyro's param store: vae_0, vae_1, ... (see VAE's ``name``).
_VAE_NUMBERS = itertools.count()


# The label of an image whose label is missing (the semi-supervised VAE's data convention).
UNLABELLED = -1


def check_labels(
    y: Tensor | None,
    num_classes: int,
    batch_size: int | None,
    device: torch.device | None = None,
    unlabelled: bool = False,
) -> None:
    """Raises ValueError for labels that do not fit the model; runs before any network.

    y: [B] LongTensor in [0, num_classes), or None for an unconditional model. ``batch_size``
    (when known) is B; ``device`` (when given) is where the images or parameters live.
    ``unlabelled``: the semi-supervised VAE, whose labels may also be -1 (missing), or None
    (all missing).
    """
    if num_classes and y is None and not unlabelled:
        raise ValueError(
            f"this VAE is conditional (num_classes={num_classes}): pass the labels y as a "
            "LongTensor of shape [batch]"
        )
    if not num_classes and y is not None:
        raise ValueError(
            "labels were given to an unconditional VAE (num_classes=0): drop y, or build the "
            "VAE with num_classes > 0"
        )
    if y is None:
        return
    if not torch.is_tensor(y):
        raise ValueError(
            f"labels y must be a LongTensor of shape [batch], got {type(y).__name__}; "
            "wrap them with torch.as_tensor(y)"
        )
    if y.dtype != torch.int64:
        # one_hot and indexing want int64; uint8/bool would even index as a mask.
        raise ValueError(
            f"labels y must be a LongTensor (int64), got dtype {y.dtype}; use y.long()"
        )
    if y.dim() != 1:
        raise ValueError(f"labels y must have shape [batch], got {tuple(y.shape)}")
    if batch_size is not None and y.shape[0] != batch_size:
        raise ValueError(f"{y.shape[0]} labels for a batch of {batch_size} images")
    if device is not None and y.device != device:
        raise ValueError(f"labels y are on {y.device} but the images/model on {device}; use y.to()")
    # The range check reads the labels back to the host: it is part of Pyro's validation,
    # and the traced step (validation off, no host reads) checks a dataset's labels once,
    # on load, instead (ImageData.validate).
    if y.numel() and is_validation_enabled():
        lo, hi = torch.stack(torch.aminmax(y)).tolist()  # one host read for both bounds
        if unlabelled:
            if lo < UNLABELLED or hi >= num_classes:
                raise ValueError(
                    f"labels must lie in [0, {num_classes}) or be {UNLABELLED} (missing), got "
                    f"values in [{lo}, {hi}]"
                )
            return
        if lo == UNLABELLED and hi < num_classes:
            raise ValueError(
                f"label {UNLABELLED} (missing) needs the semi-supervised VAE: build it with a "
                "classifier q(y | x) (classifier='conv' or 'mlp'; --labelled on the command line)"
            )
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}), got values in [{lo}, {hi}]")


def _flat_images(x: Tensor, x_dim: int) -> Tensor:
    x = x.flatten(1) if x.dim() > 2 else x
    if x.dim() != 2 or x.shape[-1] != x_dim:
        raise ValueError(
            f"x must have shape [batch, {x_dim}] (or [batch, 1, 28, 28]), got {tuple(x.shape)}"
        )
    return x


def _device_of(module: nn.Module) -> torch.device | None:
    p = next(iter(module.parameters()), None)
    return p.device if p is not None else None


# beta of a VAE built without one: the plain ELBO (TrainConfig.kl_weight's default too).
DEFAULT_KL_WEIGHT = 1.0


class KLWeight(nn.Module):
    """beta, the weight of the KL term: a positive scale on the latent sites of the model and
    the guide alike (Pyro's ``poutine.scale`` refuses 0). A buffer, not a parameter, and not
    saved in checkpoints: the training run sets it every step from its own settings."""

    def __init__(self, value: float = DEFAULT_KL_WEIGHT) -> None:
        super().__init__()
        self.register_buffer("value", torch.tensor(_positive(value)), persistent=False)

    def set(self, value: float) -> None:
        """A new weight, in place (no host read: a traced or captured step sees it)."""
        self.value.fill_(_positive(value))


def _positive(value: float) -> float:
    value = float(value)
    if not value > 0:
        raise ValueError(
            f"the KL weight must be positive (Pyro's poutine.scale refuses 0), got {value}; "
            "a warm-up starts just above 0"
        )
    return value


class VAEModel(PyroModule):
    """p(x, z | y): prior, decoder, likelihood. Call as ``model(x, y)``; x=None samples x.

    The semi-supervised VAE's model (``config.semi_supervised``) is p(x, y, z): its label site
    "y" is observed where y >= 0 and latent where y = -1 (or y is None).
    """

    def __init__(
        self,
        decoder: Decoder,
        prior: nn.Module,
        likelihood: Likelihood,
        config: VAEConfig,
        kl_weight: KLWeight | None = None,
    ):
        super().__init__()
        self.decoder = decoder
        self.prior = prior
        self.likelihood = likelihood
        self.kl_weight = kl_weight or KLWeight()
        self.z_dim = config.z_dim
        self.x_dim = config.x_dim
        self.num_classes = config.num_classes
        self.semi_supervised = config.semi_supervised

    def forward(
        self, x: Tensor | None = None, y: Tensor | None = None, batch_size: int | None = None
    ) -> Tensor:
        """x: [B, x_dim] or None; y: [B] labels (-1: missing, semi-supervised) or None;
        batch_size when both are None.

        Returns the decoder's raw output [..., B, params_per_pixel * x_dim].
        """
        if x is not None:
            x = _flat_images(x, self.x_dim)
        n = x.shape[0] if x is not None else batch_size
        device = x.device if x is not None else _device_of(self.decoder)
        check_labels(y, self.num_classes, n, device, unlabelled=self.semi_supervised)
        n = y.shape[0] if n is None and y is not None else n
        if n is None:
            raise ValueError("give images x, labels y or batch_size, so the model knows how many")
        # Pixels outside the likelihood's support fail in Pyro's validation of the "x" site,
        # with a message that says the fix (likelihoods.Likelihood.pixels): no extra pass here.
        with pyro.plate("data", n):
            if self.semi_supervised:
                y = self._label(y, n, device)
            y_onehot = F.one_hot(y, self.num_classes).float() if y is not None else None
            with poutine.scale(scale=self.kl_weight.value):
                z = pyro.sample("z", as_latent_event(self.prior(y), self.z_dim))
            out = self.decoder(z, y_onehot)
            pyro.sample("x", self.likelihood(out), obs=x)
        return out

    def _label(self, y: Tensor | None, n: int, device: torch.device | None) -> Tensor:
        """y ~ p(y) = Categorical(1/C), observed where y >= 0: the labels [..., B], each
        missing one drawn (or, under enumeration, every value in turn)."""
        if y is None:
            y = torch.full((n,), UNLABELLED, dtype=torch.long, device=device)
        ref = next(self.decoder.parameters())
        uniform = dist.Categorical(logits=ref.new_zeros(self.num_classes))
        return pyro.sample("y", uniform, obs=y.clamp(min=0), obs_mask=y >= 0)


class VAEGuide(PyroModule):
    """q(z | x, y) = N(loc(x, y), diag(scale(x, y)^2)). Call as ``guide(x, y)``.

    With a ``classifier`` (the semi-supervised VAE) it is q(y, z | x) where labels are
    missing: y ~ q(y | x) = Categorical(logits=classifier(x)) at the site "y_unobserved",
    masked where the label is given, then z ~ q(z | x, y).
    """

    def __init__(
        self,
        encoder: Encoder,
        config: VAEConfig,
        kl_weight: KLWeight | None = None,
        classifier: nn.Module | None = None,
    ):
        super().__init__()
        self.encoder = encoder
        # After the encoder: the order of parameters() (an optimizer's saved state) of a VAE
        # without one is what it was before classifiers existed.
        self.classifier = classifier
        # The model's weight, held by reference (a tuple hides it from registration), so the
        # two sites of "z" are scaled alike and the buffer belongs to the model alone.
        self._kl_weight = (kl_weight or KLWeight(),)
        self.x_dim = config.x_dim
        self.num_classes = config.num_classes

    def forward(
        self, x: Tensor | None = None, y: Tensor | None = None, batch_size: int | None = None
    ) -> Tensor:
        """x: [B, x_dim]; y: [B] labels (-1: missing, semi-supervised) or None.
        Returns z [..., B, z_dim]."""
        if x is None:
            raise ValueError("the guide q(z | x) needs images x")
        x = _flat_images(x, self.x_dim)
        semi = self.classifier is not None
        check_labels(y, self.num_classes, x.shape[0], x.device, unlabelled=semi)
        with pyro.plate("data", x.shape[0]):
            if semi:
                y = self._label(x, y)
            y_onehot = F.one_hot(y, self.num_classes).to(x.dtype) if y is not None else None
            with poutine.scale(scale=self._kl_weight[0].value):
                loc, scale = self.encoder(x, y_onehot)
                return pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def _label(self, x: Tensor, y: Tensor | None) -> Tensor:
        """The given labels, and y ~ q(y | x) where they are missing: [..., B]."""
        if y is None:
            y = torch.full(x.shape[:1], UNLABELLED, dtype=torch.long, device=x.device)
        given = y >= 0
        with poutine.mask(mask=~given):
            drawn = pyro.sample("y_unobserved", dist.Categorical(logits=self.classifier(x)))
        return torch.where(given, y, drawn)


class VAE(PyroModule):
    """A VAE whose ``.model`` and ``.guide`` are PyroModules for SVI or the ELBO-as-module path.

    Example::

        vae = VAE(z_dim=50, hidden_dims=(400,))
        svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
        loss = svi.step(x)        # x: [batch, 784] of 0/1 pixels

    ``prior`` is a name from ``priors.PRIORS``, a ``pyro.distributions`` object whose batch
    shape broadcasts to [z_dim], or a module/callable ``y -> distribution``. ``likelihood`` is
    a name from ``likelihoods.LIKELIHOODS`` or a callable ``decoder output -> distribution``.
    ``kl_weight`` is beta, the weight of the KL term (``vae.kl_weight`` reads and sets it).
    ``classifier`` (with ``num_classes``): q(y | x) of the semi-supervised VAE, a name from
    ``label_encoder.CLASSIFIERS`` with hidden layers ``classifier_dims``; its labels may be -1
    (missing), and ``vae.classify(x)`` gives q(y | x).

    Every VAE owns its parameters, whatever ``pyro.settings`` say. In Pyro's default mode the
    model and guide register them in the global param store under ``name`` + their attribute
    path; ``name`` defaults to a fresh ``vae_0``, ``vae_1``, ... per VAE, so several VAEs in one
    session never share or swap a parameter. Give two VAEs the same ``name`` only to share
    their parameters on purpose (Pyro's param store semantics).

    The defaults are :class:`VAEConfig`'s (one table of options, stated there).
    """

    def __init__(
        self,
        z_dim: int = VAEConfig.z_dim,
        hidden_dims: tuple[int, ...] = VAEConfig.hidden_dims,
        *,
        num_classes: int = VAEConfig.num_classes,
        activation: str = VAEConfig.activation,
        prior: str | PriorLike = VAEConfig.prior,
        likelihood: str | Callable | Likelihood = VAEConfig.likelihood,
        x_dim: int = VAEConfig.x_dim,
        prior_components: int = VAEConfig.prior_components,
        likelihood_scale: float | None = VAEConfig.likelihood_scale,
        classifier: str = VAEConfig.classifier,
        classifier_dims: tuple[int, ...] = VAEConfig.classifier_dims,
        kl_weight: float = DEFAULT_KL_WEIGHT,
        name: str | None = None,
    ) -> None:
        super().__init__(name=f"vae_{next(_VAE_NUMBERS)}" if name is None else name)
        self.config = VAEConfig(
            x_dim=x_dim,
            z_dim=z_dim,
            hidden_dims=tuple(hidden_dims),
            activation=activation,
            num_classes=num_classes,
            prior=prior if isinstance(prior, str) else "custom",
            likelihood=likelihood if isinstance(likelihood, str) else "custom",
            prior_components=prior_components,
            likelihood_scale=likelihood_scale,
            classifier=classifier,
            classifier_dims=tuple(classifier_dims),
        )
        c = self.config
        lik = build_likelihood(likelihood, c)
        encoder = Encoder(c.x_dim, c.z_dim, c.hidden_dims, c.activation, c.num_classes)
        decoder = Decoder(
            c.z_dim, lik.params_per_pixel * c.x_dim, c.hidden_dims, c.activation, c.num_classes
        )
        # The guide first: the order of parameters() (and of an optimizer's saved state).
        weight = KLWeight(kl_weight)
        self.guide = VAEGuide(encoder, c, weight, build_classifier(c))
        self.model = VAEModel(decoder, build_prior(prior, c, encoder), lik, c, weight)

    @classmethod
    def from_config(cls, config: VAEConfig, name: str | None = None) -> VAE:
        """The VAE a config describes; registry names only (``"custom"`` cannot be rebuilt)."""
        if "custom" in (config.prior, config.likelihood):
            raise ValueError(
                "a config with a custom prior or likelihood cannot rebuild it: build "
                "VAE(prior=..., likelihood=...) with the same objects"
            )
        return cls(**config.to_dict(), name=name)

    @property
    def name(self) -> str:
        """The prefix of this VAE's parameters in Pyro's param store (default mode)."""
        return self._pyro_name

    def custom_objects(self) -> dict[str, str]:
        """A description of each prior/likelihood given as an object rather than a name,
        e.g. ``{"prior": "StudentT(df: 4.0, loc: 0.0, scale: 1.0)"}``; checkpoints store it."""
        out = {}
        for kind, module in (("prior", self.model.prior), ("likelihood", self.likelihood)):
            if getattr(self.config, kind) == "custom":
                describe = getattr(module, "describe", None)
                out[kind] = describe() if callable(describe) else type(module).__name__
        return out

    @property
    def likelihood(self) -> Likelihood:
        return self.model.likelihood

    @property
    def kl_weight(self) -> float:
        """beta, the weight of the KL term in every objective (1: the ELBO). Setting it works
        for classic SVI as for the library's trainer; it is not saved in checkpoints."""
        return float(self.model.kl_weight.value)

    @kl_weight.setter
    def kl_weight(self, value: float) -> None:
        self.model.kl_weight.set(value)

    @property
    def semi_supervised(self) -> bool:
        """True when the guide holds q(y | x) and labels may be missing (-1)."""
        return self.config.semi_supervised

    @torch.no_grad()
    def classify(self, x: Tensor) -> Tensor:
        """q(y | x) of the semi-supervised VAE: class probabilities [B, num_classes]."""
        if self.guide.classifier is None:
            raise ValueError(
                "this VAE has no classifier q(y | x): build it with classifier='conv' or 'mlp'"
            )
        return self.guide.classifier(_flat_images(x, self.config.x_dim)).softmax(-1)

    def _given(self, x: Tensor, y: Tensor | None) -> Tensor | None:
        """The labels to condition on: y, with the semi-supervised VAE's missing ones (-1, or
        y None) replaced by q(y | x)'s most likely class."""
        if not self.semi_supervised:
            return y
        check_labels(y, self.config.num_classes, x.shape[0], x.device, unlabelled=True)
        guess = self.classify(x).argmax(-1)
        return guess if y is None else torch.where(y >= 0, y, guess)

    def _onehot(self, y: Tensor | None, n: int) -> Tensor | None:
        check_labels(y, self.config.num_classes, n, _device_of(self.model.decoder))
        return F.one_hot(y, self.config.num_classes).float() if y is not None else None

    @torch.no_grad()
    def encode(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Posterior loc and scale, each [B, z_dim]. A semi-supervised VAE encodes an image
        whose label is missing (-1, or y None) under q(y | x)'s most likely class."""
        x = _flat_images(x, self.config.x_dim)
        return self.guide.encoder(x, self._onehot(self._given(x, y), x.shape[0]))

    @torch.no_grad()
    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Mean of p(x | z, y), [..., B, x_dim]: what the figures show."""
        out = self.model.decoder(z, self._onehot(y, z.shape[-2]))
        return self.likelihood(out).mean

    @torch.no_grad()
    def reconstruct(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Decoder mean at the posterior mean, [B, x_dim]."""
        y = self._given(_flat_images(x, self.config.x_dim), y)
        loc, _ = self.encode(x, y)
        return self.decode(loc, y)

    @torch.no_grad()
    def sample(self, num: int | None = None, y: Tensor | None = None) -> Tensor:
        """Decoder means at z drawn from the prior: [num, x_dim] (num = len(y) if labels given)."""
        check_labels(y, self.config.num_classes, num, _device_of(self.model.decoder))
        n = y.shape[0] if y is not None else num
        if n is None:
            raise ValueError("give num (unconditional) or labels y (conditional)")
        prior = as_latent_event(self.model.prior(y), self.config.z_dim)
        z = prior.sample((n,) if not prior.batch_shape else ())
        return self.decode(z, y)


def labels_for(vae: VAE, y: Tensor) -> Tensor | None:
    """The labels the model takes: y for a conditional VAE, None otherwise."""
    return y if vae.config.num_classes else None
