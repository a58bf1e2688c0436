"""The model side of the latent-space explorer (``pyro-vae serve``): every function behind the
page, on tensors and arrays, without Gradio.

:class:`Explorer` holds a trained VAE and its encoded test set and answers each interaction with
one small batch: decode a point of the latent space, sample the prior, score a drawing by its
-ELBO and importance-sampled log p(x) (and, for the conditional VAE, log p(x | y) for every
label), and walk between two test images. It takes an already built VAE, so a model with a
custom prior or likelihood object works as well as a run directory's.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from pyro_vae.data.pixels import to_pixels
from pyro_vae.inference.loglik import auto_chunk_size, iw_bound, log_weights, sample_width
from pyro_vae.models.likelihoods import Likelihood
from pyro_vae.models.priors import as_latent_event
from pyro_vae.models.vae import VAE, labels_for, require_vae

# Core helpers the explorer needs, imported in one place (their modules may move).
from pyro_vae.runtime.rng import seeded

SIDE = 28  # MNIST images are SIDE x SIDE
# MNIST's own preprocessing: the digit scaled to fit a 20x20 box, centred by its centre of mass.
DIGIT_BOX = 20
INK_THRESHOLD = 0.05  # a drawing's pixels above this (of 1) count as ink for the bounding box
MAX_SLIDERS = 5
ENCODE_BATCH = 1000


@dataclass(frozen=True)
class LatentAxes:
    """The page's coordinates in the latent space: z = center + sum_i u_i * scale_i * direction_i.

    For z_dim <= 2 the directions are the latent axes themselves (center 0, scale 1), so the
    coordinates are z. Otherwise they are the top principal directions of the encoded test set,
    with u_i in standard deviations along each; ``share`` is each one's share of the variance.
    """

    center: Tensor  # [D]
    directions: Tensor  # [k, D], orthonormal rows
    scales: Tensor  # [k]
    share: Tensor  # [k]
    extent: float  # sliders and the pad span [-extent, extent]
    principal: bool  # False: the coordinates are z itself

    def to(self, device: torch.device | str) -> LatentAxes:
        return replace(self, **{k: getattr(self, k).to(device) for k in _TENSOR_FIELDS})

    def to_z(self, coords: Tensor, residual: Tensor | None = None) -> Tensor:
        """coords [..., k] (+ the part of z off the directions, [D]) -> z [..., D]."""
        z = self.center + (coords * self.scales) @ self.directions
        return z if residual is None else z + residual

    def to_coords(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z [..., D] -> coords [..., k] and the residual z - to_z(coords) [..., D]."""
        coords = ((z - self.center) @ self.directions.T) / self.scales
        return coords, z - self.to_z(coords)


_TENSOR_FIELDS = ("center", "directions", "scales", "share")


def latent_axes(means: Tensor, num_sliders: int = MAX_SLIDERS) -> LatentAxes:
    """The explorer's coordinates from the encoded test set ``means`` [M, D] (see LatentAxes)."""
    means = means.double()
    d = means.shape[1]
    if d <= 2:
        center = torch.zeros(d, dtype=means.dtype)
        directions, scales = torch.eye(d, dtype=means.dtype), torch.ones(d, dtype=means.dtype)
        share = means.var(0) / means.var(0).sum()
    else:
        center = means.mean(0)
        _, s, vh = torch.linalg.svd(means - center, full_matrices=False)
        k = min(num_sliders, d)
        directions, scales = vh[:k], s[:k] / max(len(means) - 1, 1) ** 0.5
        share = (s**2 / (s**2).sum())[:k]
        scales = scales.clamp_min(1e-6)  # a direction with no spread (tiny test sets)
    coords = ((means - center) @ directions.T) / scales
    # Wide enough for 99% of the test set and for +-3 prior sd, on a half-unit grid.
    extent = max(3.0, float(np.ceil(2 * coords.abs().quantile(0.99).item()) / 2))
    f = torch.float32
    return LatentAxes(center.to(f), directions.to(f), scales.to(f), share.to(f), extent, d > 2)


def drawing_to_pixels(
    image: np.ndarray,
    *,
    binary: bool = False,
    likelihood: Likelihood | None = None,
    shape: tuple[int, ...] = (SIDE, SIDE),
    mode: str | None = None,
) -> Tensor | None:
    """A drawing -> one image in the data's size and representation, [C * H * W]; None if blank.

    ``image``: uint8 [h, w] or [h, w, 3 | 4], light ink on a dark or transparent background (as
    MNIST). As MNIST was made, the ink is cropped, scaled to fit a box of 20/28 of the image's
    shorter side and centred by its centre of mass in ``shape`` (C, H, W) or (H, W), the grey
    ink repeated in each of the C channels (a grey drawing for an RGB model). Then, as the
    run's data ``mode`` (``ImageData.data_mode``) makes data: "dynamic" or "threshold"
    threshold at 1/2 (the mode of dynamic binarization); "dequantize" takes each bin's
    midpoint (k + 1/2) / 256, so a drawing scores the same every time; "none" is grayscale
    via ``likelihood.prepare``. Without a mode, ``binary`` chooses between threshold and none.
    """
    a = np.asarray(image, dtype=np.float32) / 255.0
    if a.ndim == 3:
        ink = a[..., :3].mean(-1) if a.shape[-1] >= 3 else a[..., 0]
        if a.shape[-1] in (2, 4):
            ink = ink * a[..., -1]
    else:
        ink = a
    rows, cols = np.nonzero(ink > INK_THRESHOLD)
    if rows.size == 0:
        return None
    ink = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    h, w = ink.shape
    channels, height, width = (1, *shape) if len(shape) == 2 else shape
    f = DIGIT_BOX * min(height, width) / SIDE / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    box = np.asarray(Image.fromarray(ink, mode="F").resize(size, Image.Resampling.BOX))
    box = box.clip(0.0, 1.0)
    ys, xs = np.indices(box.shape)
    total = box.sum()
    com = ((ys * box).sum() / total, (xs * box).sum() / total) if total > 0 else (h / 2, w / 2)
    top = int(np.clip(round(height / 2 - com[0]), 0, height - box.shape[0]))
    left = int(np.clip(round(width / 2 - com[1]), 0, width - box.shape[1]))
    out = np.zeros((height, width), dtype=np.float32)
    out[top : top + box.shape[0], left : left + box.shape[1]] = box
    x_uint8 = torch.from_numpy(np.round(out * 255).astype(np.uint8)).flatten().repeat(channels)
    x_uint8 = x_uint8[None]
    mode = mode or ("threshold" if binary else "none")
    if mode == "dequantize":
        return (x_uint8.float()[0] + 0.5) / 256
    lik = likelihood if likelihood is not None else Likelihood()
    return to_pixels(x_uint8, "threshold" if mode == "dynamic" else mode, lik)[0]


def to_image(x: Tensor, shape: tuple[int, ...] = (SIDE, SIDE)) -> np.ndarray:
    """Values [C * H * W] (any range) -> a uint8 image for the page: grayscale [H, W] for
    ``shape`` (1, H, W) or (H, W), RGB [H, W, 3] for (3, H, W)."""
    c, h, w = (1, *shape) if len(shape) == 2 else shape
    a = (x.detach().float().clamp(0, 1).reshape(c, h, w) * 255).round().byte().cpu().numpy()
    return a[0] if c == 1 else a.transpose(1, 2, 0)


@dataclass
class DrawingScore:
    """What the explorer says about one drawing (nats; log p(x | y) for the conditional VAE)."""

    x: Tensor  # [784] the drawing as the model sees it
    reconstruction: Tensor  # [784] decoder mean at the posterior mean
    z: Tensor  # [D] posterior mean
    neg_elbo: float  # -ELBO, mean over the K draws
    log_likelihood: float  # log p(x), importance-sampled with K draws (the bound L_K)
    num_samples: int
    label: int | None = None  # conditional VAE: the most likely label, argmax_y log p(x | y)
    label_log_likelihoods: list[float] | None = None  # conditional VAE: log p(x | y), each y
    # The semi-supervised VAE: q(y | x), its classifier's probability of each label.
    classifier_probabilities: list[float] | None = None

    @property
    def label_probabilities(self) -> list[float] | None:
        """p(y | x): the semi-supervised VAE's q(y | x); for the conditional VAE, the
        generative model as a classifier, softmax of log p(x | y) under a uniform p(y)."""
        if self.classifier_probabilities is not None:
            return self.classifier_probabilities
        if self.label_log_likelihoods is None:
            return None
        return torch.tensor(self.label_log_likelihoods).softmax(0).tolist()


class Explorer:
    """A trained VAE and its encoded test set, behind one lock (Pyro's handler stack and the
    seeded RNG are process-wide, so interactions from concurrent page events run one at a time).

    ``vae``: any :class:`pyro_vae.VAE`, built under the Pyro settings it runs with (stacked
    latents: the page moves through the top layer, ``VAE.encode``/``decode``); ``test_x``
    [M, C * H * W] in the model's data representation, ``test_y`` [M] labels, on the VAE's
    device. ``image_shape``: (C, H, W) (or (H, W): one channel), default the VAE's;
    ``data_mode``: how the run made its data
    (``ImageData.data_mode``), which drawings follow; default: threshold when the test set is
    binary, else grayscale.
    """

    def __init__(
        self,
        vae: VAE,
        test_x: Tensor,
        test_y: Tensor,
        num_sliders: int = MAX_SLIDERS,
        image_shape: tuple[int, ...] | None = None,
        data_mode: str | None = None,
    ) -> None:
        require_vae(vae, "the explorer's pictures")
        if len(test_x) < 2:
            raise ValueError("the explorer needs at least 2 test images")
        self.vae = vae.eval()
        self.test_x, self.test_y = test_x, test_y
        self.num_classes = vae.config.num_classes
        self.z_dim = vae.config.z_dim
        shape = tuple(image_shape) if image_shape else vae.config.image_shape
        self.image_shape = (1, *shape) if len(shape) == 2 else shape  # (C, H, W)
        if int(np.prod(self.image_shape)) != vae.config.x_dim:
            raise ValueError(
                f"image shape {self.image_shape} does not hold {vae.config.x_dim} values"
            )
        # Drawings get the data's representation: binary pixels if the model saw those.
        self.binary = bool(((test_x == 0) | (test_x == 1)).all())
        self.data_mode = data_mode or ("threshold" if self.binary else "none")
        self._lock = threading.Lock()
        with self._lock, torch.no_grad():
            batches = zip(test_x.split(ENCODE_BATCH), test_y.split(ENCODE_BATCH), strict=True)
            self.means = torch.cat([vae.encode(x, labels_for(vae, y))[0] for x, y in batches])
        self.axes = latent_axes(self.means.cpu(), num_sliders)
        self._axes_dev = self.axes.to(self.means.device)
        self.coords = self.axes.to_coords(self.means.cpu())[0]  # [M, k]: the pad's points

    def _label(self, label: int | None, n: int = 1) -> Tensor | None:
        if not self.num_classes:
            return None
        if label is None or not 0 <= int(label) < self.num_classes:
            raise ValueError(f"pick a label in [0, {self.num_classes})")
        return torch.full((n,), int(label), dtype=torch.long, device=self.means.device)

    def _z(self, coords: Sequence[float], residual: Tensor | None) -> Tensor:
        c = torch.as_tensor(list(coords), dtype=torch.float32, device=self.means.device)
        return self._axes_dev.to_z(c, None if residual is None else residual.to(c.device))

    def decode(
        self, coords: Sequence[float], label: int | None = None, residual: Tensor | None = None
    ) -> Tensor:
        """Decoder mean at z = axes.to_z(coords) + residual (and label), [784]."""
        with self._lock, torch.no_grad():
            z = self._z(coords, residual)[None]
            return self.vae.decode(z, self._label(label))[0]

    def sample_prior(self, label: int | None = None) -> tuple[list[float], Tensor]:
        """z ~ p(z) (or p(z | y)) from torch's RNG, as clipped coords and the rest of z [D]."""
        with self._lock, torch.no_grad():
            y = self._label(label)
            prior = as_latent_event(self.vae.model.prior(y), self.z_dim)
            z = prior.sample((1,) if not prior.batch_shape else ()).reshape(1, self.z_dim)
            coords, _ = self._axes_dev.to_coords(z[0])
            coords = coords.clamp(-self.axes.extent, self.axes.extent)
            return coords.tolist(), z[0] - self._axes_dev.to_z(coords)

    def interpolate(self, i: int, j: int, t: float, label: int | None = None) -> Tensor:
        """Decoder mean at (1 - t) z_i + t z_j, the posterior means of test images i and j, [784].

        For the conditional VAE the codes come from q(z | x, y) with each image's own label and
        the path is decoded with ``label`` held fixed (the figures' interpolation does the same).
        """
        for k in (i, j):
            if not 0 <= int(k) < len(self.test_x):
                raise ValueError(f"test image index {k} is outside [0, {len(self.test_x)})")
        with self._lock, torch.no_grad():
            z = (1 - t) * self.means[int(i)] + t * self.means[int(j)]
            return self.vae.decode(z[None], self._label(label))[0]

    def score_drawing(self, x: Tensor, num_samples: int = 500, seed: int = 0) -> DrawingScore:
        """-ELBO and log p(x) of one image x [784] from the same K = ``num_samples`` draws of the
        guide (seeded: the same drawing gets the same numbers). The conditional VAE scores every
        label in one batch and reports the most likely one."""
        if num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}")
        with self._lock, torch.no_grad(), seeded(seed, self.means.device):
            x = x.to(self.means.device).reshape(1, -1)
            n = max(self.num_classes, 1)
            xs = x.expand(n, -1)
            y = torch.arange(n, device=x.device) if self.num_classes else None
            chunk = auto_chunk_size(num_samples, n, sample_width(self.vae), x.device)
            log_w = log_weights(
                self.vae.model, self.vae.guide, xs, y, num_samples=num_samples, chunk_size=chunk
            )  # [K, n]
            if self.vae.semi_supervised:  # its model holds p(y) = 1/C: p(x, y) -> p(x | y)
                log_w = log_w + math.log(n)
            log_px = iw_bound(log_w, num_samples)  # [n]
            best = int(log_px.argmax())
            yb = y[best : best + 1] if y is not None else None
            z = self.vae.encode(x, yb)[0][0]
            return DrawingScore(
                x=x[0],
                reconstruction=self.vae.decode(z[None], yb)[0],
                z=z,
                neg_elbo=-float(log_w[:, best].mean()),
                log_likelihood=float(log_px[best]),
                num_samples=num_samples,
                label=best if self.num_classes else None,
                label_log_likelihoods=log_px.tolist() if self.num_classes else None,
                classifier_probabilities=(
                    self.vae.classify(x)[0].tolist() if self.vae.semi_supervised else None
                ),
            )
