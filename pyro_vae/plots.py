"""Figures as functions that return a matplotlib ``Figure`` (object-oriented API, no pyplot).

The caller decides where to save them. Images are [N, 784] tensors (or arrays) in [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure

IMAGE_SIDE = 28


def _as_images(x: torch.Tensor | np.ndarray) -> np.ndarray:
    x = x.detach().float().cpu().numpy() if torch.is_tensor(x) else np.asarray(x, dtype=float)
    return x.reshape(-1, IMAGE_SIDE, IMAGE_SIDE)


def tile(images: torch.Tensor | np.ndarray, ncols: int, pad: int = 2) -> np.ndarray:
    """[N, 784] -> one [rows*30, ncols*30] array, white gaps between digits."""
    imgs = _as_images(images)
    n = imgs.shape[0]
    nrows = -(-n // ncols)
    step = IMAGE_SIDE + pad
    canvas = np.ones((nrows * step - pad, ncols * step - pad))
    for i, img in enumerate(imgs):
        r, c = divmod(i, ncols)
        canvas[r * step : r * step + IMAGE_SIDE, c * step : c * step + IMAGE_SIDE] = img
    return canvas


def image_grid(
    images: torch.Tensor | np.ndarray, ncols: int = 8, title: str = "", cell_inches: float = 0.45
) -> Figure:
    """A grid of digits, ``ncols`` per row."""
    canvas = tile(images, ncols)
    h, w = canvas.shape
    fig = Figure(
        figsize=(max(w / 30 * cell_inches, 2.5), h / 30 * cell_inches + (0.4 if title else 0))
    )
    ax = fig.add_subplot()
    ax.imshow(canvas, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout(pad=0.2)
    return fig


def reconstructions_figure(
    originals: torch.Tensor, recons: torch.Tensor, pairs_per_row: int = 8
) -> Figure:
    """Originals and reconstructions in alternating columns (real, reconstructed, real, ...)."""
    n = originals.shape[0]
    inter = torch.stack([originals.reshape(n, -1), recons.reshape(n, -1)], dim=1).reshape(2 * n, -1)
    return image_grid(
        inter, ncols=2 * pairs_per_row, title="Test digits (odd columns) and their reconstructions"
    )


def samples_figure(
    samples: torch.Tensor, ncols: int = 8, title: str = "Samples from the prior"
) -> Figure:
    """Decoder means at z drawn from the prior."""
    return image_grid(samples, ncols=ncols, title=title)


def class_grid_figure(samples: torch.Tensor, num_classes: int, per_class: int) -> Figure:
    """Conditional samples: row k holds ``per_class`` samples generated for label k."""
    canvas = tile(samples, per_class)
    h, w = canvas.shape
    fig = Figure(figsize=(w / 30 * 0.45 + 0.6, h / 30 * 0.45 + 0.4))
    ax = fig.add_subplot()
    ax.imshow(canvas, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    step = IMAGE_SIDE + 2
    ax.set_yticks([k * step + IMAGE_SIDE / 2 for k in range(num_classes)])
    ax.set_yticklabels([str(k) for k in range(num_classes)])
    ax.set_ylabel("label")
    ax.set_xticks([])
    ax.set_title("Samples per label (rows: digits, columns: samples)", fontsize=10)
    fig.tight_layout(pad=0.2)
    return fig
