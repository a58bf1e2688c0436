"""Checkpoint files: a plain dict of configs, state dicts, epoch and RNG states.

Written to a temporary file in the same directory and renamed over the old one, so a crash
never leaves half a file; read back with ``weights_only=True``. Rebuilding a model from a run
directory is ``runs.py``'s job.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_NAME = "checkpoint.pt"
# How every file torch.save writes (a zip archive) starts.
ZIP_MAGIC = b"PK\x03\x04"


class CheckpointError(RuntimeError):
    """A run directory without a readable checkpoint, or one that does not fit the model."""


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
    """The checkpoint dict of a run directory (or of a checkpoint file)."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}; pass a run directory written by 'pyro-vae train'"
        )
    damaged = f"cannot read checkpoint {path}: the file is damaged or is not a pyro-vae checkpoint"
    try:
        with open(path, "rb") as f:
            start = f.read(len(ZIP_MAGIC))
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror}") from None
    if start != ZIP_MAGIC:  # torch.save's zip archive; torch would unpickle anything else
        raise CheckpointError(f"{damaged} (not a zip archive)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file, whatever torch says
        # Never torch's own text: for a file it cannot unpickle with weights_only=True it
        # advises weights_only=False, i.e. running whatever code a damaged file holds.
        raise CheckpointError(f"{damaged} ({type(e).__name__})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a pyro-vae checkpoint (it holds a {type(state)})")
    return state
