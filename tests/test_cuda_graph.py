"""The CUDA-graph step (cuda_graph.py) is correct for everything training does.

Every test here needs CUDA and is skipped cleanly without it (marker ``cuda``;
``benchmarks/gpu_check.py`` runs them on a GPU machine). What a user relies on:

- the captured step trains as the replayed graph (fx) does, for every registered prior x
  likelihood x conditional and the custom objects, and never syncs with the host;
- a learning-rate schedule changes the rate the captured Adam uses (it lives in a device
  tensor; a Python float would have been frozen into the graph);
- a run resumes from a checkpoint written by any step kind on any device, and a GPU run
  resumes on a CPU;
- ``cuda:N``, the non-finite flag, the epoch's last smaller batch (the eager fallback, with no
  warning from the capturable optimizer) all work.

The CPU-side pieces (checkpoints with learning rates as floats, the optimizer flags kept on
resume, cudagraph refused beside an all-reduce) are tested without CUDA at the end.
"""

from __future__ import annotations

import itertools

import pyro
import pytest
import torch
from synthetic import write_tensor_file
from test_step_objects import CUSTOM, FROZEN_WARNING, build, data

from pyro_vae import VAE, TrainConfig, VAEConfig, train
from pyro_vae.inference.steps import CUDAGraphStep, ELBOLoss, build_step
from pyro_vae.models.likelihoods import LIKELIHOODS
from pyro_vae.models.priors import PRIORS
from pyro_vae.runs.checkpoint import load_checkpoint, save_checkpoint
from pyro_vae.runtime.distributed import World
from pyro_vae.training.schedules import load_optimizer_state, make_optimizer, optimizer_state

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
SEED = 7
REGISTRY = [
    (prior, likelihood, classes)
    for prior, likelihood, classes in itertools.product(
        sorted(PRIORS), sorted(LIKELIHOODS), (0, 10)
    )
    if classes or prior != "conditional"
]


def _pair(case, kind: str, device="cuda", lr: float = 1e-2):
    """A tiny VAE of ``case`` on ``device`` with a ``kind`` step (same weights for any kind)."""
    vae = build(case, dtype=torch.float32).to(device)
    config = TrainConfig(lr=lr)
    optimizer = make_optimizer(vae, config, capturable=kind == "cudagraph")
    step = build_step(vae, optimizer, config.objective(), kind, World())
    x, y = data(vae, n=16, dtype=torch.float32)
    return vae, step, optimizer, x.to(device), None if y is None else y.to(device)


def _train_steps(step, x, y, n: int) -> torch.Tensor:
    step(x, y)  # builds (traces, checks, captures) and trains one step
    torch.cuda.manual_seed(SEED)
    return torch.stack([step(x, y)[0].clone() for _ in range(n)])


def _assert_same_training(a, b) -> None:
    (la, va), (lb, vb) = a, b
    torch.testing.assert_close(la, lb, rtol=1e-4, atol=1e-3)
    for k in va.state_dict():
        torch.testing.assert_close(va.state_dict()[k], vb.state_dict()[k], rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.filterwarnings(FROZEN_WARNING)
@pytest.mark.parametrize("case", REGISTRY + CUSTOM, ids=str)
def test_cuda_graph_trains_as_the_replayed_graph_over_the_model_matrix(case):
    results = []
    for kind in ("fx", "cudagraph"):
        vae, step, _, x, y = _pair(case, kind)
        results.append((_train_steps(step, x, y, 5), vae))
    assert torch.isfinite(results[1][0]).all()
    _assert_same_training(*results)


@pytest.mark.cuda
@needs_cuda
def test_cuda_graph_step_equals_the_eager_step_and_never_syncs():
    """20 steps from the same seed: the captured step gives the eager step's (and the replayed
    graph's) losses and weights, and under ``set_sync_debug_mode("error")`` never syncs."""
    results = {}
    for kind in ("eager", "fx", "cudagraph"):
        vae, step, _, x, _ = _pair(("normal", "bernoulli", 0), kind)
        step(x, None)
        torch.cuda.manual_seed(SEED)
        if kind == "cudagraph":  # the eager step reads validation's flags back: it may sync
            torch.cuda.set_sync_debug_mode("error")
        try:
            values = torch.stack([step(x, None)[0].clone() for _ in range(20)])
        finally:
            torch.cuda.set_sync_debug_mode("default")
        results[kind] = (values, vae)
    _assert_same_training(results["eager"], results["cudagraph"])
    _assert_same_training(results["fx"], results["cudagraph"])


@pytest.mark.cuda
@needs_cuda
def test_a_schedule_after_capture_changes_the_captured_learning_rate():
    """The rate drops tenfold after capture (a scheduler's fill_, then a float a user assigns):
    the captured step follows the replayed graph, whose Adam reads the rate every step.
    With the rate frozen into the graph the weights would part after the first change."""
    results = []
    for kind in ("fx", "cudagraph"):
        vae, step, optimizer, x, _ = _pair(("learned-normal", "bernoulli", 0), kind)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[1], gamma=0.1)
        losses = [_train_steps(step, x, None, 3)]
        scheduler.step()  # 1e-2 -> 1e-3
        before = {k: v.clone() for k, v in vae.state_dict().items()}
        losses.append(torch.stack([step(x, None)[0].clone() for _ in range(3)]))
        moved = max((vae.state_dict()[k] - before[k]).abs().max().item() for k in before)
        for group in optimizer.param_groups:
            group["lr"] = 1e-4  # a plain float, as a user or an older scheduler sets it
        losses.append(torch.stack([step(x, None)[0].clone() for _ in range(3)]))
        assert float(optimizer.param_groups[0]["lr"]) == pytest.approx(1e-4)
        results.append((torch.cat(losses), vae, moved))
    assert results[1][2] < 3 * 3e-3  # Adam moves at most ~lr per step: 1e-3, not 1e-2
    _assert_same_training(results[0][:2], results[1][:2])


@pytest.mark.cuda
@needs_cuda
def test_the_non_finite_flag_and_the_last_smaller_batch():
    vae, step, _, x, _ = _pair(("normal", "bernoulli", 0), "cudagraph")
    metrics, bad = step(x, None)
    assert not bad.item()
    # The last, smaller batch: the eager fallback on the capturable optimizer, no warning
    # (warnings are errors here), and the captured graph replays after it.
    small, _ = step(x[:5], None, full=False)
    assert torch.isfinite(small).all() and step.shape[0] == tuple(x.shape)
    metrics, bad = step(x, None)
    assert torch.isfinite(metrics).all() and not bad.item()
    with torch.no_grad():  # the graph reads the weights in place
        vae.model.decoder.net[0].weight[0, 0] = float("nan")
    _, bad = step(x, None)
    assert bad.item()


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_capture_on_a_second_gpu():
    results = []
    for kind in ("fx", "cudagraph"):
        vae, step, _, x, _ = _pair(("normal", "bernoulli", 0), kind, device="cuda:1")
        with torch.cuda.device(1):
            losses = _train_steps(step, x, None, 5)
        assert all(p.device == torch.device("cuda:1") for p in vae.parameters())
        results.append((losses, vae))
    _assert_same_training(*results)


def _tensor_run(tmp_path, out: str, epochs: int, step: str, device: str) -> TrainConfig:
    # 90 images of 16 x 20 at batch 32: two full batches and a last one of 26 per epoch.
    data_file = tmp_path / "data.pt"
    if not data_file.exists():
        write_tensor_file(data_file)
    return TrainConfig(
        dataset=f"tensor:{data_file}",
        out=str(tmp_path / out),
        epochs=epochs,
        batch_size=32,
        step=step,
        device=device,
        lr_schedule="staged",  # the IWAE preset's schedule: its rate changes after epoch 1
        test_iw_samples=0,
    )


QUIET = {"progress": False, "write_figures": False, "log": lambda line: None}
RESUMES = [
    ("eager", "cuda", "cudagraph", "cuda"),
    ("cudagraph", "cuda", "fx", "cuda"),
    ("fx", "cpu", "cudagraph", "cuda"),
    ("cudagraph", "cuda", "eager", "cpu"),
    ("cudagraph", "cuda", "fx", "cpu"),
]


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("first,first_device,second,second_device", RESUMES, ids=str)
def test_resume_across_step_kinds_and_devices(first, first_device, second, second_device, tmp_path):
    small = VAEConfig(x_dim=320, z_dim=4, hidden_dims=(16,))
    with pyro.settings.context(module_local_params=True):
        train(small, _tensor_run(tmp_path, "run", 1, first, first_device), **QUIET)
        rows = train(
            None, _tensor_run(tmp_path, "run", 3, second, second_device), resume=True, **QUIET
        )
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert all(isinstance(r["lr"], float) and r["train_loss"] == r["train_loss"] for r in rows)
    assert rows[1]["lr"] < rows[0]["lr"]  # the staged schedule decayed after epoch 1
    assert rows[-1]["step"] == second
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["epoch"] == 3
    assert all(isinstance(g["lr"], float) for g in ckpt["optimizer"]["param_groups"])


# --- the CPU-side pieces, tested without CUDA ---


def test_checkpoints_hold_learning_rates_as_floats_and_load_into_any_optimizer():
    """A CUDA-graph optimizer keeps its rate in a tensor and is capturable; its checkpoint
    loads into an ordinary optimizer (a CPU run) with this run's flags, and back."""
    vae = VAE(z_dim=2, hidden_dims=(4,))
    graph_like = make_optimizer(vae, TrainConfig())
    for group in graph_like.param_groups:  # what cuda_graph.make_capturable leaves
        group["lr"], group["capturable"] = torch.tensor(1e-3), True
    state = optimizer_state(graph_like)
    assert all(type(g["lr"]) is float for g in state["param_groups"])
    plain = make_optimizer(vae, TrainConfig())
    load_optimizer_state(plain, state)
    assert all(g["capturable"] is False and type(g["lr"]) is float for g in plain.param_groups)
    # Negative control: torch's own load puts the saved flag back.
    other = make_optimizer(vae, TrainConfig())
    other.load_state_dict(graph_like.state_dict())
    assert all(g["capturable"] is True for g in other.param_groups)


def test_a_gpu_checkpoint_resumes_on_a_cpu(tmp_path):
    """A checkpoint as a CUDA-graph run of an earlier version wrote it (capturable, the rate
    a tensor) resumes on a CPU with the fx step."""
    small = VAEConfig(x_dim=320, z_dim=4, hidden_dims=(16,))
    with pyro.settings.context(module_local_params=True):
        train(small, _tensor_run(tmp_path, "run", 1, "eager", "cpu"), **QUIET)
        path = tmp_path / "run" / "checkpoint.pt"
        ckpt = load_checkpoint(path)
        for group in ckpt["optimizer"]["param_groups"]:
            group["lr"], group["capturable"] = torch.tensor(group["lr"]), True
        save_checkpoint(path, ckpt)
        rows = train(None, _tensor_run(tmp_path, "run", 2, "fx", "cpu"), resume=True, **QUIET)
    assert [r["step"] for r in rows] == ["eager", "fx"] and isinstance(rows[1]["lr"], float)


def test_the_cuda_graph_step_refuses_an_all_reduce():
    """The captured graph holds the optimizer step, so there is no place for the gradient
    collective: refused where the step is built, not only by resolve_step."""
    vae = VAE(z_dim=2, hidden_dims=(4,))
    loss = ELBOLoss(vae)
    optimizer = make_optimizer(vae, TrainConfig())
    with pytest.raises(ValueError, match="one process; under torchrun use --step compiled"):
        CUDAGraphStep(loss, optimizer, all_reduce=lambda t: t)
    CUDAGraphStep(loss, optimizer)  # one process: built (captured at its first call)
