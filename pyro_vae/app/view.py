"""What the explorer's page shows besides the model's numbers: the latent pad (the encoded test
set as a picture, with markers), enlarged digits, and the run's identity card. No Gradio here.

The pad is drawn once with matplotlib; each interaction only copies it and paints markers with
numpy, so moving through the latent space costs no plotting.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps, patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pyro_vae.models.config import VAEConfig

PAD_SIZE = 360  # pixels per side of the latent pad
DIGIT_SCALE = 8  # a 28x28 digit is shown as 224x224 pixels (nearest neighbour: pixels stay crisp)
DIGIT = 28 * DIGIT_SCALE  # any image is shown about this many pixels along its longer side
CURRENT_COLOR = (0, 0, 0)  # the decoded point
DRAWING_COLOR = (220, 20, 60)  # where the drawing lands
HALO_COLOR = (255, 255, 255)


def pad_background(
    coords: np.ndarray, labels: np.ndarray, extent: float, size: int = PAD_SIZE
) -> np.ndarray:
    """The encoded test set, coloured by label, as an RGB image uint8 [size, size, 3].

    coords [N, 2] (the page's first two coordinates); the image spans [-extent, extent] on both
    axes, edge to edge, so a pixel maps to a point with :func:`pad_to_coords`. Grid lines at
    whole units; each label is written at the median of its points.
    """
    fig = Figure(figsize=(size / 100, size / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(-extent, extent)
    ax.set_ylim(-extent, extent)
    ax.set_axis_off()
    for v in range(-int(extent), int(extent) + 1):
        shade = "0.75" if v == 0 else "0.9"
        ax.axvline(v, color=shade, lw=0.7, zorder=0)
        ax.axhline(v, color=shade, lw=0.7, zorder=0)
    cmap = colormaps["tab10"]
    labels = np.asarray(labels)
    ax.scatter(
        coords[:, 0], coords[:, 1], c=cmap(labels % 10), s=4, alpha=0.6, linewidths=0, zorder=1
    )
    halo = [patheffects.withStroke(linewidth=3, foreground="white")]
    for k in np.unique(labels):
        mx, my = np.median(coords[labels == k], axis=0)
        ax.text(mx, my, str(k), color=cmap(k % 10), fontsize=12, weight="bold", ha="center",
                va="center", path_effects=halo, zorder=2)  # fmt: skip
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[..., :3])


def pad_to_coords(px: float, py: float, extent: float, size: int = PAD_SIZE) -> tuple[float, float]:
    """A pixel of the pad (column px, row py, from the top left) -> the point at its centre."""
    return (px + 0.5) / size * 2 * extent - extent, extent - (py + 0.5) / size * 2 * extent


def coords_to_pad(u: float, v: float, extent: float, size: int = PAD_SIZE) -> tuple[float, float]:
    """A point -> its position on the pad in pixels (column, row); inverse of pad_to_coords."""
    return (u + extent) / (2 * extent) * size - 0.5, (extent - v) / (2 * extent) * size - 0.5


def _ring(img: np.ndarray, cx: float, cy: float, r: float, width: float, color) -> None:
    ys, xs = np.ogrid[: img.shape[0], : img.shape[1]]
    d = np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2)
    img[np.abs(d - r) <= width / 2] = color


def pad_image(
    background: np.ndarray,
    extent: float,
    current: tuple[float, float] | None = None,
    drawing: tuple[float, float] | None = None,
) -> np.ndarray:
    """A copy of the pad with a black ring at ``current`` and a red dot at ``drawing`` (points
    in the pad's coordinates; None: no marker). Points off the pad are clipped to its edge."""
    img = background.copy()
    size = img.shape[0]
    for point, inner, color in ((drawing, 0.0, DRAWING_COLOR), (current, 7.0, CURRENT_COLOR)):
        if point is None:
            continue
        u, v = (float(np.clip(c, -extent, extent)) for c in point)
        cx, cy = coords_to_pad(u, v, extent, size)
        if inner:
            _ring(img, cx, cy, inner, 5.0, HALO_COLOR)
            _ring(img, cx, cy, inner, 2.5, color)
        else:
            _ring(img, cx, cy, 3.5, 9.0, HALO_COLOR)
            _ring(img, cx, cy, 2.0, 5.0, color)
    return img


def enlarge(digit: np.ndarray, factor: int = DIGIT_SCALE) -> np.ndarray:
    """A uint8 image [H, W] (or RGB [H, W, 3]) -> [H * factor, W * factor] (and the 3), each
    pixel a factor x factor block."""
    return digit.repeat(factor, axis=0).repeat(factor, axis=1)


def run_info(run_dir: str | os.PathLike, ckpt: dict) -> dict[str, Any]:
    """The identity of a run, from its own files: name, epochs, the last test -ELBO
    (metrics.jsonl), the test NLL when ``pyro-vae evaluate`` measured one (eval.json), the
    configuration and the data's binarization."""
    run_dir = Path(run_dir)
    info: dict[str, Any] = {
        "name": run_dir.resolve().name,
        "epochs": ckpt.get("epoch"),
        **VAEConfig.from_dict(ckpt["vae_config"]).to_dict(),
        "data_mode": _data_mode(ckpt),
    }
    rows = []
    if (run_dir / "metrics.jsonl").is_file():
        text = (run_dir / "metrics.jsonl").read_text()
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    if rows:
        info["test_neg_elbo"] = rows[-1]["test_neg_elbo"]
        info["estimator"] = rows[-1].get("estimator")
    if (run_dir / "eval.json").is_file():
        ll = json.loads((run_dir / "eval.json").read_text()).get("log_likelihood")
        if ll:
            info["test_nll"], info["nll_samples"] = ll["neg_log_likelihood"], ll["num_samples"]
    return info


def _data_mode(ckpt: dict) -> str | None:
    """The run's data mode (recorded as "binarize" by runs made before the rename)."""
    recorded = ckpt.get("train_config", {})
    return recorded.get("data_mode", recorded.get("binarize"))


def describe_run(info: dict[str, Any]) -> str:
    """The identity card as one Markdown paragraph; keys that are missing are left out."""
    parts = [f"**{info.get('name', 'a VAE built in Python')}**"]
    if info.get("epochs") is not None:
        parts.append(f"{info['epochs']} epoch{'' if info['epochs'] == 1 else 's'}")
    if info.get("test_neg_elbo") is not None:
        how = f" ({info['estimator']})" if info.get("estimator") else ""
        parts.append(f"test −ELBO {info['test_neg_elbo']:.2f} nats{how}")
    if info.get("test_nll") is not None:
        parts.append(f"test NLL {info['test_nll']:.2f} nats (K={info['nll_samples']})")
    parts.append(f"prior {info.get('prior', '?')}, likelihood {info.get('likelihood', '?')}")
    network = info.get("network", "mlp")
    if network == "mlp":
        net = "-".join(str(v) for v in (info.get("x_dim", 784), *info.get("hidden_dims", ())))
        parts.append(f"network {net}-{info.get('z_dim', '?')}")
    else:
        shape = "x".join(map(str, info.get("image_shape") or ()))
        widths = "-".join(map(str, info.get("conv_channels", ()))) if network == "conv" else ""
        parts.append(f"{network} network {shape} {widths}".rstrip() + f" z {info.get('z_dim')}")
    classes = info.get("num_classes") or 0
    parts.append(f"conditional on {classes} labels" if classes else "unconditional")
    if info.get("data_mode"):
        parts.append(f"data: {'grayscale' if info['data_mode'] == 'none' else 'binarized'}")
    return " · ".join(parts)
