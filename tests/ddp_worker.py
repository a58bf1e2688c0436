"""The worker of tests/test_distributed.py: one rank of a 2-process gloo group (a module of
its own so ``torch.multiprocessing.spawn`` can import it in the child processes)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from pyro_vae import VAE, TrainConfig
from pyro_vae.inference.steps import ELBOLoss, build_step
from pyro_vae.runtime.distributed import World
from pyro_vae.training.schedules import make_optimizer

NUM_IMAGES = 11  # an uneven global batch: shards of 6 and 5


def tiny_vae(kind: str = "vae") -> VAE:
    """``vae``: N(0, I) and Bernoulli. ``cvae``: the conditional VAE with a learnable
    label-conditioned prior and a Gaussian likelihood with a learned scale. ``stacked``: two
    stochastic layers under a mixture prior."""
    torch.manual_seed(0)  # the same start on every rank (DDP would broadcast rank 0's anyway)
    if kind == "cvae":
        return VAE(
            z_dim=3, hidden_dims=(8,), num_classes=3, prior="conditional", likelihood="gaussian"
        )
    if kind == "stacked":  # two stochastic layers, the learned prior on the top one
        return VAE(latent_dims=(4, 3), hidden_dims=(8,), latent_hidden_dims=(5,), prior="mog")
    return VAE(z_dim=3, hidden_dims=(8,))


def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    return torch.bernoulli(torch.full((NUM_IMAGES, 784), 0.3), generator=g)


def labels(kind: str) -> torch.Tensor | None:
    return torch.arange(NUM_IMAGES) % 3 if kind == "cvae" else None


def noise_seed(rank: int) -> int:
    return 100 + rank


def _grads(vae: VAE) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in vae.parameters()]


def run(rank: int, size: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=size)
    world = World(rank=rank, size=size)
    x = torch.tensor_split(images(), size)[rank]
    results = {}
    # The conditional VAE with learnable prior and likelihood parameters: DDP's and the traced
    # step's gradients (compared with the single-process gradient by the test).
    y = torch.tensor_split(labels("cvae"), size)[rank]
    for kind in ("eager", "fx"):
        vae = tiny_vae("cvae")
        sgd = torch.optim.SGD(vae.parameters(), lr=0.0)
        step = build_step(vae, sgd, TrainConfig().objective(), kind, world)
        torch.manual_seed(noise_seed(rank))
        step(x, y)
        results[f"cvae-{kind}"] = _grads(vae)
    # Stacked latents: DDP's and the traced step's gradients too.
    for kind in ("eager", "fx"):
        vae = tiny_vae("stacked")
        sgd = torch.optim.SGD(vae.parameters(), lr=0.0)
        step = build_step(vae, sgd, TrainConfig().objective(), kind, world)
        torch.manual_seed(noise_seed(rank))
        step(x, None)
        results[f"stacked-{kind}"] = _grads(vae)
    # The gradient after DDP's backward, and the two ways to get it wrong (negative controls).
    for variant in ("ddp", "bypass", "no-scale"):
        vae = tiny_vae()
        loss = ELBOLoss(vae, "trace", loss_scale=1.0 if variant == "no-scale" else size)
        wrapped = DistributedDataParallel(loss)
        torch.manual_seed(noise_seed(rank))
        value = (loss if variant == "bypass" else wrapped)(x, None)[0]
        value.backward()
        results[variant] = _grads(vae)
    # The traced step: gradients summed by one all-reduce before the optimizer (lr 0 here).
    vae = tiny_vae()
    config = TrainConfig(lr=1e-3)
    sgd = torch.optim.SGD(vae.parameters(), lr=0.0)
    step = build_step(vae, sgd, config.objective(), "fx", world)
    torch.manual_seed(noise_seed(rank))
    step(x, None)
    results["traced"] = _grads(vae)
    # Agreement: several fused-Adam steps on different shards leave identical parameters.
    for kind in ("eager", "fx"):
        vae = tiny_vae()
        step = build_step(vae, make_optimizer(vae, config), config.objective(), kind, world)
        torch.manual_seed(noise_seed(rank))
        for _ in range(4):
            step(x, None)
        results[f"params-{kind}"] = [p.detach().clone() for p in vae.parameters()]
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()
