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


@dataclass
class VAEConfig:
    """What is needed to rebuild a :class:`pyro_vae.VAE`. Every field must match a
    checkpoint's for its weights to load into the VAE (``runs.records.check_fits``)."""

    # Set from the data by the CLI (H * W of the images), so not an option.
    x_dim: int = setting(784, "pixels per image, H * W", cli=False)
    z_dim: int = setting(50, "latent dimension", parse=POSITIVE)
    # One hidden layer of 400 and z_dim 50 are Pyro's own VAE example, so results compare.
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
    # The semi-supervised VAE (M2, Kingma et al. 2014): q(y | x) in the guide, a label site "y"
    # in the model, observed where y >= 0 and summed out where y = -1. "none": every label is
    # given (the conditional VAE). The command line's "auto" is conv with --labelled, else none.
    classifier: str = setting(
        "none",
        "q(y | x), the classifier of the semi-supervised VAE (M2): conv, mlp, or none (every "
        "label given); auto: conv with --labelled, else none",
        choices=lambda: ["auto", "none", *registry_names("classifiers")()],
        cli_default=lambda: "auto",
        keeps_run=("auto",),
    )
    # One layer of 500 units is the M2 paper's (and Pyro's tutorial's) q(y | x).
    classifier_dims: tuple[int, ...] = setting(
        (500,), "the hidden layers of q(y | x), after conv's convolutions", parse=sizes
    )

    def __post_init__(self) -> None:
        self.hidden_dims = tuple(int(h) for h in self.hidden_dims)
        self.classifier_dims = tuple(int(h) for h in self.classifier_dims)
        check_settings(self)

    @property
    def semi_supervised(self) -> bool:
        """True for the semi-supervised VAE (M2): q(y | x) in the guide, labels may be -1."""
        return self.classifier != "none"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden_dims"] = list(self.hidden_dims)
        d["classifier_dims"] = list(self.classifier_dims)
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
