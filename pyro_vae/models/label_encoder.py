"""q(y | x): the classifier head of the semi-supervised VAE's guide (Kingma et al. 2014, M2).

A network from images to class logits, held by the guide (``vae.guide.classifier``). The guide
draws the label from it where the label is missing; the objective sums that draw out exactly
(``inference.objectives.EnumELBO``) and adds alpha * -log q(y | x) on the labelled images.

The architectures, by ``VAEConfig.classifier``:

- ``mlp``: x -> hidden layers (``classifier_dims``, the networks' activation) -> logits; one
  layer of 500 softplus units is the paper's and Pyro's tutorial's q(y | x);
- ``conv``: two 5 x 5 convolutions of stride 2 (16 and 32 channels, ReLU) on the square image,
  then hidden layers (``classifier_dims``, ReLU) -> logits.

Adding one is a class with ``from_config(config)`` and ``forward(x) -> logits`` and one line in
``CLASSIFIERS``.
"""

from __future__ import annotations

import math

from pyro.nn import PyroModule
from torch import Tensor, nn

from pyro_vae.models.config import VAEConfig
from pyro_vae.models.networks import mlp
from pyro_vae.runtime.settings import publish_registry

# VAEConfig.classifier of a VAE without q(y | x): every label is given (the conditional VAE).
NO_CLASSIFIER = "none"
# What `pyro-vae train --labelled N` builds unless --classifier says otherwise.
DEFAULT_CLASSIFIER = "conv"


class MLPClassifier(PyroModule):
    """x [..., B, x_dim] -> logits [..., B, num_classes] through ``classifier_dims``."""

    def __init__(self, x_dim: int, hidden: tuple[int, ...], activation: str, num_classes: int):
        super().__init__()
        self.net = mlp(x_dim, hidden, num_classes, activation)

    @classmethod
    def from_config(cls, config: VAEConfig) -> MLPClassifier:
        return cls(config.x_dim, config.classifier_dims, config.activation, config.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


CONV_CHANNELS = (16, 32)
CONV_KERNEL = 5
CONV_STRIDE = 2


def _conv_side(side: int) -> int:
    """The side of a conv5-stride-2 layer's output on a side x side input (no padding)."""
    return (side - CONV_KERNEL) // CONV_STRIDE + 1


# Two conv5-stride-2 layers leave at least one pixel from 13 x 13 on (28 -> 12 -> 4).
CONV_MIN_SIDE = 13


class ConvClassifier(PyroModule):
    """x [..., B, S * S] -> logits [..., B, num_classes]: two 5 x 5 convolutions of stride 2
    (16 and 32 channels, ReLU), then the hidden layers (ReLU). Strided rather than pooled:
    on a CPU the pooled LeNet of the same widths costs four times as much, and this one about
    what the 500-unit MLP costs (a batch of 128, forward and backward)."""

    def __init__(self, side: int, hidden: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        c1, c2 = CONV_CHANNELS
        after = _conv_side(_conv_side(side))
        self.side = side
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, CONV_KERNEL, stride=CONV_STRIDE),
            nn.ReLU(),
            nn.Conv2d(c1, c2, CONV_KERNEL, stride=CONV_STRIDE),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.head = mlp(c2 * after * after, hidden, num_classes, "relu")

    @classmethod
    def from_config(cls, config: VAEConfig) -> ConvClassifier:
        side = math.isqrt(config.x_dim)
        if side * side != config.x_dim or side < CONV_MIN_SIDE:
            raise ValueError(
                f"the conv classifier needs square images of at least {CONV_MIN_SIDE}x"
                f"{CONV_MIN_SIDE}, got {config.x_dim} pixels; use --classifier mlp"
            )
        return cls(side, config.classifier_dims, config.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        h = self.features(x.reshape(-1, 1, self.side, self.side))
        return self.head(h).reshape(*lead, -1)


CLASSIFIERS: dict[str, type[nn.Module]] = {"mlp": MLPClassifier, "conv": ConvClassifier}
publish_registry("classifiers", CLASSIFIERS)  # the choices of VAEConfig.classifier


def build_classifier(config: VAEConfig) -> nn.Module | None:
    """The one place ``VAEConfig.classifier`` becomes q(y | x) (None for "none")."""
    if config.classifier == NO_CLASSIFIER:
        return None
    if config.classifier not in CLASSIFIERS:
        raise ValueError(
            f"unknown classifier {config.classifier!r}; choose one of "
            f"{[NO_CLASSIFIER, *sorted(CLASSIFIERS)]}"
        )
    if config.num_classes < 2:
        raise ValueError(
            f"the classifier q(y | x) needs labels: build the VAE with num_classes >= 2 "
            f"(--num-classes), got {config.num_classes}"
        )
    return CLASSIFIERS[config.classifier].from_config(config)
