"""q(y | x): the classifier head of the semi-supervised VAE's guide (Kingma et al. 2014, M2).

A network from images to class logits, held by the guide (``vae.guide.classifier``). The guide
draws the label from it where the label is missing; the objective sums that draw out exactly
(``inference.objectives.EnumELBO``) and adds alpha * -log q(y | x) on the labelled images.

The architectures, by ``VAEConfig.classifier``:

- ``mlp``: x -> hidden layers (``classifier_dims``, the networks' activation) -> logits; one
  layer of 500 softplus units is the paper's and Pyro's tutorial's q(y | x);
- ``conv``: two 5 x 5 convolutions of stride 2 (16 and 32 channels, ReLU) on the image's
  C channels (any H, W of at least 13), then hidden layers (``classifier_dims``, ReLU) -> logits.

Adding one is a class with ``from_config(config)`` and ``forward(x [B, C, H, W]) -> logits``
and one line in ``CLASSIFIERS``.
"""

from __future__ import annotations

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
    """x [..., B, C, H, W] -> logits [..., B, num_classes] through ``classifier_dims``."""

    def __init__(self, x_dim: int, hidden: tuple[int, ...], activation: str, num_classes: int):
        super().__init__()
        self.net = mlp(x_dim, hidden, num_classes, activation)

    @classmethod
    def from_config(cls, config: VAEConfig) -> MLPClassifier:
        return cls(config.x_dim, config.classifier_dims, config.activation, config.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(-3))


CONV_CHANNELS = (16, 32)
CONV_KERNEL = 5
CONV_STRIDE = 2


def _conv_side(side: int) -> int:
    """The side of a conv5-stride-2 layer's output on an input of that side (no padding)."""
    return (side - CONV_KERNEL) // CONV_STRIDE + 1


# Two conv5-stride-2 layers leave at least one pixel from 13 x 13 on (28 -> 12 -> 4).
CONV_MIN_SIDE = 13


class ConvClassifier(PyroModule):
    """x [..., B, C, H, W] -> logits [..., B, num_classes]: two 5 x 5 convolutions of stride 2
    (16 and 32 channels, ReLU) on the C channels, then the hidden layers (ReLU). Strided rather
    than pooled: on a CPU the pooled LeNet of the same widths costs four times as much, and
    this one about what the 500-unit MLP costs (a batch of 128, forward and backward)."""

    def __init__(
        self, image_shape: tuple[int, int, int], hidden: tuple[int, ...], num_classes: int
    ) -> None:
        super().__init__()
        c1, c2 = CONV_CHANNELS
        self.image_shape = tuple(image_shape)
        channels, h, w = self.image_shape
        after = _conv_side(_conv_side(h)) * _conv_side(_conv_side(w))
        self.features = nn.Sequential(
            nn.Conv2d(channels, c1, CONV_KERNEL, stride=CONV_STRIDE),
            nn.ReLU(),
            nn.Conv2d(c1, c2, CONV_KERNEL, stride=CONV_STRIDE),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.head = mlp(c2 * after, hidden, num_classes, "relu")

    @classmethod
    def from_config(cls, config: VAEConfig) -> ConvClassifier:
        _, h, w = config.image_shape
        if min(h, w) < CONV_MIN_SIDE:
            raise ValueError(
                f"the conv classifier needs images of at least {CONV_MIN_SIDE}x{CONV_MIN_SIDE}, "
                f"got {h}x{w}; use --classifier mlp"
            )
        return cls(config.image_shape, config.classifier_dims, config.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-3]  # conv layers take [N, C, H, W]: leading dims fold into N
        h = self.features(x.reshape(-1, *self.image_shape))
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
