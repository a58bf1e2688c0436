"""The VAE: a Pyro model p(x, z | y) and an amortized guide q(z | x, y), both ``PyroModule`` s.

Generative story (model), for each image n in the plate ``"data"``::

    z_n ~ p(z | y_n)                              # prior, N(0, I) by default
    x_n ~ p(x | decoder(z_n, y_n))                # likelihood, Bernoulli(logits) by default

Guide::

    z_n ~ N(loc(x_n, y_n), diag(scale(x_n, y_n)^2))

Stacked latents (``latent_dims=(d_1, ..., d_L)``, the IWAE paper's second architecture) have
sites z1 (next to x) ... zL (the prior's), all in the plate; the model runs top-down and the
guide bottom-up, every Gaussian from an MLP of the layer before it (and of the label)::

    model:  z_L ~ p(z_L | y);  z_l ~ N(loc, diag(scale^2)) = p(z_l | z_l+1, y), l = L-1 .. 1;
            x ~ p(x | decoder(z_1, y))
    guide:  z_1 ~ q(z_1 | x, y);  z_l+1 ~ q(z_l+1 | z_l, y), l = 1 .. L-1

The latent sites of both sit inside ``poutine.scale(kl_weight)``: with a weight beta the
ELBO of any Pyro objective becomes E_q[log p(x | z)] - beta KL(q || p), the beta-VAE (Higgins
et al. 2017), and a KL warm-up is beta rising from near 0 to 1. The weight is a buffer, so a
traced step reads it as an input and it may change every step.

The conditional VAE is the same model and guide built with ``num_classes > 0``: the one-hot
label is appended to the input of every network (for the conv network, to the dense layers:
the encoder's head and the decoder's first layer).

Images of shape (C, H, W) are D = C * H * W values, flat [B, D] in the model and the guide
(the likelihood scores one event over all D); the encoder sees them as [B, C, H, W]
(``networks.py`` states the contract every encoder and decoder keeps).

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
sums y out exactly, as does the library's ``EnumELBO``. With stacked latents the label goes
to every layer, as for the conditional VAE.
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
from pyro_vae.models.custom_networks import custom_networks
from pyro_vae.models.label_encoder import build_classifier
from pyro_vae.models.likelihoods import Likelihood, build_likelihood
from pyro_vae.models.networks import LatentLayer, build_networks
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


def _flat_images(x: Tensor, config: VAEConfig) -> Tensor:
    """x [B, D] or [B, C, H, W] -> [B, D]."""
    x = x.flatten(1) if x.dim() > 2 else x
    if x.dim() != 2 or x.shape[-1] != config.x_dim:
        raise ValueError(
            f"x must have shape [batch, {config.x_dim}] (or [batch, "
            f"{', '.join(map(str, config.image_shape))}]), got {tuple(x.shape)}"
        )
    return x


def _device_of(module: nn.Module) -> torch.device | None:
    p = next(iter(module.parameters()), None)
    return p.device if p is not None else None


def latent_sites(config: VAEConfig) -> list[str]:
    """The latent sites, bottom (next to x) first: ["z"] for one layer, else z1, z2, ..."""
    if not config.stacked:
        return ["z"]
    return [f"z{i}" for i in range(1, len(config.layers) + 1)]


def _layer_nets(config: VAEConfig, downward: bool) -> nn.Module:
    """The MLPs between stochastic layers: the guide's q(z_l+1 | z_l) (upward) or the model's
    p(z_l | z_l+1) (downward, hidden sizes mirrored), one per pair, bottom pair first."""
    c, dims = config, config.layers
    hidden = tuple(reversed(c.latent_hidden_dims)) if downward else c.latent_hidden_dims
    nets = [
        LatentLayer(lower, upper, hidden, c.activation, c.num_classes)
        if not downward
        else LatentLayer(upper, lower, hidden, c.activation, c.num_classes)
        for lower, upper in zip(dims[:-1], dims[1:], strict=True)
    ]
    return PyroModule[nn.ModuleList](nets)


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
    """p(x, z | y): prior, decoder, likelihood (and, for stacked latents, p(z_l | z_l+1) in
    ``layers``, bottom pair first). Call as ``model(x, y)``; x=None samples x.

    The semi-supervised VAE's model (``config.semi_supervised``) is p(x, y, z): its label site
    "y" is observed where y >= 0 and latent where y = -1 (or y is None).
    """

    def __init__(
        self,
        decoder: nn.Module,
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
        # Empty for one layer: no parameter, no state_dict key, the order of old checkpoints.
        self.layers = _layer_nets(config, downward=True)
        self.sites = latent_sites(config)
        self.z_dim = config.z_dim
        self.config = config
        self.num_classes = config.num_classes
        self.semi_supervised = config.semi_supervised

    def forward(
        self, x: Tensor | None = None, y: Tensor | None = None, batch_size: int | None = None
    ) -> Tensor:
        """x: [B, x_dim] (or [B, C, H, W]) or None; y: [B] labels (-1: missing,
        semi-supervised) or None; batch_size when both are None.

        Returns the decoder's raw output [..., B, params_per_pixel * x_dim].
        """
        if x is not None:
            x = _flat_images(x, self.config)
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
                z = pyro.sample(self.sites[-1], as_latent_event(self.prior(y), self.z_dim))
                # Top-down: p(z_l | z_l+1) for l = L-1 .. 1 (none for one layer).
                for site, layer in zip(self.sites[-2::-1], reversed(self.layers), strict=True):
                    loc, scale = layer(z, y_onehot)
                    z = pyro.sample(site, dist.Normal(loc, scale).to_event(1))
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
    """q(z | x, y) = N(loc(x, y), diag(scale(x, y)^2)); for stacked latents q(z_1 | x, y) and
    then q(z_l+1 | z_l, y) from ``layers``, bottom pair first. Call as ``guide(x, y)``.

    With a ``classifier`` (the semi-supervised VAE) it is q(y, z | x) where labels are
    missing: y ~ q(y | x) = Categorical(logits=classifier(x)) at the site "y_unobserved",
    masked where the label is given, then z ~ q(z | x, y).
    """

    def __init__(
        self,
        encoder: nn.Module,
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
        self.config = config
        self.layers = _layer_nets(config, downward=False)  # empty for one layer
        self.sites = latent_sites(config)
        self.num_classes = config.num_classes

    def forward(
        self, x: Tensor | None = None, y: Tensor | None = None, batch_size: int | None = None
    ) -> Tensor:
        """x: [B, x_dim] (or [B, C, H, W]); y: [B] labels or None. Returns the top layer's z
        [..., B, z_dim]."""
        if x is None:
            raise ValueError("the guide q(z | x) needs images x")
        x = _flat_images(x, self.config)
        semi = self.classifier is not None
        check_labels(y, self.num_classes, x.shape[0], x.device, unlabelled=semi)
        images = x.unflatten(-1, self.config.image_shape)
        with pyro.plate("data", x.shape[0]):
            if semi:
                y = self._label(images, y)
            y_onehot = F.one_hot(y, self.num_classes).to(x.dtype) if y is not None else None
            with poutine.scale(scale=self._kl_weight[0].value):
                loc, scale = self.encoder(images, y_onehot)
                z = pyro.sample(self.sites[0], dist.Normal(loc, scale).to_event(1))
                # Bottom-up: q(z_l+1 | z_l) for l = 1 .. L-1 (none for one layer).
                for site, layer in zip(self.sites[1:], self.layers, strict=True):
                    loc, scale = layer(z, y_onehot)
                    z = pyro.sample(site, dist.Normal(loc, scale).to_event(1))
                return z

    def _label(self, images: Tensor, y: Tensor | None) -> Tensor:
        """The given labels, and y ~ q(y | x) where they are missing: [..., B]. images:
        [B, C, H, W]."""
        if y is None:
            y = torch.full(images.shape[:1], UNLABELLED, dtype=torch.long, device=images.device)
        given = y >= 0
        with poutine.mask(mask=~given):
            logits = self.classifier(images)
            drawn = pyro.sample("y_unobserved", dist.Categorical(logits=logits))
        return torch.where(given, y, drawn)

    def posterior_means(
        self, x: Tensor, y_onehot: Tensor | None = None
    ) -> list[tuple[Tensor, Tensor]]:
        """(loc, scale) of every layer, bottom first, each [..., B, d_l], each layer given the
        one below at its mean: q(z_1 | x), q(z_2 | z_1 = loc_1), ... (no Pyro sites). x is
        [B, x_dim] (flat) or [B, C, H, W]."""
        shaped = x.unflatten(-1, self.config.image_shape) if x.dim() == 2 else x
        out = [self.encoder(shaped, y_onehot)]
        for layer in self.layers:
            out.append(layer(out[-1][0], y_onehot))
        return out

    def top_loc_scale(self, x: Tensor, y_onehot: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The top layer's (loc, scale) with the layers below at their means; for one layer,
        the encoder's. The VampPrior's components are this at its pseudo-inputs."""
        return self.posterior_means(x, y_onehot)[-1]


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

    ``latent_dims=(100, 50)`` stacks stochastic layers z1 (100, next to x) and z2 (50, the
    prior's); ``latent_hidden_dims`` are the MLPs between two layers. ``z_dim`` is the top
    layer's size (it follows ``latent_dims``). The figures' methods (:meth:`encode`,
    :meth:`decode`, :meth:`sample`) work on the top layer, the lower layers at their
    conditional means; :meth:`reconstruct` decodes the bottom layer's posterior mean.

    ``network`` names the encoder and decoder (``networks.NETWORKS``: "mlp" of ``hidden_dims``,
    "conv" of ``conv_channels``), for images of ``image_shape`` (C, H, W) (default: one channel,
    square, of ``x_dim`` values). ``encoder`` and ``decoder`` (both or neither) are the user's
    own ``nn.Module`` s instead, checked once here against the contract of
    ``custom_networks.py``.

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
        x_dim: int | None = VAEConfig.x_dim,
        image_shape: tuple[int, ...] | None = VAEConfig.image_shape,
        network: str = VAEConfig.network,
        conv_channels: tuple[int, ...] = VAEConfig.conv_channels,
        prior_components: int = VAEConfig.prior_components,
        likelihood_scale: float | None = VAEConfig.likelihood_scale,
        latent_dims: tuple[int, ...] = VAEConfig.latent_dims,
        latent_hidden_dims: tuple[int, ...] = VAEConfig.latent_hidden_dims,
        classifier: str = VAEConfig.classifier,
        classifier_dims: tuple[int, ...] = VAEConfig.classifier_dims,
        kl_weight: float = DEFAULT_KL_WEIGHT,
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        name: str | None = None,
    ) -> None:
        if isinstance(z_dim, VAEConfig):
            raise TypeError("VAE takes options, not a VAEConfig: use VAE.from_config(config)")
        super().__init__(name=f"vae_{next(_VAE_NUMBERS)}" if name is None else name)
        if (encoder is None) != (decoder is None):
            raise ValueError("pass both encoder= and decoder= modules, or neither")
        self.config = VAEConfig(
            x_dim=x_dim,
            image_shape=image_shape,
            z_dim=z_dim,
            latent_dims=tuple(latent_dims),
            latent_hidden_dims=tuple(latent_hidden_dims),
            hidden_dims=tuple(hidden_dims),
            network=network if encoder is None else "custom",
            conv_channels=tuple(conv_channels),
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
        if encoder is None:
            encoder, decoder = build_networks(c, lik.params_per_pixel)
        else:
            encoder, decoder = custom_networks(encoder, decoder, c, lik.params_per_pixel)
        # The guide first: the order of parameters() (and of an optimizer's saved state).
        weight = KLWeight(kl_weight)
        self.guide = VAEGuide(encoder, c, weight, build_classifier(c))
        # The VampPrior's components come from the guide's way to the top layer.
        top = self.guide.top_loc_scale if c.stacked else encoder
        self.model = VAEModel(decoder, build_prior(prior, c, top), lik, c, weight)

    @classmethod
    def from_config(cls, config: VAEConfig, name: str | None = None) -> VAE:
        """The VAE a config describes; registry names only (``"custom"`` cannot be rebuilt)."""
        if "custom" in (config.prior, config.likelihood, config.network):
            raise ValueError(
                "a config with a custom prior, likelihood or network cannot rebuild it: build "
                "VAE(prior=..., likelihood=..., encoder=..., decoder=...) with the same objects"
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
        if self.config.network == "custom":
            out["encoder"] = type(self.guide.encoder.net).__name__
            out["decoder"] = type(self.model.decoder.net).__name__
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
        """q(y | x) of the semi-supervised VAE: class probabilities [B, num_classes]; x
        [B, x_dim] or [B, C, H, W]."""
        if self.guide.classifier is None:
            raise ValueError(
                "this VAE has no classifier q(y | x): build it with classifier='conv' or 'mlp'"
            )
        images = _flat_images(x, self.config).unflatten(-1, self.config.image_shape)
        return self.guide.classifier(images).softmax(-1)

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

    @property
    def sites(self) -> list[str]:
        """The latent sites, bottom first: ["z"], or ["z1", "z2", ...] for stacked latents."""
        return self.model.sites

    @torch.no_grad()
    def encode_layers(self, x: Tensor, y: Tensor | None = None) -> list[tuple[Tensor, Tensor]]:
        """Posterior loc and scale of every layer, bottom first, each [B, d_l], each layer
        given the one below at its mean (:meth:`VAEGuide.posterior_means`); a missing label
        (semi-supervised: -1, or y None) is q(y | x)'s most likely class."""
        x = _flat_images(x, self.config)
        y = self._given(x, y)
        return self.guide.posterior_means(x, self._onehot(y, x.shape[0]))

    @torch.no_grad()
    def encode(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Posterior loc and scale of the top layer, each [B, z_dim]; x [B, x_dim] or
        [B, C, H, W] (stacked latents: the layers below at their means). A semi-supervised VAE
        encodes an image whose label is missing (-1, or y None) under q(y | x)'s most likely
        class."""
        return self.encode_layers(x, y)[-1]

    @torch.no_grad()
    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Mean of p(x | z, y) at a top-layer z [..., B, z_dim], [..., B, x_dim]: what the
        figures show. Stacked latents go down the layers at their means, z_l = E[z_l | z_l+1]."""
        y_onehot = self._onehot(y, z.shape[-2])
        for layer in reversed(self.model.layers):
            z, _ = layer(z, y_onehot)
        return self._decode_bottom(z, y_onehot)

    def _decode_bottom(self, z1: Tensor, y_onehot: Tensor | None) -> Tensor:
        return self.likelihood(self.model.decoder(z1, y_onehot)).mean

    @torch.no_grad()
    def reconstruct(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Decoder mean at the bottom layer's posterior mean, [B, x_dim] (for one layer, the
        posterior mean of z); a missing label (semi-supervised) is q(y | x)'s most likely."""
        y = self._given(_flat_images(x, self.config), y)
        loc, _ = self.encode_layers(x, y)[0]
        return self._decode_bottom(loc, self._onehot(y, x.shape[0]))

    @torch.no_grad()
    def sample(self, num: int | None = None, y: Tensor | None = None) -> Tensor:
        """Decoder means at z drawn from the prior: [num, x_dim] (num = len(y) if labels given).
        Stacked latents: z_L from the prior, then each z_l ~ p(z_l | z_l+1) down to z_1."""
        check_labels(y, self.config.num_classes, num, _device_of(self.model.decoder))
        n = y.shape[0] if y is not None else num
        if n is None:
            raise ValueError("give num (unconditional) or labels y (conditional)")
        prior = as_latent_event(self.model.prior(y), self.config.z_dim)
        z = prior.sample((n,) if not prior.batch_shape else ())
        y_onehot = self._onehot(y, n)
        for layer in reversed(self.model.layers):  # stacked latents: z_l ~ p(z_l | z_l+1)
            loc, scale = layer(z, y_onehot)
            z = dist.Normal(loc, scale).sample()
        return self._decode_bottom(z, y_onehot)

    def sample_width(self) -> int:
        """The widest per-sample, per-image tensor of a trace: the decoder's output, a hidden
        layer or a latent layer (what the NLL sizes its chunks of samples by)."""
        c = self.config
        out = c.x_dim * self.likelihood.params_per_pixel
        return max(
            (out, getattr(self.model.decoder, "widest", out), *c.hidden_dims, *c.layers)
            + (c.latent_hidden_dims if c.stacked else ())
        )


def require_vae(model: object, what: str) -> None:
    """ValueError, one line, where ``what`` needs a VAE's own encoder, decoder and prior."""
    if not isinstance(model, VAE):
        name = getattr(model, "name", type(model).__name__)
        raise ValueError(
            f"{what} need a pyro_vae.VAE (its encode, decode and sample); {name!r} is a "
            f"{type(model).__name__}: train, the NLL and the metrics take it, these do not"
        )


def labels_for(vae: VAE, y: Tensor) -> Tensor | None:
    """The labels the model takes: y for a conditional VAE, None otherwise."""
    return y if vae.config.num_classes else None
