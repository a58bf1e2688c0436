"""The configuration of a model: what is needed to rebuild a :class:`pyro_vae.VAE`.

A checkpoint stores it as a plain dict, so a run's model can be rebuilt from its directory. Each
field is a row of the options table (``runtime.settings``): its default, help and command-line
form are stated here once; ``VAE.__init__`` and ``pyro-vae train`` take them from here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pyro_vae.runtime.settings import (
    NONNEGATIVE,
    POSITIVE,
    check_settings,
    or_auto,
    positive_float,
    registry_names,
    setting,
    sizes,
)

# One hidden layer of 400 and z_dim 50 are Pyro's own VAE example, so results compare.
DEFAULT_Z_DIM = 50


@dataclass
class VAEConfig:
    """What is needed to rebuild a :class:`pyro_vae.VAE`. Every field must match a
    checkpoint's for its weights to load into the VAE (``runs.records.check_fits``)."""

    # Set from the data by the CLI (H * W of the images), so not an option.
    x_dim: int = setting(784, "pixels per image, H * W", cli=False)
    # The top latent layer, the one the prior is over (a one-layer VAE's only one). None: the
    # last of latent_dims, or DEFAULT_Z_DIM for one layer; a config holds the resolved size.
    z_dim: int | None = setting(
        None,
        "latent dimension (of the top layer when --latent-dims stacks several)",
        parse=POSITIVE,
        shown=f"{DEFAULT_Z_DIM}, or the last of --latent-dims",
    )
    # Stacked stochastic layers, z1 (next to x) first, e.g. (100, 50) as in the IWAE paper's
    # second architecture: z_L ~ prior, z_l ~ p(z_l | z_l+1), x ~ p(x | z1). () = one layer of
    # z_dim, stored as () so one layer has one record, whatever way it was asked for.
    latent_dims: tuple[int, ...] = setting(
        (),
        "stacked stochastic layers z1,z2,..., z1 next to x, e.g. 100,50 (the IWAE paper's "
        "two layers); the prior is over the last",
        parse=sizes,
        shown="one layer of --z-dim",
    )
    # The MLPs between two stochastic layers, p(z_l | z_l+1) and q(z_l+1 | z_l), as the IWAE
    # paper's two-layer model has them (100, 100); unused by a one-layer VAE.
    latent_hidden_dims: tuple[int, ...] = setting(
        (100, 100),
        "hidden layers between two stochastic layers (with --latent-dims)",
        parse=sizes,
    )
    hidden_dims: tuple[int, ...] = setting(
        (400,), "the hidden layers' sizes, e.g. 400 or 200,200", parse=sizes
    )
    # Softplus is what Pyro's example uses; any name in networks.ACTIVATIONS works.
    activation: str = setting(
        "softplus", "the networks' activation", choices=registry_names("activations")
    )
    # 0 = unconditional; 10 for MNIST digits makes the conditional VAE (same model and guide).
    num_classes: int = setting(
        0,
        "10 = conditional VAE on digits; auto = the number of classes in the data",
        parse=or_auto(NONNEGATIVE),
        keeps_run=("auto",),
    )
    # Names from priors.PRIORS / likelihoods.LIKELIHOODS; "custom" when a user passed an object.
    prior: str = setting("normal", "the prior p(z | y)", choices=registry_names("priors"))
    likelihood: str = setting(
        "bernoulli", "the likelihood p(x | z, y)", choices=registry_names("likelihoods")
    )
    # Mixture components (mog) or pseudo-inputs (vamp); ignored by the other priors.
    prior_components: int = setting(10, "K for mog and vamp", parse=POSITIVE)
    # Fixed observation scale for the gaussian/laplace likelihoods; None = learned per pixel.
    likelihood_scale: float | None = setting(
        None, "fixed scale for gaussian/laplace", parse=positive_float, shown="learned per pixel"
    )

    def __post_init__(self) -> None:
        self.hidden_dims = tuple(int(h) for h in self.hidden_dims)
        self.latent_dims = tuple(int(h) for h in self.latent_dims)
        self.latent_hidden_dims = tuple(int(h) for h in self.latent_hidden_dims)
        check_settings(self)
        if self.latent_dims:
            top = self.latent_dims[-1]
            if self.z_dim is not None and self.z_dim != top:
                raise ValueError(
                    f"z_dim {self.z_dim} is not the top layer of latent_dims "
                    f"{','.join(map(str, self.latent_dims))}: the prior is over the last "
                    f"layer; drop z_dim or make it {top}"
                )
            self.z_dim = top
        elif self.z_dim is None:
            self.z_dim = DEFAULT_Z_DIM
        if len(self.latent_dims) == 1:
            self.latent_dims = ()  # one layer: the one record a one-layer VAE has

    @property
    def layers(self) -> tuple[int, ...]:
        """Every stochastic layer's size, z1 (next to x) first: ``(z_dim,)`` for one layer."""
        return self.latent_dims or (self.z_dim,)

    @property
    def stacked(self) -> bool:
        """More than one stochastic layer (sites z1, z2, ...; one layer's site is "z")."""
        return len(self.layers) > 1

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("hidden_dims", "latent_dims", "latent_hidden_dims"):
            d[key] = list(getattr(self, key))
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
