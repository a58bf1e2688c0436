"""Data-parallel training on torch.distributed (gloo, 2 CPU processes).

- Shards: disjoint, their union is the global batch, the same number of steps on every rank.
- Gradients: after DDP's backward (or the traced step's all-reduce), each rank's gradient is
  the single-process gradient of the union of the shards, on the same draws (the conditional
  VAE and stacked latents too). Two variants
  fail that check: bypassing the DDP wrapper, and leaving out the world-size scale.
- Parameters stay identical on every rank; ``torchrun ... -m pyro_vae train`` runs end to end,
  writes only rank 0's files, and a stopped run resumes to the uninterrupted run's weights.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import ddp_worker
import pytest
import torch
import torch.multiprocessing as mp

from pyro_vae import load_vae
from pyro_vae.inference.steps import ELBOLoss
from pyro_vae.runs.checkpoint import load_checkpoint
from pyro_vae.runtime.distributed import World, epoch_order, epoch_seed, sharded_batches

WORLD = 2


def test_shards_are_disjoint_cover_the_global_batch_and_take_the_same_steps():
    order = torch.randperm(1003)
    for size in (1, 2, 3, 5):
        per_rank = [
            list(sharded_batches(order, 128, World(rank=r, size=size))) for r in range(size)
        ]
        assert len({len(b) for b in per_rank}) == 1  # every rank takes the same number of steps
        for i, global_batch in enumerate(order.split(128)):
            parts = [per_rank[r][i] for r in range(size)]
            assert torch.equal(torch.cat(parts), global_batch)  # disjoint, and all of it
            lengths = [len(p) for p in parts]
            assert max(lengths) - min(lengths) <= 1
    # The last global batch of 1003 = 7 * 128 + 107 is split exactly: 54 and 53.
    last = [list(sharded_batches(order, 128, World(r, 2)))[-1] for r in range(2)]
    assert [len(p) for p in last] == [54, 53]


def test_epoch_order_is_shared_and_noise_is_per_rank_and_epoch():
    a, b = epoch_order(100, 7, 3, "cpu"), epoch_order(100, 7, 3, "cpu")
    assert torch.equal(a, b) and not torch.equal(a, epoch_order(100, 7, 4, "cpu"))
    seeds = {epoch_seed(7, e, r) for e in range(5) for r in range(4)}
    assert len(seeds) == 20 and all(0 <= s < 2**63 for s in seeds)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(ddp_worker.run, args=(WORLD, _free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def single_process_gradient(kind: str = "vae") -> list[torch.Tensor]:
    """One process: the loss of every shard with that rank's draws, summed, differentiated."""
    vae = ddp_worker.tiny_vae(kind)
    loss = ELBOLoss(vae, "trace")
    total = 0.0
    xs = torch.tensor_split(ddp_worker.images(), WORLD)
    labels = ddp_worker.labels(kind)
    ys = torch.tensor_split(labels, WORLD) if labels is not None else [None] * WORLD
    for rank, (x, y) in enumerate(zip(xs, ys, strict=True)):
        torch.manual_seed(ddp_worker.noise_seed(rank))
        total = total + loss(x, y)[0]
    return list(torch.autograd.grad(total, list(vae.parameters())))


def equal_to_single_process(grads: list[torch.Tensor], expected: list[torch.Tensor]) -> bool:
    pairs = zip(grads, expected, strict=True)
    return all(torch.allclose(g, e, rtol=1e-5, atol=1e-6) for g, e in pairs)


@pytest.mark.multiprocess
@pytest.mark.parametrize("variant", ["ddp", "traced"])
def test_each_ranks_gradient_is_the_single_process_gradient(ranks, variant):
    expected = single_process_gradient()
    for rank in range(WORLD):
        assert equal_to_single_process(ranks[rank][variant], expected), (variant, rank)


@pytest.mark.multiprocess
@pytest.mark.parametrize("variant", ["cvae-eager", "cvae-fx"])
def test_the_conditional_vae_with_learned_prior_and_likelihood_too(ranks, variant):
    """Labels sharded with the images; the conditional prior's and the Gaussian likelihood's
    parameters get the single-process gradient like the networks' (DDP's and the traced step)."""
    expected = single_process_gradient("cvae")
    assert len(expected) > len(single_process_gradient("vae"))  # the learnable prior, the scale
    for rank in range(WORLD):
        assert equal_to_single_process(ranks[rank][variant], expected), (variant, rank)


@pytest.mark.multiprocess
@pytest.mark.parametrize("variant", ["stacked-eager", "stacked-fx"])
def test_stacked_latents_get_the_single_process_gradient_too(ranks, variant):
    expected = single_process_gradient("stacked")
    assert len(expected) > len(single_process_gradient("vae"))  # the layers' networks
    for rank in range(WORLD):
        assert equal_to_single_process(ranks[rank][variant], expected), (variant, rank)


@pytest.mark.multiprocess
@pytest.mark.parametrize("variant", ["bypass", "no-scale"])
def test_negative_controls_fail_the_same_check(ranks, variant):
    expected = single_process_gradient()
    assert not all(equal_to_single_process(ranks[r][variant], expected) for r in range(WORLD))


@pytest.mark.multiprocess
@pytest.mark.parametrize("kind", ["eager", "fx"])
def test_parameters_stay_identical_on_every_rank(ranks, kind):
    a, b = ranks[0][f"params-{kind}"], ranks[1][f"params-{kind}"]
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    start = list(ddp_worker.tiny_vae().parameters())
    assert any(not torch.equal(p, s) for p, s in zip(a, start, strict=True))  # it trained


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={WORLD}",
        "-m",
        "pyro_vae",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "error"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=cwd)


@pytest.mark.mnist
@pytest.mark.multiprocess
def test_torchrun_trains_writes_rank_zero_files_and_resumes_exactly(mnist_dir, tmp_path):
    # 650 images at batch 100: six global batches through the replayed graph and its flat
    # all-reduce, and a last one of 50 (25 per rank) through the eager step's DDP wrapper.
    def train(out: str, *extra: str) -> subprocess.CompletedProcess:
        proc = torchrun(
            "train", "--data-dir", str(mnist_dir), "--out", out, "--device", "cpu",
            "--train-subset", "650", "--test-subset", "200", "--batch-size", "100",
            "--z-dim", "4", "--hidden-dims", "32", "--no-progress", "--step", "fx", *extra,
            cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    first = train("straight", "--epochs", "2")
    lines = [ln for ln in first.stdout.splitlines() if ln.startswith("epoch ")]
    assert len(lines) == 2  # rank 0 alone prints
    straight = tmp_path / "straight"
    rows = [json.loads(ln) for ln in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    files = sorted(p.name for p in straight.iterdir())
    assert files == ["checkpoint.pt", "config.json", "figures", "metrics.jsonl"]
    assert load_checkpoint(straight)["world_size"] == WORLD
    vae, _ = load_vae(straight)
    assert vae.config.z_dim == 4

    train("stopped", "--epochs", "1")
    train("stopped", "--epochs", "2", "--resume")
    a, b = load_checkpoint(straight), load_checkpoint(tmp_path / "stopped")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_torchrun_refuses_a_gpu_index(monkeypatch):
    """Under torchrun LOCAL_RANK picks the GPU: ``--device cuda:1`` would put every rank on one
    GPU, so it is refused with the fix (checked before any process group is joined)."""
    from pyro_vae.runtime.distributed import init_world

    for k, v in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValueError, match="LOCAL_RANK picks each process's GPU; pass --device cuda"):
        init_world("cuda:1")
