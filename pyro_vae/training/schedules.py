"""Optimizer and learning-rate schedule of a run, from its ``TrainConfig``.

The staged schedule is the IWAE paper's (Burda et al. 2016, section 5): stage i = 0, 1, ...
runs 3^i passes over the training set at learning rate lr * 10^(-i/7); with eight stages that
is 1 + 3 + ... + 2187 = 3280 passes. It is a standard ``torch.optim.lr_scheduler.MultiStepLR``
(milestones at the stage boundaries, gamma = 10^(-1/7)), stepped once per epoch, whose state
is saved in the checkpoint, so a resumed run continues it exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from pyro_vae.runs.options import TrainConfig

STAGE_DECAY = 10 ** (-1 / 7)
NUM_STAGES = 8


def stage_boundaries(num_stages: int = NUM_STAGES) -> list[int]:
    """The epochs after which each stage ends: 1, 4, 13, 40, 121, 364, 1093, 3280."""
    ends, total = [], 0
    for i in range(num_stages):
        total += 3**i
        ends.append(total)
    return ends


def staged_lr(lr: float, epoch: int) -> float:
    """The learning rate of the staged schedule in (1-based) ``epoch``: lr * 10^(-i/7) in
    stage i; after the last stage the last rate stays."""
    stage = sum(1 for end in stage_boundaries() if epoch > end)
    return lr * 10 ** (-min(stage, NUM_STAGES - 1) / 7)


def make_optimizer(
    module: nn.Module, config: TrainConfig, capturable: bool = False
) -> torch.optim.Adam:
    """Adam over every parameter, fused: one kernel for all tensors, on the CPU as on CUDA.

    Measured here on 1 CPU thread for the default network: 0.7 ms per Adam step fused against
    2.1 ms for torch's default per-tensor loop, a quarter of a whole training step.
    ``capturable``: the step count lives on the device (what a CUDA graph needs).
    """
    params = list(module.parameters())
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(
        params,
        lr=config.lr,
        betas=config.betas,
        eps=config.eps,
        fused=fused,
        capturable=capturable,
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The run's learning-rate schedule (None for a constant rate), stepped once per epoch."""
    if config.lr_schedule == "constant":
        return None
    # The last stage's rate stays: no milestone after the seventh decay.
    milestones = stage_boundaries()[: NUM_STAGES - 1]
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=STAGE_DECAY)


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The first param group's learning rate as a float (a CUDA-graph run keeps it in a tensor)."""
    return float(optimizer.param_groups[0]["lr"])


def _plain(value: object) -> object:
    if torch.is_tensor(value):
        return float(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """``optimizer.state_dict()`` with learning rates as floats, so a checkpoint of any step
    kind (the CUDA graph keeps them in device tensors) loads into any other, on any device."""
    state = optimizer.state_dict()
    state["param_groups"] = [{**g, "lr": _plain(g["lr"])} for g in state["param_groups"]]
    return state


def scheduler_state(scheduler: torch.optim.lr_scheduler.LRScheduler | None) -> dict | None:
    """The scheduler's state dict with its learning rates as floats (see optimizer_state)."""
    if scheduler is None:
        return None
    return {k: _plain(v) for k, v in scheduler.state_dict().items()}


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)`` keeping how this run's optimizer was built
    (``capturable``, ``fused``): a checkpoint says what the moments and step counts are, not
    how the next run steps. ``load_state_dict`` would put the saved flags back, and a CUDA
    graph run resumed from an eager checkpoint would then not be capturable (or a CPU run
    resumed from a GPU one would be, which a CPU cannot step)."""
    built = [{k: g[k] for k in ("capturable", "fused") if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, flags in zip(optimizer.param_groups, built, strict=True):
        group.update(flags)
        group["lr"] = float(group["lr"])
        for p in group["params"]:
            st = optimizer.state.get(p, {})
            if "step" in st and (group.get("capturable") or group.get("fused")):
                st["step"] = st["step"].to(device=p.device, dtype=torch.float32)


def kl_weight_at(step: int, beta: float = 1.0, warmup: int = 0) -> float:
    """beta at training step ``step`` (0-based, counted over the whole run): a linear rise
    from beta / warmup at the first step to beta at step ``warmup - 1``, then beta. Never 0,
    which Pyro's ``poutine.scale`` refuses; ``warmup = 0`` is no warm-up. A function of the
    step alone, so a resumed run weighs each step as an uninterrupted one does."""
    if warmup <= 0:
        return beta
    return beta * min(1.0, (step + 1) / warmup)
