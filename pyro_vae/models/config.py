"""The configuration of a model: what is needed to rebuild a :class:`pyro_vae.VAE`.

A checkpoint stores it as a plain dict, so a run's model can be rebuilt from its directory.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class VAEConfig:
    """What is needed to rebuild a :class:`pyro_vae.VAE`."""

    x_dim: int = 784
    z_dim: int = 50
    # One hidden layer of 400 and z_dim 50 are Pyro's own VAE example, so results compare.
    hidden_dims: tuple[int, ...] = (400,)
    # Softplus is what Pyro's example uses; any name in networks.ACTIVATIONS works.
    activation: str = "softplus"
    # 0 = unconditional; 10 for MNIST digits makes the conditional VAE (same model and guide).
    num_classes: int = 0
    # Names from priors.PRIORS / likelihoods.LIKELIHOODS; "custom" when a user passed an object.
    prior: str = "normal"
    likelihood: str = "bernoulli"
    # Mixture components (mog) or pseudo-inputs (vamp); ignored by the other priors.
    prior_components: int = 10
    # Fixed observation scale for the gaussian/laplace likelihoods; None = learned per pixel.
    likelihood_scale: float | None = None

    def __post_init__(self) -> None:
        self.hidden_dims = tuple(int(h) for h in self.hidden_dims)
        if self.z_dim < 1:
            raise ValueError(f"z_dim must be at least 1, got {self.z_dim}")
        if self.num_classes < 0:
            raise ValueError(
                f"num_classes must be 0 (unconditional) or more, got {self.num_classes}"
            )
        if any(h < 1 for h in self.hidden_dims):
            raise ValueError(f"hidden_dims must be positive, got {self.hidden_dims}")
        if self.prior_components < 1:
            raise ValueError(f"prior_components must be at least 1, got {self.prior_components}")
        if self.likelihood_scale is not None and not self.likelihood_scale > 0:
            raise ValueError(f"likelihood_scale must be positive, got {self.likelihood_scale}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden_dims"] = list(self.hidden_dims)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VAEConfig:
        return cls(**_known_fields(cls, d))


def _known_fields(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}; known: {sorted(names)}")
    return dict(d)
