"""Where the work runs: a device name from the command line or the Python API becomes a
``torch.device``, with an error that says what to pass instead."""

from __future__ import annotations

import torch


def resolve_device(name: str | torch.device) -> torch.device:
    """``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` -> a device."""
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"unknown device {name!r}; use auto, cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"--device {name} was asked for but no CUDA GPU is visible; use --device cpu"
        )
    device = torch.device(name)
    if device.type == "cuda" and device.index is not None:
        if device.index >= torch.cuda.device_count():
            raise ValueError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible"
            )
    return device


def synchronize(device: torch.device | str) -> None:
    """Waits for ``device``'s queued kernels (no-op on the CPU), so timings are honest."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
