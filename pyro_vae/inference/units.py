"""Units of a test log-likelihood: nats per image and bits per dimension, and which data they
are about.

Nats compare only on the same data, and one set of MNIST images gives several:

- **binarized** 0/1 pixels (a Bernoulli draw or a threshold): binarized MNIST, a dataset of
  its own;
- **the 8-bit images**, 256 values per pixel, scored either by a discrete likelihood over the
  values ("8-bit discrete"), or by a density on dequantized pixels x = (k + u) / 256 with
  u ~ U(0, 1) ("8-bit dequantized"). The bin of k has volume 256^-D, so
  P(k) = 256^-D E_u[p((k + u) / 256)] and, by Jensen's inequality::

      -log P(k) <= -E_u[log p((k + u) / 256)] + D log 256

  A density's NLL (or -ELBO) on dequantized pixels plus D log 256 nats bounds the 8-bit
  images' NLL. That term is added in :func:`in_units`, from :func:`dequantization_nats`, and
  nowhere else;
- **grayscale** k / 255 scored by a density: comparable with nothing. A density on the exact
  zeros of the background grows without bound as a learned scale shrinks, so the number
  measures the scale's floor, not the model.

Bits per dimension = nats per image / (D ln 2).
"""

from __future__ import annotations

import math

from pyro_vae.models.likelihoods import Likelihood

BINARIZED = "binarized"
DEQUANTIZED = "8-bit dequantized"
DISCRETE = "8-bit discrete"
GRAYSCALE = "grayscale [0,1] (not comparable)"
BINARIZED_DENSITY = "binarized, scored by a density (not comparable)"
UNSPECIFIED = "as given (no data mode known)"

# The dataset each label's numbers are about; rows compare only within one dataset.
DATASETS = {BINARIZED: "binarized MNIST", DEQUANTIZED: "8-bit MNIST", DISCRETE: "8-bit MNIST"}
# Likelihoods whose log_prob is a log-probability (of 0/1 pixels, of the 256 values).
DISCRETE_KINDS = ("binary", "8-bit")


def data_label(data_mode: str | None, likelihood: Likelihood) -> str:
    """What the numbers of ``likelihood`` on data made with ``data_mode`` are about.

    ``data_mode`` is a resolved data mode (``ImageData.data_mode``); None gives UNSPECIFIED.
    """
    if data_mode is None:
        return UNSPECIFIED
    discrete = likelihood.data_kind in DISCRETE_KINDS
    if data_mode in ("dynamic", "threshold"):
        return BINARIZED if discrete else BINARIZED_DENSITY
    if data_mode == "dequantize":
        return DEQUANTIZED
    if data_mode == "none":
        return DISCRETE if likelihood.data_kind == "8-bit" else GRAYSCALE
    raise ValueError(
        f"unknown data mode {data_mode!r}; pass a resolved one (pixels.resolve_data_mode): "
        "dynamic, threshold, dequantize or none"
    )


def dataset_name(data: str, source: str = "MNIST") -> str | None:
    """``DATASETS[data]`` for the images of ``source`` (a dataset's title): "binarized
    Fashion-MNIST", "8-bit KMNIST"; None when the numbers compare with nothing."""
    name = DATASETS.get(data)
    return name.replace("MNIST", source) if name is not None else None


def dequantization_nats(num_dims: int) -> float:
    """D log 256: the change of variables from a density on (k + u) / 256 to P(k)."""
    return num_dims * math.log(256)


def bits_per_dim(nats_per_image: float, num_dims: int) -> float:
    return nats_per_image / (num_dims * math.log(2))


def nats_per_image(bits_per_dim: float, num_dims: int) -> float:
    return bits_per_dim * num_dims * math.log(2)


def in_units(
    nats: float, num_dims: int, data: str, std_error: float | None = None
) -> dict[str, float | str | None]:
    """The units fields of an evaluation result.

    ``nats``: the model's -log p (or -ELBO) per image on the data it was given, D = num_dims.
    Returns ``data``; ``dataset`` (None when comparable with nothing); ``dequantization_nats``
    (D log 256 for dequantized data, else 0); ``nats_per_image`` = nats + that, the bound on
    the dataset's -log P; ``bits_per_dim`` of it; and ``std_error_bits_per_dim`` when a
    standard error (nats) is given (the constant term leaves it unchanged).
    """
    added = dequantization_nats(num_dims) if data == DEQUANTIZED else 0.0
    out: dict[str, float | str | None] = {
        "data": data,
        "dataset": DATASETS.get(data),
        "dequantization_nats": added,
        "nats_per_image": nats + added,
        "bits_per_dim": bits_per_dim(nats + added, num_dims),
    }
    if std_error is not None:
        out["std_error_bits_per_dim"] = bits_per_dim(std_error, num_dims)
    return out


def describe(data: str, num_dims: int, source: str = "MNIST") -> str:
    """One line for a report, starting with the label: what the bits per dimension of
    ``data`` (images of ``source``) are and what they compare with."""
    if data == DEQUANTIZED:
        return (
            f"{data}: a density on (k + u) / 256; its bits/dim bound the 8-bit images' -log P, "
            f"adding D log 256 = {dequantization_nats(num_dims):.2f} nats"
        )
    if data == DISCRETE:
        return f"{data}: probabilities of the 256 pixel values; bits/dim of the 8-bit images"
    if data == BINARIZED:
        return f"{data}: binarized {source}, a dataset of its own; bits/dim not comparable to 8-bit"
    if data in (GRAYSCALE, BINARIZED_DENSITY):
        return (
            f"{data}: a density on exact 0/1 pixels is unbounded; dequantize the pixels "
            "(--data-mode dequantize) for numbers that compare"
        )
    return f"{data}: no correction applied"
