"""The figures of a run, written as PNG files into ``RUN_DIR/figures``.

``make_figures`` does the model's work (encode, decode, project) and asks ``plots`` to draw;
``write_run_figures`` saves them (called at the end of training); ``plot_run`` reloads a run
directory and does both (``pyro-vae plot RUN_DIR``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor

from pyro_vae.data.images import ImageData
from pyro_vae.figures import plots
from pyro_vae.models.config import VAEConfig
from pyro_vae.models.priors import as_latent_event
from pyro_vae.models.vae import VAE, labels_for, require_vae
from pyro_vae.runs.records import load_run, read_metrics
from pyro_vae.runtime.device import resolve_device
from pyro_vae.runtime.rng import seeded

# Seed of the prior draws, so figures of different runs line up.
FIGURE_SEED = 1
NUM_SHOWN = 64
PER_CLASS = 10
NUM_RECONSTRUCTED = 32
DPI = 120
# Latent grids: side length and half-width of the square (seed 003 draws [-2, 2]^2).
GRID_SIZE = 20
CLASS_GRID_SIZE = 8  # per label: ten panels of 8x8 digits stay legible in a README
GRID_EXTENT = 2.0
GRID_SPACINGS = ("square", "quantile")
INTERPOLATION_STEPS = 11
INTERPOLATION_ROWS = 4
ENCODE_BATCH = 1000


@dataclass(frozen=True)
class FigureSpec:
    name: str
    shows: str
    when: str  # which runs get it ("" = all), said in `pyro-vae plot --help`
    applies: Callable[[VAEConfig], bool]


def _always(config: VAEConfig) -> bool:
    return True


FIGURES = (
    FigureSpec("reconstructions.png", "test digits beside their reconstructions", "", _always),
    FigureSpec("samples.png", "decoder means at z drawn from the prior", "", _always),
    FigureSpec(
        "training_curves.png", "-ELBO, reconstruction, KL per epoch, train/test", "", _always
    ),
    FigureSpec(
        "latent_scatter.png",
        "test digits' latent means (PCA if z_dim > 2)",
        "z_dim >= 2",
        lambda c: c.z_dim >= 2,
    ),
    FigureSpec("interpolation.png", "decoded points between two test digits' codes", "", _always),
    FigureSpec(
        "manifold.png",
        "decoder means over a grid of z",
        "unconditional, z_dim = 2",
        lambda c: c.z_dim == 2 and not c.num_classes,
    ),
    FigureSpec(
        "class_grid.png",
        "samples per label (rows: digits)",
        "conditional",
        lambda c: c.num_classes > 0,
    ),
    FigureSpec(
        "class_manifolds.png",
        "one grid of decoder means per label",
        "conditional, z_dim = 2",
        lambda c: c.z_dim == 2 and c.num_classes > 0,
    ),
)


def figure_names(config: VAEConfig) -> list[str]:
    """The files ``write_run_figures`` writes for a model with this config."""
    return [f.name for f in FIGURES if f.applies(config)]


def grid_values(size: int, spacing: str = "square", extent: float = GRID_EXTENT) -> np.ndarray:
    """[size] coordinates along each latent axis, spanning [-extent, extent].

    "square": evenly spaced; "quantile": N(0, 1) quantiles at evenly spaced probabilities
    (equal prior mass between neighbours, as in Kingma & Welling's figure 4).
    """
    if spacing not in GRID_SPACINGS:
        raise ValueError(f"unknown grid spacing {spacing!r}; use one of {GRID_SPACINGS}")
    if size < 2 or extent <= 0:
        raise ValueError(f"need grid size >= 2 and extent > 0, got {size} and {extent}")
    if spacing == "square":
        return np.linspace(-extent, extent, size)
    normal = torch.distributions.Normal(0.0, 1.0)
    p = normal.cdf(torch.tensor(extent, dtype=torch.float64)).item()
    return normal.icdf(torch.linspace(1 - p, p, size, dtype=torch.float64)).numpy()


def prior_loc_scale(vae: VAE, y: Tensor | None) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of p(z) (or p(z | y) for one label y [1]), each [z_dim].

    The latent grids are centred and scaled by them, so a learned, mixture or class-conditional
    prior is drawn where its mass is; for N(0, I) they are 0 and 1.
    """
    prior = as_latent_event(vae.model.prior(y), vae.config.z_dim)
    try:
        loc, scale = prior.mean, prior.stddev
    except NotImplementedError:  # a user prior without moments: the standard grid
        device = next(vae.parameters()).device
        return torch.zeros(vae.config.z_dim, device=device), torch.ones(
            vae.config.z_dim, device=device
        )
    z_dim = vae.config.z_dim
    return loc.detach().reshape(-1, z_dim)[0], scale.detach().reshape(-1, z_dim)[0]


def encode_means(vae: VAE, data: ImageData) -> Tensor:
    """Posterior means of the whole test set, [M, z_dim]."""
    locs = [vae.encode(x, labels_for(vae, y))[0] for x, y in data.test_batches(ENCODE_BATCH)]
    return torch.cat(locs)


def pca_2d(z: Tensor) -> tuple[Tensor, Tensor]:
    """Projection of z [N, D] on its first two principal axes [N, 2], and their variance shares."""
    centred = z.double() - z.double().mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    share = s**2 / (s**2).sum()
    return (centred @ vh[:2].T).float(), share[:2].float()


def interpolation_pairs(y: Tensor, conditional: bool, rows: int) -> list[tuple[int, int]]:
    """Indices of test digits to join: different digits, or the same digit for a conditional VAE
    (whose z carries the style while the label, held fixed along the row, carries the digit)."""
    y = y.cpu()
    firsts = {int(k): (y == k).nonzero().flatten().tolist() for k in y.unique()}
    pairs = []
    for k in sorted(firsts)[:rows]:
        if conditional:
            if len(firsts[k]) > 1:
                pairs.append((firsts[k][0], firsts[k][1]))
        else:
            other = sorted(firsts)[(sorted(firsts).index(k) + len(firsts) // 2) % len(firsts)]
            pairs.append((firsts[k][0], firsts[other][0]))
    # A tiny test set may lack what is asked for: join neighbours instead.
    return pairs or [(0, min(1, len(y) - 1))]


def make_figures(
    vae: VAE,
    data: ImageData,
    metrics: list[dict],
    *,
    grid: str = "square",
    grid_extent: float = GRID_EXTENT,
    grid_size: int = GRID_SIZE,
) -> dict[str, Figure]:
    """Every figure that applies to this model, by file name (see ``FIGURES``). Stacked
    latents: samples from the top prior down the layers, and the scatter, interpolation and
    manifolds of the top layer (``VAE.encode``/``decode``)."""
    require_vae(vae, "the figures")
    vae.eval()
    with seeded(FIGURE_SEED, data.test_x.device):
        figs = _sample_figures(vae, data)
    if metrics:
        figs["training_curves.png"] = plots.training_curves_figure(metrics)
    means = encode_means(vae, data)
    figs.update(_latent_scatter(vae, data, means))
    figs["interpolation.png"] = _interpolation_figure(vae, data, means)
    if vae.config.z_dim == 2:
        figs.update(_manifold_figures(vae, data, grid, grid_extent, grid_size))
    return figs


def _sample_figures(vae: VAE, data: ImageData) -> dict[str, Figure]:
    """Reconstructions, samples from the prior and, with labels, the class grid."""
    c, device, shape = vae.config, data.test_x.device, data.image_shape
    figs: dict[str, Figure] = {}
    x, y = data.test_x[:NUM_RECONSTRUCTED], data.test_y[:NUM_RECONSTRUCTED]
    figs["reconstructions.png"] = plots.reconstructions_figure(
        x, vae.reconstruct(x, labels_for(vae, y)), image_shape=shape
    )
    if c.num_classes:
        labels = torch.arange(NUM_SHOWN, device=device) % c.num_classes
        figs["samples.png"] = plots.samples_figure(
            vae.sample(y=labels),
            title="Samples from the prior (labels 0, 1, 2, ... in turn)",
            image_shape=shape,
        )
        labels = torch.arange(c.num_classes, device=device).repeat_interleave(PER_CLASS)
        figs["class_grid.png"] = plots.class_grid_figure(
            vae.sample(y=labels), c.num_classes, PER_CLASS, image_shape=shape
        )
    else:
        figs["samples.png"] = plots.samples_figure(vae.sample(NUM_SHOWN), image_shape=shape)
    return figs


def _latent_scatter(vae: VAE, data: ImageData, means: torch.Tensor) -> dict[str, Figure]:
    """The test set's codes: as they are for z_dim 2, their 2-D PCA above it."""
    c = vae.config
    top = vae.sites[-1]  # "z", or the top of stacked latents (the layers below at their means)
    q = f"q({top} | x, y)" if c.num_classes else f"q({top} | x)"
    if c.z_dim == 2:
        title = f"Test set encoded: means of {q} ({len(means)} digits)"
        return {"latent_scatter.png": plots.latent_scatter_figure(means, data.test_y, title=title)}
    if c.z_dim < 2:
        return {}
    proj, share = pca_2d(means)
    fig = plots.latent_scatter_figure(
        proj,
        data.test_y,
        title=f"Test set encoded: 2-D PCA of the means of {q} (z_dim = {c.z_dim})",
        xlabel=f"principal component 1 ({share[0]:.0%} of variance)",
        ylabel=f"principal component 2 ({share[1]:.0%} of variance)",
    )
    return {"latent_scatter.png": fig}


def _interpolation_figure(vae: VAE, data: ImageData, means: torch.Tensor) -> Figure:
    """Decoded along straight lines between pairs of test codes."""
    c, device = vae.config, data.test_x.device
    pairs = interpolation_pairs(data.test_y, bool(c.num_classes), INTERPOLATION_ROWS)
    ia, ib = (torch.tensor(i, device=device) for i in zip(*pairs, strict=True))
    ts = torch.linspace(0, 1, INTERPOLATION_STEPS, device=device)
    line = (1 - ts)[:, None, None] * means[ia] + ts[:, None, None] * means[ib]  # [K, P, z_dim]
    path = vae.decode(line, labels_for(vae, data.test_y[ia]))  # [K, P, D]
    how = "means of q; label held fixed" if c.num_classes else "means of q"
    return plots.interpolation_figure(
        data.test_x[ia],
        path.transpose(0, 1),
        data.test_x[ib],
        ts.tolist(),
        title=f"Decoded along straight lines between two test digits' codes ({how})",
        image_shape=data.image_shape,
    )


def _manifold_figures(
    vae: VAE, data: ImageData, grid: str, grid_extent: float, grid_size: int
) -> dict[str, Figure]:
    """z_dim 2: decoder means over a grid of z, one grid per label where there are labels."""
    c, device, shape = vae.config, data.test_x.device, data.image_shape
    spacing = "at N(0, 1) quantiles" if grid == "quantile" else "evenly spaced"
    size = grid_size if not c.num_classes else min(grid_size, CLASS_GRID_SIZE)
    v = torch.tensor(grid_values(size, grid, grid_extent), dtype=torch.float32, device=device)
    unit = torch.stack(torch.meshgrid(v, v, indexing="xy"), -1).reshape(-1, 2)  # z1 fastest
    what = f"{size}x{size} points {spacing}, prior mean ± {grid_extent:g} prior sd per axis"
    if not c.num_classes:
        loc, scale = prior_loc_scale(vae, None)
        axes = (loc[:, None] + scale[:, None] * v).cpu().numpy()
        fig = plots.manifold_figure(
            vae.decode(loc + scale * unit),
            axes[0],
            axes[1],
            title=f"Decoder means over a grid of z\n({what})",
            image_shape=shape,
        )
        return {"manifold.png": fig}
    grids, decoded = [], []
    for k in range(c.num_classes):
        y = torch.full((len(unit),), k, device=device)
        loc, scale = prior_loc_scale(vae, y[:1])
        grids.append((loc[:, None] + scale[:, None] * v).cpu().numpy())  # [2, size]
        decoded.append(vae.decode(loc + scale * unit, y))
    g = np.stack(grids)
    fig = plots.class_manifolds_figure(
        torch.stack(decoded),
        g[:, 0],
        g[:, 1],
        title=f"Decoder means over a grid of z, one grid per label\n({what})",
        image_shape=shape,
    )
    return {"class_manifolds.png": fig}


def write_run_figures(
    vae: VAE, data: ImageData, metrics: list[dict], fig_dir: Path, **options
) -> list[Path]:
    """Writes every figure for this run into ``fig_dir``; returns their paths.

    ``options`` go to ``make_figures`` (grid, grid_extent, grid_size).
    """
    fig_dir = Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    written = []
    palette = data.image_shape[0] == 1  # RGB images keep their colours
    for name, fig in make_figures(vae, data, metrics, **options).items():
        path = fig_dir / name
        save_png(fig, path, palette=palette)
        written.append(path)
    return written


def save_png(fig: Figure, path: str | os.PathLike, dpi: int = DPI, palette: bool = True) -> None:
    """Saves ``fig`` as a compact PNG, with a palette of at most 256 colours (``palette``).

    Grey digit grids have at most 256 shades, so nothing is lost there; saved as RGBA they are
    2-3 times larger. Readers still get RGB(A) pixels, as from any colour PNG. Figures of RGB
    images are saved as RGB (``palette=False``): a palette would band their colours.
    """
    canvas = FigureCanvasAgg(fig)
    fig.set_dpi(dpi)
    canvas.draw()
    rgb = np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[..., :3])
    image = Image.fromarray(rgb)
    if palette:
        image = image.quantize(256, dither=Image.Dither.NONE)
    image.save(path, format="PNG", optimize=True)


def plot_run(
    run_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    *,
    device: str = "auto",
    test_subset: int | None = None,
    vae: VAE | None = None,
    dataset: dict | None = None,
    allow_other_dataset: bool = False,
    **options,
) -> list[Path]:
    """Reloads a run directory and writes its figures into ``RUN_DIR/figures``.

    The test set is binarized as in training; ``test_subset`` defaults to the run's own.
    ``vae``: for a run trained with custom prior/likelihood objects, the VAE rebuilt with them
    (see ``runs.load_vae``). ``dataset``, ``allow_other_dataset``: as for ``runs.load_run``.
    """
    vae, _, data = load_run(
        run_dir,
        data_dir,
        resolve_device(device),
        test_subset,
        vae=vae,
        dataset=dataset,
        allow_other_dataset=allow_other_dataset,
    )
    return write_run_figures(vae, data, read_metrics(run_dir), Path(run_dir) / "figures", **options)
