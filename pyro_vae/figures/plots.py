"""Figures as functions that return a matplotlib ``Figure`` (object-oriented API, no pyplot).

The caller decides where to save them. Images are [N, D] tensors (or arrays) in [0, 1], each
of ``image_shape`` = (C, H, W) with C * H * W = D, channel by channel ((H, W) means C = 1);
without it a grayscale square of side sqrt(D) is assumed (28 x 28 for MNIST's 784). Grayscale
images are drawn dark on white (ink = 1), RGB images (C = 3) in their colours. These functions
only draw; what to encode, decode or project is decided by ``pyro_vae.figures.run_figures``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

IMAGE_SIDE = 28  # MNIST's; other data give their own image_shape
# Inches per digit: about 54 pixels a digit at the 120 dpi figures are saved with.
CELL_INCHES = 0.45
# Value of the gaps between digits: a light grey line under the "gray_r" colour map (RGB
# images get the same grey, 1 - GAP_VALUE).
GAP_VALUE = 0.15

ArrayLike = torch.Tensor | np.ndarray


def _numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().float().cpu().numpy() if torch.is_tensor(x) else np.asarray(x, dtype=float)


def shape_of(num_pixels: int, image_shape: Sequence[int] | None = None) -> tuple[int, int, int]:
    """(C, H, W) of images of ``num_pixels`` values: ``image_shape`` ((C, H, W), or (H, W) for
    one channel), checked, or else a grayscale square."""
    if image_shape is not None:
        shape = tuple(int(v) for v in image_shape)
        c, h, w = (1, *shape) if len(shape) == 2 else shape
        if c * h * w != num_pixels:
            raise ValueError(
                f"image_shape {'x'.join(map(str, shape))} does not hold images of "
                f"{num_pixels} values"
            )
        if c not in (1, 3):
            raise ValueError(f"images of {c} channels cannot be drawn; 1 (grayscale) or 3 (RGB)")
        return c, h, w
    side = math.isqrt(num_pixels)
    if side * side != num_pixels:
        raise ValueError(f"images of {num_pixels} pixels are not square; pass image_shape=(H, W)")
    return 1, side, side


def _as_images(x: ArrayLike, image_shape: Sequence[int] | None = None) -> np.ndarray:
    """[..., D] -> [N, H, W] (grayscale) or [N, H, W, 3] (RGB, channels last for imshow)."""
    a = _numpy(x)
    c, h, w = shape_of(a.shape[-1], image_shape)
    imgs = a.reshape(-1, c, h, w)
    return imgs[:, 0] if c == 1 else imgs.transpose(0, 2, 3, 1)


def blank_value(canvas: np.ndarray) -> float:
    """The value drawn white: 0 under the grayscale figures' "gray_r", 1 in an RGB canvas."""
    return 1.0 if canvas.ndim == 3 else 0.0


def tile(
    images: ArrayLike,
    ncols: int,
    pad: int = 2,
    pad_value: float = GAP_VALUE,
    image_shape: Sequence[int] | None = None,
) -> np.ndarray:
    """[N, C*H*W] -> one [rows*(H+pad) - pad, ncols*(W+pad) - pad] array (with a last axis of
    3 for RGB), row by row; RGB gaps are the grey 1 - ``pad_value``."""
    imgs = _as_images(images, image_shape)
    h, w = imgs.shape[1:3]
    nrows = -(-imgs.shape[0] // ncols)
    rgb = imgs.shape[3:]
    fill = 1 - pad_value if rgb else pad_value
    canvas = np.full((nrows * (h + pad) - pad, ncols * (w + pad) - pad, *rgb), fill)
    for i, img in enumerate(imgs):
        r, c = divmod(i, ncols)
        canvas[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = img
    return canvas


def _centres(n: int, pad: int, side: int = IMAGE_SIDE) -> list[float]:
    """Pixel coordinates of the centres of n images of ``side`` pixels in a row (or column) of a
    tiled canvas."""
    return [k * (side + pad) + (side - 1) / 2 for k in range(n)]


def _show(ax, canvas: np.ndarray) -> None:
    if canvas.ndim == 3:  # RGB, as it is
        ax.imshow(canvas.clip(0, 1), interpolation="nearest")
    else:
        ax.imshow(canvas, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")


def digit_axes(
    canvas: np.ndarray,
    *,
    top: float = 0.05,
    bottom: float = 0.05,
    left: float = 0.05,
    right: float = 0.05,
    cell_inches: float = CELL_INCHES,
    min_width: float = 3.0,
    image_shape: Sequence[int] | None = None,
) -> tuple[Figure, Axes]:
    """A figure with one axes showing a tiled ``canvas``, margins given in inches.

    Each image of ``image_shape`` (default 28 x 28) gets ``cell_inches`` along its longer side.
    The axes is placed by hand rather than by tight_layout: an image keeps its aspect, so a
    layout engine can squeeze the title or the column labels out of a wide, short figure.
    """
    h, w = canvas.shape[:2]
    side = max(image_shape[-2:]) if image_shape else IMAGE_SIDE
    inches_per_pixel = cell_inches / (side + 2)
    img_w, img_h = w * inches_per_pixel, h * inches_per_pixel
    fig_w, fig_h = max(img_w + left + right, min_width), img_h + top + bottom
    x0 = left + (fig_w - img_w - left - right) / 2  # centred when min_width wins
    fig = Figure(figsize=(fig_w, fig_h))
    ax = fig.add_axes((x0 / fig_w, bottom / fig_h, img_w / fig_w, img_h / fig_h))
    _show(ax, canvas)
    return fig, ax


def _bare(ax: Axes) -> None:
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)


def image_grid(
    images: ArrayLike,
    ncols: int = 8,
    title: str = "",
    cell_inches: float = CELL_INCHES,
    image_shape: Sequence[int] | None = None,
) -> Figure:
    """A grid of digits, ``ncols`` per row. One axes, one image."""
    shape = shape_of(_numpy(images).shape[-1], image_shape)
    fig, ax = digit_axes(
        tile(images, ncols, image_shape=shape),
        top=0.4 if title else 0.05,
        cell_inches=cell_inches,
        image_shape=shape,
    )
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def reconstructions_figure(
    originals: ArrayLike,
    recons: ArrayLike,
    pairs_per_row: int = 8,
    image_shape: Sequence[int] | None = None,
) -> Figure:
    """Originals x and reconstructions x̂ in alternating columns (x, x̂, x, x̂, ...)."""
    orig, rec = _numpy(originals), _numpy(recons)
    n = orig.shape[0]
    inter = np.stack([orig.reshape(n, -1), rec.reshape(n, -1)], axis=1).reshape(2 * n, -1)
    shape = shape_of(inter.shape[-1], image_shape)
    canvas = tile(inter, 2 * pairs_per_row, image_shape=shape)
    fig, ax = digit_axes(canvas, top=0.65, image_shape=shape)
    ax.set_xticks(_centres(2 * pairs_per_row, 2, shape[-1]))
    ax.set_xticklabels([r"$x$", r"$\hat{x}$"] * pairs_per_row, fontsize=10)
    ax.xaxis.tick_top()
    ax.set_yticks([])
    _bare(ax)
    ax.set_title(
        r"Test digits $x$ and reconstructions $\hat{x}$ (decoder mean at q's mean)", fontsize=10
    )
    return fig


def samples_figure(
    samples: ArrayLike,
    ncols: int = 8,
    title: str = "Samples from the prior (decoder means)",
    image_shape: Sequence[int] | None = None,
) -> Figure:
    """Decoder means at z drawn from the prior. One axes, one image."""
    return image_grid(samples, ncols=ncols, title=title, image_shape=image_shape)


def class_grid_figure(
    samples: ArrayLike,
    num_classes: int,
    per_class: int,
    image_shape: Sequence[int] | None = None,
) -> Figure:
    """Conditional samples: row k holds ``per_class`` samples generated for label k."""
    shape = shape_of(_numpy(samples).shape[-1], image_shape)
    canvas = tile(samples, per_class, image_shape=shape)
    fig, ax = digit_axes(canvas, top=0.4, left=0.85, image_shape=shape)
    ax.set_yticks(_centres(num_classes, 2, shape[-2]))
    ax.set_yticklabels([str(k) for k in range(num_classes)], fontsize=10)
    ax.set_ylabel("label y")
    ax.set_xticks([])
    _bare(ax)
    ax.set_title("Samples per label (rows: digits, columns: draws of z)", fontsize=10)
    return fig


def training_curves_figure(metrics: Sequence[Mapping[str, float]]) -> Figure:
    """-ELBO, reconstruction term and KL term per epoch, train and test: three axes.

    ``metrics`` are the rows of ``metrics.jsonl`` (keys ``epoch``, ``train_neg_elbo``,
    ``train_recon``, ``train_kl`` and the same with ``test_``), in nats per image.
    """
    if not metrics:
        raise ValueError("no metrics rows to plot; train at least one epoch first")
    epochs = [m["epoch"] for m in metrics]
    panels = [
        ("neg_elbo", r"$-$ELBO (total)"),
        ("recon", r"reconstruction  $-\mathbb{E}_q \log p(x\,|\,z)$"),
        ("kl", r"KL$(q(z\,|\,x)\ \|\ p(z))$"),
    ]
    fig = Figure(figsize=(12, 3.6))
    axes = fig.subplots(1, 3)
    for ax, (key, title) in zip(axes, panels, strict=True):
        for split, style in (("train", "-"), ("test", "--")):
            ax.plot(
                epochs,
                [m[f"{split}_{key}"] for m in metrics],
                style,
                marker="o",
                markersize=3,
                label=split,
            )
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        # Integer epochs only: a 3-epoch run should not show epoch 1.5.
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel("nats per image")
    axes[0].legend(frameon=False)
    fig.tight_layout()
    return fig


def _z_ticks(ax_axis, values: Sequence[float], centres: Sequence[float]) -> None:
    """Ticks at round z values, placed by interpolating between the grid's cell centres
    (exact for evenly spaced grids, and monotone for quantile grids)."""
    v = np.asarray(values, dtype=float)
    c = np.asarray(centres, dtype=float)
    ticks = MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]).tick_values(v.min(), v.max())
    ticks = ticks[(ticks >= v.min() - 1e-9) & (ticks <= v.max() + 1e-9)]
    order = np.argsort(v)
    ax_axis.set_ticks(np.interp(ticks, v[order], c[order]), [f"{t:g}" for t in ticks], fontsize=9)


def _manifold_axes(
    ax,
    images: ArrayLike,
    z1: Sequence[float],
    z2: Sequence[float],
    image_shape: Sequence[int] | None = None,
) -> None:
    n1, n2 = len(z1), len(z2)
    a = _numpy(images)
    shape = shape_of(a.shape[-1], image_shape)
    h, w = shape[1:]
    imgs = a.reshape(n2, n1, -1)
    # Row 0 of the canvas is the top: put the largest z2 there, as on a plot's y axis.
    canvas = tile(imgs[::-1].reshape(n1 * n2, -1), n1, pad=0, image_shape=shape)
    _show(ax, canvas)
    _z_ticks(ax.xaxis, z1, _centres(n1, 0, w))
    _z_ticks(ax.yaxis, z2, _centres(n2, 0, h)[::-1])
    ax.set_xlabel(r"$z_1$")
    ax.set_ylabel(r"$z_2$")


def manifold_figure(
    images: ArrayLike,
    z1: Sequence[float],
    z2: Sequence[float],
    title: str = "",
    image_shape: Sequence[int] | None = None,
) -> Figure:
    """Decoder means over a grid of z (z_dim = 2): one axes, one image.

    ``images`` is [len(z2) * len(z1), D]; image ``i * len(z1) + j`` is decoded at
    z = (z1[j], z2[i]). Larger z2 is drawn higher up.
    """
    n1 = len(z1)
    side = min(8.0, max(4.0, n1 * 0.36))
    fig = Figure(figsize=(side + 0.6, side * len(z2) / n1 + 0.7))
    ax = fig.add_subplot()
    _manifold_axes(ax, images, z1, z2, image_shape)
    ax.set_title(title or "Decoder means over a grid of z", fontsize=11)
    fig.tight_layout(pad=0.3)
    return fig


def class_manifolds_figure(
    images: ArrayLike,
    z1: ArrayLike,
    z2: ArrayLike,
    title: str = "",
    image_shape: Sequence[int] | None = None,
) -> Figure:
    """One manifold per label (conditional VAE, z_dim = 2): one axes and one image per label.

    ``images`` is [num_classes, len(z2) * len(z1), D], ordered as in ``manifold_figure``;
    z1 and z2 are shared ([n]) or per label ([num_classes, n], e.g. around each p(z | y)).
    """
    imgs = _numpy(images)
    num_classes = imgs.shape[0]
    z1s = np.broadcast_to(np.asarray(z1, dtype=float), (num_classes, np.shape(z1)[-1]))
    z2s = np.broadcast_to(np.asarray(z2, dtype=float), (num_classes, np.shape(z2)[-1]))
    shared = np.allclose(z1s, z1s[0]) and np.allclose(z2s, z2s[0])
    ncols = min(num_classes, 5)
    nrows = -(-num_classes // ncols)
    # Constrained layout keeps the suptitle, the panel titles and the tick labels apart.
    fig = Figure(figsize=(2.7 * ncols, 2.9 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for k, ax in enumerate(axes):
        if k >= num_classes:
            ax.remove()
            continue
        _manifold_axes(ax, imgs[k], z1s[k], z2s[k], image_shape)
        ax.set_title(f"y = {k}", fontsize=11)
        if shared and k + ncols < num_classes:  # same axes everywhere: label the outer ones
            ax.set_xlabel("")
            ax.tick_params(bottom=False, labelbottom=False)
        if shared and k % ncols:
            ax.set_ylabel("")
            ax.tick_params(left=False, labelleft=False)
    fig.suptitle(title or "Decoder means over a grid of z, one grid per label", fontsize=12)
    return fig


def latent_scatter_figure(
    points: ArrayLike,
    labels: ArrayLike,
    title: str = "Encoded test digits",
    xlabel: str = r"$z_1$",
    ylabel: str = r"$z_2$",
) -> Figure:
    """Points [N, 2] (latent means or their projection), coloured by digit label [N]."""
    pts, lab = _numpy(points), _numpy(labels).astype(int)
    fig = Figure(figsize=(6.8, 5.6))
    ax = fig.add_subplot()
    # Shuffled drawing order, so the last digit drawn does not hide the others.
    order = np.random.default_rng(0).permutation(len(pts))
    pts, lab = pts[order], lab[order]
    colours = [f"C{k % 10}" for k in lab]
    ax.scatter(pts[:, 0], pts[:, 1], c=colours, s=4, alpha=0.6, linewidths=0)
    handles = [ax.scatter([], [], color=f"C{k % 10}", s=25, label=str(k)) for k in np.unique(lab)]
    ax.legend(
        handles=handles, title="digit", loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def interpolation_figure(
    starts: ArrayLike,
    paths: ArrayLike,
    ends: ArrayLike,
    ts: Sequence[float],
    title: str = "",
    image_shape: Sequence[int] | None = None,
) -> Figure:
    """Rows of decoded points along straight lines in z between two test digits' codes.

    starts, ends: [P, D] the two test digits of each row; paths: [P, K, D] decoder means
    at z = (1 - t) z_start + t z_end for the K values ``ts``. One axes, one image.
    """
    s, p, e = _numpy(starts), _numpy(paths), _numpy(ends)
    shape = shape_of(s.shape[-1], image_shape)
    h, w = shape[1:]
    num_rows, k = p.shape[0], p.shape[1]
    # A blank column between each test digit and the decoded path sets them apart.
    blank = np.zeros((num_rows, 1, s.shape[-1]))
    rows = np.concatenate([s[:, None], blank, p.reshape(num_rows, k, -1), blank, e[:, None]], 1)
    ncols = k + 4
    canvas = tile(rows.reshape(num_rows * ncols, -1), ncols, image_shape=shape)
    gap_cols = _centres(ncols, 2, w)
    for c in (1, ncols - 2):  # paint the blank columns white, gaps included
        lo = c * (w + 2) - 2
        canvas[:, lo : lo + w + 4] = blank_value(canvas)
    fig, ax = digit_axes(canvas, top=0.4, bottom=0.5, image_shape=shape)
    labels = ["start"] + [""] + [f"{t:.1f}" for t in ts] + [""] + ["end"]
    ax.set_xticks(gap_cols, labels, fontsize=8)
    ax.set_yticks([])
    _bare(ax)
    ax.set_xlabel(r"$t$ in $z = (1-t)\,z_{start} + t\,z_{end}$")
    ax.set_title(title or "Interpolation between two test digits in latent space", fontsize=10)
    return fig
