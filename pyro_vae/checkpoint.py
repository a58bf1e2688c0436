"""Checkpoints: a plain dict of configs, state dicts, epoch and RNG states.

Written to a temporary file in the same directory and renamed over the old one, so a crash
never leaves half a file; read back with ``weights_only=True``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .config import TrainConfig, VAEConfig
from .data import MNISTData
from .model import VAE

CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointError(RuntimeError):
    """A run directory without a readable checkpoint."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(run_dir: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    path = Path(run_dir)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}; pass a run directory written by 'pyro-vae train'"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - a corrupt or foreign file, whatever torch says
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from None


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_vae(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[VAE, dict]:
    """Rebuilds the trained VAE of a run (on ``device``) and returns it with its checkpoint."""
    ckpt = load_checkpoint(run_dir)
    config = VAEConfig.from_dict(ckpt["vae_config"])
    if "custom" in (config.prior, config.likelihood):
        raise CheckpointError(
            "this run used a custom prior or likelihood object; rebuild VAE(...) with it in Python "
            "and load ckpt['model'] with load_state_dict"
        )
    vae = VAE.from_config(config)
    vae.load_state_dict(ckpt["model"])
    return vae.to(device), ckpt


@contextmanager
def seeded(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Torch's RNG seeded for a block (the CPU's and, on CUDA, ``device``'s); the caller's RNG
    state comes back afterwards, so library code leaves no process-wide trace."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def load_run(
    run_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    device: str | torch.device = "cpu",
    test_subset: int | None = None,
) -> tuple[VAE, dict, MNISTData]:
    """A trained run, its checkpoint and its test set binarized as in training, on ``device``.

    ``test_subset``: the first N test images (0 = all); None = the run's own setting.
    """
    vae, ckpt = load_vae(run_dir, device)
    tc = TrainConfig.from_dict(ckpt["train_config"])
    data = MNISTData.load(
        data_dir,
        vae.likelihood,
        tc.binarize,
        device,
        train_subset=1,
        test_subset=tc.test_subset if test_subset is None else test_subset,
    )
    return vae, ckpt, data
