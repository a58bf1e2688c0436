"""The configuration of a model: what is needed to rebuild a :class:`pyro_vae.VAE`.

A checkpoint stores it as a plain dict, so a run's model can be rebuilt from its directory. Each
field is a row of the options table (``runtime.settings``): its default, help and command-line
form are stated here once; ``VAE.__init__`` and ``pyro-vae train`` take them from here.
"""

from __future__ import annotations

import dataclasses
import math
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

    # Set from the data by the CLI, so not options. x_dim None: C * H * W of image_shape, else
    # 784; image_shape None: one channel, square (what runs recorded before it existed mean).
    x_dim: int | None = setting(None, "values per image, C * H * W", cli=False)
    image_shape: tuple[int, ...] | None = setting(
        None, "(C, H, W) of the images: C = 1 grayscale, 3 RGB", cli=False
    )
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
    # mlp: Pyro's example (dense layers of hidden_dims); conv: the strided-conv encoder and
    # transposed-conv decoder of Pythae's and AntixK's baselines (conv_channels). Names from
    # networks.NETWORKS; "custom" when a user passed encoder and decoder modules.
    network: str = setting(
        "mlp",
        "mlp: dense layers (--hidden-dims); conv: stride-2 convolutions (--conv-channels), "
        "a linear head, and the mirrored transposed convolutions",
        choices=registry_names("networks"),
    )
    # Kernel 4, stride 2, padding 1: each layer halves H and W (28 -> 14 -> 7 -> 3).
    conv_channels: tuple[int, ...] = setting(
        (32, 64, 128),
        "conv: channels of the stride-2 convolutions, e.g. 32,64,128,256 (the decoder mirrors "
        "them); hidden_dims is for mlp",
        parse=sizes,
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
        self.conv_channels = tuple(int(c) for c in self.conv_channels)
        self.x_dim, self.image_shape = resolve_image_shape(self.x_dim, self.image_shape)
        self.latent_dims = tuple(int(h) for h in self.latent_dims)
        self.latent_hidden_dims = tuple(int(h) for h in self.latent_hidden_dims)
        self.classifier_dims = tuple(int(h) for h in self.classifier_dims)
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

    @property
    def channels(self) -> int:
        """C: 1 for grayscale images, 3 for RGB."""
        return self.image_shape[0]

    @property
    def semi_supervised(self) -> bool:
        """True for the semi-supervised VAE (M2): q(y | x) in the guide, labels may be -1."""
        return self.classifier != "none"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name in ("hidden_dims", "conv_channels", "image_shape", "latent_dims"):
            d[name] = list(d[name])
        d["latent_hidden_dims"] = list(d["latent_hidden_dims"])
        d["classifier_dims"] = list(d["classifier_dims"])
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


DEFAULT_X_DIM = 784  # MNIST's 28 x 28, the x_dim of a VAE given neither x_dim nor image_shape


def resolve_image_shape(
    x_dim: int | None, image_shape: tuple[int, ...] | list[int] | None
) -> tuple[int, tuple[int, int, int]]:
    """(x_dim, (C, H, W)) from either or both; ValueError when they disagree. Without a shape,
    x_dim values are one channel, square when x_dim is a square (else one row)."""
    if image_shape is not None:
        shape = tuple(int(v) for v in image_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"image_shape must be (C, H, W) of positive sizes, got {image_shape}")
        values = shape[0] * shape[1] * shape[2]
        if x_dim is not None and x_dim != values:
            raise ValueError(
                f"x_dim {x_dim} does not match image_shape {shape} ({values} values); give one"
            )
        return values, shape  # type: ignore[return-value]
    x_dim = DEFAULT_X_DIM if x_dim is None else int(x_dim)
    if x_dim < 1:
        raise ValueError(f"x_dim must be at least 1, got {x_dim}")
    side = math.isqrt(x_dim)
    return x_dim, ((1, side, side) if side * side == x_dim else (1, 1, x_dim))
