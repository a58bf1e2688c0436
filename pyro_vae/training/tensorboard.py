"""TensorBoard logging of a run (``pyro-vae train --tensorboard``), for watching long runs.

Per epoch: every number of the epoch's ``metrics.jsonl`` line (as ``train/...``, ``test/...``),
the learning rate, and every ``IMAGE_EVERY`` epochs (and the first) the reconstructions of a few
test images and samples from the prior, as image grids. ``metrics.jsonl`` stays the record;
this is a view of it. Needs the ``[tensorboard]`` extra (``pip install -e ".[tensorboard]"``).
"""

from __future__ import annotations

import os

import torch

from pyro_vae.data.images import ImageData
from pyro_vae.models.vae import VAE
from pyro_vae.runtime.rng import seeded

IMAGE_EVERY = 5
NUM_IMAGES = 32
IMAGE_SEED = 1
# metrics.jsonl keys that are not numbers to plot.
_NOT_SCALARS = {"epoch", "objective", "estimator", "kl_kind", "units", "data", "step"}


def missing_extra_message() -> str:
    return (
        'TensorBoard is not installed: pip install -e ".[tensorboard]" (or pip install tensorboard)'
    )


class TensorBoardLog:
    """A ``SummaryWriter`` on ``log_dir`` that writes a run's epochs."""

    def __init__(self, log_dir: str | os.PathLike) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError(missing_extra_message()) from None
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log_epoch(self, vae: VAE, data: ImageData, metrics: dict) -> None:
        epoch = metrics["epoch"]
        for key, value in metrics.items():
            if key in _NOT_SCALARS or not isinstance(value, int | float):
                continue
            split, _, name = key.partition("_")
            tag = f"{split}/{name}" if split in ("train", "test") else f"run/{key}"
            self.writer.add_scalar(tag, value, epoch)
        # Image grids need a VAE's reconstruct and sample (a UserModel logs scalars only).
        if isinstance(vae, VAE) and (epoch == 1 or epoch % IMAGE_EVERY == 0):
            self.writer.add_image("images/reconstructions", self._reconstructions(vae, data), epoch)
            self.writer.add_image("images/samples", self._samples(vae, data.image_shape), epoch)
        self.writer.flush()

    @torch.no_grad()
    def _reconstructions(self, vae: VAE, data: ImageData) -> torch.Tensor:
        """Originals (top row) above their reconstructions: [C, H', W'] in [0, 1]."""
        x, y = data.test_x[: NUM_IMAGES // 2], data.test_y[: NUM_IMAGES // 2]
        recon = vae.reconstruct(x, y if vae.config.num_classes else None)
        return _grid(torch.cat([x, recon]), NUM_IMAGES // 2, data.image_shape)

    @torch.no_grad()
    def _samples(self, vae: VAE, shape: tuple[int, int, int]) -> torch.Tensor:
        device = next(vae.parameters()).device
        with seeded(IMAGE_SEED, device):
            if vae.config.num_classes:
                y = torch.arange(NUM_IMAGES, device=device) % vae.config.num_classes
                return _grid(vae.sample(y=y), NUM_IMAGES // 2, shape)
            return _grid(vae.sample(NUM_IMAGES), NUM_IMAGES // 2, shape)

    def close(self) -> None:
        self.writer.close()


def _grid(images: torch.Tensor, ncols: int, shape: tuple[int, int, int]) -> torch.Tensor:
    """[N, C*H*W] in [0, 1] -> one image [C, rows*H, ncols*W] (grey for C = 1, RGB for 3)."""
    c, h, w = shape
    n = images.shape[0]
    rows = -(-n // ncols)
    padded = torch.zeros(rows * ncols, c * h * w, device=images.device)
    padded[:n] = images.clamp(0, 1)
    tiles = padded.reshape(rows, ncols, c, h, w).permute(2, 0, 3, 1, 4)
    return tiles.reshape(c, rows * h, ncols * w).cpu()
