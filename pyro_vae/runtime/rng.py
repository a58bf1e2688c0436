"""Torch's random number generators: seeded blocks that leave the caller's state alone. (A run's
own streams come from its seed, epoch and rank: ``distributed.epoch_seed``.)"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def seeded(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Torch's RNG seeded for a block (the CPU's and, on CUDA, ``device``'s); the caller's RNG
    state comes back afterwards, so library code leaves no process-wide trace."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield
