"""Torch's random number generators: seeded blocks that leave the caller's state alone, and the
RNG state a checkpoint stores so that a resumed run draws what an uninterrupted one would."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


@contextmanager
def seeded(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Torch's RNG seeded for a block (the CPU's and, on CUDA, ``device``'s); the caller's RNG
    state comes back afterwards, so library code leaves no process-wide trace."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def rng_state() -> dict[str, Any]:
    """The CPU generator's state and, when CUDA is present, every CUDA generator's."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what :func:`rng_state` returned (CUDA states only where CUDA is present)."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
