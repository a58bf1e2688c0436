"""The figures of a run, written as PNG files into ``RUN_DIR/figures``."""

from __future__ import annotations

from pathlib import Path

import torch

from . import plots
from .data import MNISTData
from .evaluate import labels_for
from .model import VAE

# Seed of the prior draws and test digits shown, so figures of different runs line up.
FIGURE_SEED = 1
NUM_SHOWN = 64
PER_CLASS = 10


def write_run_figures(vae: VAE, data: MNISTData, metrics: list[dict], fig_dir: Path) -> list[Path]:
    """Writes every figure for this run; returns their paths."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    written = []
    vae.eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(FIGURE_SEED)
        x, y = data.test_x[:32], data.test_y[:32]
        recon = vae.reconstruct(x, labels_for(vae, y))
        figs = {"reconstructions.png": plots.reconstructions_figure(x, recon)}
        if vae.config.num_classes:
            c = vae.config.num_classes
            labels = torch.arange(c, device=x.device).repeat_interleave(PER_CLASS)
            figs["class_grid.png"] = plots.class_grid_figure(vae.sample(y=labels), c, PER_CLASS)
            labels = torch.arange(NUM_SHOWN, device=x.device) % c
            figs["samples.png"] = plots.samples_figure(
                vae.sample(y=labels), title="Samples (labels 0-9 in turn)"
            )
        else:
            figs["samples.png"] = plots.samples_figure(vae.sample(NUM_SHOWN))
    for name, fig in figs.items():
        path = fig_dir / name
        fig.savefig(path, dpi=120)
        written.append(path)
    return written
