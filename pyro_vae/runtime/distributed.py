"""Several processes on torch.distributed: who this process is, and how an epoch is shared.

``torchrun --nproc-per-node N -m pyro_vae train ...`` starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set; the entry point joins them into one process group
(``nccl`` on CUDA, ``gloo`` on the CPU) and the trainer gets a :class:`World`. Without torchrun
the world is one process and every collective below is a no-op.

An epoch, the same on every rank and for every world size:

- the global order of the training images comes from (seed, epoch) alone, and is cut into
  global batches of ``--batch-size``; rank r takes the r-th of N near-equal shards of each
  (``shard``), so all ranks take the same number of steps, and the union of the shards is
  the single-process batch, the last uneven one included;
- each rank's noise (binarization, the guide's draws) comes from (seed, epoch, rank)
  (``epoch_seed``), so a resumed run needs no stored generator state.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

# A rank that fails brings the others down after this long instead of leaving them hanging.
COLLECTIVE_TIMEOUT = timedelta(minutes=5)


@dataclass(frozen=True)
class World:
    """This process's place among ``size`` processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files and prints; the others wait at barriers."""
        return self.rank == 0

    def all_reduce(self, t: Tensor) -> Tensor:
        """Sums ``t`` over the ranks in place (and returns it)."""
        if self.size > 1:
            dist.all_reduce(t)
        return t

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def broadcast_object(self, obj: object) -> object:
        """Rank 0's ``obj`` on every rank (pickled: for small things, such as an error)."""
        if self.size > 1:
            box = [obj]
            dist.broadcast_object_list(box, src=0)
            return box[0]
        return obj


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_world(device_name: str) -> tuple[World, str]:
    """Joins the process group torchrun describes (entry points only: it is process-wide).

    Returns the world and the device this rank uses: ``cuda:LOCAL_RANK`` when ``device_name``
    is auto or cuda and CUDA is present, else the CPU.
    """
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
    if device_name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device_name} but no CUDA GPU is visible; use --device cpu")
    if device_name.startswith("cuda:"):
        raise ValueError(
            f"--device {device_name} under torchrun: LOCAL_RANK picks each process's GPU; "
            "pass --device cuda (and CUDA_VISIBLE_DEVICES to choose the node's GPUs)"
        )
    if cuda:
        if local >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPU(s) on this node; "
                "give torchrun --nproc-per-node at most the number of GPUs"
            )
        torch.cuda.set_device(local)
    dist.init_process_group(
        backend="nccl" if cuda else "gloo",
        timeout=COLLECTIVE_TIMEOUT,
        **({"device_id": torch.device("cuda", local)} if cuda else {}),
    )
    return World(rank=rank, size=size, local_rank=local), (f"cuda:{local}" if cuda else "cpu")


def close_world(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 63-bit seed from (seed, epoch, rank): every epoch and rank its own stream."""
    digest = hashlib.sha256(f"pyro-vae/{seed}/{epoch}/{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def epoch_order(num: int, seed: int, epoch: int, device: torch.device | str) -> Tensor:
    """The global order of ``num`` training images in ``epoch``: the same on every rank."""
    g = torch.Generator(device=device).manual_seed(epoch_seed(seed, epoch, rank=-1))
    return torch.randperm(num, generator=g, device=device)


def shard(indices: Tensor, rank: int, size: int) -> Tensor:
    """Rank ``rank``'s part of a global batch: ``size`` contiguous parts differing by at most
    one image (some may be empty when the batch has fewer images than ranks)."""
    return torch.tensor_split(indices, size)[rank]


def sharded_batches(order: Tensor, batch_size: int, world: World) -> Iterator[Tensor]:
    """This rank's shard of every global batch of ``order``: the same count on every rank."""
    for global_batch in order.split(batch_size):
        yield shard(global_batch, world.rank, world.size)
