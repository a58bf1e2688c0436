"""Priors p(z) (or p(z | y)): modules that return a Pyro distribution over one latent vector.

Every prior is called as ``prior(y)`` with the labels ``y`` ([B] LongTensor, or None for an
unconditional model) and returns a distribution whose ``event_shape`` is ``[z_dim]`` and whose
batch shape broadcasts against the data plate ``[B]``.

Adding a prior is one class with a ``from_config`` classmethod and one line in ``PRIORS``; the
registry-wide tests cover it with no new test code.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable
from typing import Any

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule, PyroParam
from torch import Tensor, nn
from torch.distributions import constraints

from pyro_vae.models.config import VAEConfig, resolve_image_shape
from pyro_vae.runtime.settings import publish_registry

PriorLike = dist.Distribution | nn.Module | Callable[[Tensor | None], dist.Distribution]


def as_latent_event(d: dist.Distribution, z_dim: int) -> dist.Distribution:
    """Makes ``d`` one event over z: scalar or [z_dim]-batched becomes a [z_dim] event."""
    if tuple(d.event_shape) == (z_dim,):
        return d
    if d.event_shape == ():
        batch = tuple(d.batch_shape)
        if batch == () or batch[-1] == 1:
            d = d.expand(batch[:-1] + (z_dim,) if batch else (z_dim,))
        elif batch[-1] != z_dim:
            raise ValueError(
                f"prior batch shape {batch} does not broadcast to z_dim={z_dim}; "
                f"pass a distribution with batch shape () or [{z_dim}]"
            )
        return d.to_event(1)
    raise ValueError(
        f"prior event shape {tuple(d.event_shape)} is not [{z_dim}]; pass a distribution "
        "over one latent coordinate (event shape ()) or over the whole vector (event shape [z_dim])"
    )


class StandardNormalPrior(PyroModule):
    """p(z) = N(0, I)."""

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.register_buffer("loc", torch.zeros(z_dim))
        self.register_buffer("scale", torch.ones(z_dim))

    @classmethod
    def from_config(cls, config: VAEConfig, encoder: nn.Module) -> StandardNormalPrior:
        return cls(config.z_dim)

    def forward(self, y: Tensor | None = None) -> dist.Distribution:
        return dist.Normal(self.loc, self.scale).to_event(1)


class LearnedNormalPrior(PyroModule):
    """p(z) = N(m, diag(s^2)) with learned m and s > 0."""

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(z_dim))
        self.scale = PyroParam(torch.ones(z_dim), constraint=constraints.positive)

    @classmethod
    def from_config(cls, config: VAEConfig, encoder: nn.Module) -> LearnedNormalPrior:
        return cls(config.z_dim)

    def forward(self, y: Tensor | None = None) -> dist.Distribution:
        return dist.Normal(self.loc, self.scale).to_event(1)


class MixtureOfGaussiansPrior(PyroModule):
    """p(z) = sum_k pi_k N(z; m_k, diag(s_k^2)), all learned. No analytic KL: Monte Carlo."""

    def __init__(self, z_dim: int, num_components: int) -> None:
        super().__init__()
        # Spread-out initial means, so components do not start identical.
        self.locs = nn.Parameter(torch.randn(num_components, z_dim))
        self.scales = PyroParam(torch.ones(num_components, z_dim), constraint=constraints.positive)
        self.logits = nn.Parameter(torch.zeros(num_components))

    @classmethod
    def from_config(cls, config: VAEConfig, encoder: nn.Module) -> MixtureOfGaussiansPrior:
        return cls(config.z_dim, config.prior_components)

    def forward(self, y: Tensor | None = None) -> dist.Distribution:
        components = dist.Normal(self.locs, self.scales).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), components)


class VampPrior(PyroModule):
    """VampPrior (Tomczak & Welling 2018): p(z) = 1/K sum_k q(z | u_k), u_k learned pseudo-inputs.

    Uses the guide's encoder, held by reference (not as a submodule) so its parameters belong
    to the guide alone. With labels, pseudo-input k carries the fixed label k mod num_classes.
    """

    def __init__(
        self,
        encoder: nn.Module,
        x_dim: int,
        num_components: int,
        num_classes: int,
        image_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        # The pseudo-inputs are flat [K, x_dim] (as checkpoints hold them); the encoder sees
        # them as images.
        self.image_shape = resolve_image_shape(x_dim, image_shape)[1]
        # Pseudo-inputs start near mid-grey, inside the data's range.
        self.pseudo_inputs = nn.Parameter(0.5 + 0.01 * torch.randn(num_components, x_dim))
        labels = torch.arange(num_components) % max(num_classes, 1)
        self.register_buffer(
            "pseudo_onehot",
            F.one_hot(labels, num_classes).float() if num_classes else torch.empty(0),
        )
        self._encoder = (encoder,)  # a tuple hides it from nn.Module registration

    @classmethod
    def from_config(cls, config: VAEConfig, encoder: nn.Module) -> VampPrior:
        return cls(
            encoder, config.x_dim, config.prior_components, config.num_classes, config.image_shape
        )

    def forward(self, y: Tensor | None = None) -> dist.Distribution:
        onehot = self.pseudo_onehot if self.pseudo_onehot.numel() else None
        loc, scale = self._encoder[0](self.pseudo_inputs.unflatten(-1, self.image_shape), onehot)
        k = self.pseudo_inputs.shape[0]
        mix = dist.Categorical(logits=torch.zeros(k, device=loc.device, dtype=loc.dtype))
        return dist.MixtureSameFamily(mix, dist.Normal(loc, scale).to_event(1))


class ConditionalNormalPrior(PyroModule):
    """p(z | y) = N(m_y, diag(s_y^2)), one learned Gaussian per class (conditional VAE only)."""

    def __init__(self, z_dim: int, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(
                "the conditional prior needs labels: build the VAE with num_classes > 0"
            )
        self.locs = nn.Parameter(torch.zeros(num_classes, z_dim))
        self.scales = PyroParam(torch.ones(num_classes, z_dim), constraint=constraints.positive)

    @classmethod
    def from_config(cls, config: VAEConfig, encoder: nn.Module) -> ConditionalNormalPrior:
        return cls(config.z_dim, config.num_classes)

    def forward(self, y: Tensor | None = None) -> dist.Distribution:
        if y is None:
            raise ValueError("the conditional prior p(z | y) needs labels y")
        return dist.Normal(self.locs[y], self.scales[y]).to_event(1)


class DistributionPrior(nn.Module):
    """Wraps a fixed user distribution; its tensors follow the module across ``.to(device)``,
    ``.double()`` and the like, however deeply they sit (``Independent``, ``MixtureSameFamily``,
    ``TransformedDistribution`` and its transforms, cached ``probs``/``logits``)."""

    def __init__(self, d: dist.Distribution) -> None:
        super().__init__()
        self.dist = d

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - nn.Module's signature
        super()._apply(fn, recurse)
        self.dist = map_tensors(self.dist, fn)
        return self

    def describe(self) -> str:
        return repr(self.dist)

    def forward(self, y: Tensor | None = None) -> dist.Distribution:
        return self.dist


def map_tensors(obj: Any, fn: Callable[[Tensor], Tensor], memo: dict | None = None) -> Any:
    """A copy of a distribution (or transform) with ``fn`` applied to every tensor it holds.

    Walks the object's attributes, and those of the distributions and transforms inside it,
    copying each object once (shared sub-objects stay shared). Cached values such as a
    distribution's lazily computed ``probs`` are tensors like any other and move too; a
    transform's weak reference to its inverse and its last-call cache are dropped, as they
    would point at the old tensors.
    """
    memo = {} if memo is None else memo
    if torch.is_tensor(obj):
        return fn(obj)
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, list | tuple):
        return type(obj)(map_tensors(v, fn, memo) for v in obj)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn, memo) for k, v in obj.items()}
    if not isinstance(obj, torch.distributions.Distribution | torch.distributions.Transform):
        return obj
    new = copy.copy(obj)
    memo[id(obj)] = new
    for key, value in vars(obj).items():
        if isinstance(value, weakref.ref):
            value = None  # Transform._inv: the inverse is rebuilt from the new transform
        elif key == "_cached_x_y":
            value = (None, None)
        else:
            value = map_tensors(value, fn, memo)
        new.__dict__[key] = value
    return new


PRIORS: dict[str, type[nn.Module]] = {
    "normal": StandardNormalPrior,
    "learned-normal": LearnedNormalPrior,
    "mog": MixtureOfGaussiansPrior,
    "vamp": VampPrior,
    "conditional": ConditionalNormalPrior,
}
publish_registry("priors", PRIORS)  # the choices of VAEConfig.prior


def build_prior(prior: str | PriorLike, config: VAEConfig, encoder: nn.Module) -> nn.Module:
    """The one place a prior name (or a user object) becomes a prior module."""
    if isinstance(prior, str):
        if prior not in PRIORS:
            raise ValueError(f"unknown prior {prior!r}; choose one of {sorted(PRIORS)}")
        return PRIORS[prior].from_config(config, encoder)
    if isinstance(prior, dist.Distribution):
        return DistributionPrior(prior)
    if isinstance(prior, nn.Module):
        return prior
    if callable(prior):
        return _CallablePrior(prior)
    raise TypeError(
        "prior must be a name, a pyro.distributions object or a callable, "
        f"got {type(prior).__name__}"
    )


class _CallablePrior(nn.Module):
    def __init__(self, fn: Callable[[Tensor | None], dist.Distribution]) -> None:
        super().__init__()
        self.fn = fn

    def describe(self) -> str:
        return getattr(self.fn, "__qualname__", type(self.fn).__name__)

    def forward(self, y: Tensor | None = None) -> dist.Distribution:
        return self.fn(y)
