"""The IWAE paper's protocol: the preset, the staged learning-rate schedule (exact at the stage
boundaries and across a resume), and TensorBoard logging read back with TensorBoard's reader."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pyro_vae import TrainConfig, VAEConfig, train
from pyro_vae.cli.args import typed_options
from pyro_vae.cli.main import build_parser
from pyro_vae.cli.train import configs_from_args
from pyro_vae.runs.checkpoint import load_checkpoint
from pyro_vae.runs.presets import IWAE_PAPER
from pyro_vae.training.schedules import make_optimizer, make_scheduler, stage_boundaries, staged_lr


def parse_train(*argv: str):
    parser = build_parser()
    args = parser.parse_args(["train", *argv])
    sub = parser._subparsers._group_actions[0].choices["train"]
    args.typed = typed_options(sub, ["train", *argv])
    return configs_from_args(args)


def test_the_paper_preset_sets_every_value_of_the_protocol():
    vae, config, record = parse_train("--preset", "iwae-paper")
    for key, value in IWAE_PAPER["vae"].items():
        assert getattr(vae, key) == value, key
    for key, value in IWAE_PAPER["train"].items():
        assert getattr(config, key) == value, key
    # The paper: 784-200-200-50 tanh, Adam (0.9, 0.999) eps 1e-4, batch 20, 3280 passes.
    assert (vae.hidden_dims, vae.z_dim, vae.activation) == ((200, 200), 50, "tanh")
    assert (config.batch_size, config.betas, config.eps) == (20, (0.9, 0.999), 1e-4)
    assert config.epochs == sum(3**i for i in range(8)) == 3280
    assert config.preset == "iwae-paper"
    assert record["name"] == "iwae-paper" and record["overridden"] == []


def test_a_typed_flag_overrides_the_preset_and_the_record_says_so():
    vae, config, record = parse_train("--preset", "iwae-paper", "--epochs", "5", "--z-dim", "20")
    assert config.epochs == 5 and vae.z_dim == 20
    assert config.batch_size == 20 and vae.hidden_dims == (200, 200)  # the rest is the preset's
    assert record["overridden"] == ["epochs", "z_dim"]
    # Typing the default value explicitly still overrides the preset's.
    _, config, _ = parse_train("--preset", "iwae-paper", "--batch-size", "128")
    assert config.batch_size == 128


def test_staged_rates_are_exact_at_every_stage_boundary():
    assert stage_boundaries() == [1, 4, 13, 40, 121, 364, 1093, 3280]
    optimizer = make_optimizer(torch.nn.Linear(2, 2), TrainConfig(lr=1e-3))
    scheduler = make_scheduler(optimizer, TrainConfig(lr=1e-3, lr_schedule="staged"))
    starts = [1, 2, 5, 14, 41, 122, 365, 1094]  # the first epoch of each stage
    for epoch in range(1, 3300):
        lr = optimizer.param_groups[0]["lr"]
        assert lr == pytest.approx(staged_lr(1e-3, epoch), rel=1e-12)
        if epoch in starts:
            stage = starts.index(epoch)
            assert lr == pytest.approx(1e-3 * 10 ** (-stage / 7), rel=1e-12), (epoch, lr)
            if epoch > 1:  # and the epoch before is the previous stage's rate
                assert staged_lr(1e-3, epoch - 1) == pytest.approx(lr * 10 ** (1 / 7), rel=1e-12)
        optimizer.step()  # an epoch's steps (no gradients here: nothing moves)
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4, rel=1e-12)  # the last stays


@pytest.mark.mnist
def test_the_schedule_continues_exactly_after_a_resume(mnist_dir, tmp_path):
    def config(out, epochs):
        return TrainConfig(
            data_dir=str(mnist_dir),
            out=str(tmp_path / out),
            epochs=epochs,
            batch_size=50,
            train_subset=100,
            test_subset=50,
            lr=1e-3,
            lr_schedule="staged",
            device="cpu",
        )

    small = VAEConfig(z_dim=2, hidden_dims=(8,))
    quiet = {"progress": False, "write_figures": False, "log": lambda s: None}
    straight = train(small, config("straight", 5), **quiet)
    train(small, config("resumed", 3), **quiet)  # stops inside stage 1 (epochs 2-4)
    resumed = train(None, config("resumed", 5), resume=True, **quiet)
    lrs = [m["lr"] for m in straight]
    assert lrs == pytest.approx([1e-3 * 10 ** (-s / 7) for s in (0, 1, 1, 1, 2)], rel=1e-12)
    assert [m["lr"] for m in resumed] == lrs
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "resumed")
    assert a["scheduler"] == b["scheduler"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


@pytest.mark.mnist
def test_tensorboard_event_file_holds_the_epochs_scalars_and_images(mnist_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    config = TrainConfig(
        data_dir=str(mnist_dir),
        out=str(out),
        epochs=2,
        batch_size=50,
        train_subset=100,
        test_subset=50,
        device="cpu",
        tensorboard=True,
    )
    metrics = train(VAEConfig(z_dim=2, hidden_dims=(8,)), config, progress=False, log=print)
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    for tag in ("train/neg_elbo", "train/recon", "train/kl", "test/neg_elbo", "run/lr"):
        assert tag in tags["scalars"], (tag, tags["scalars"])
        assert [e.step for e in events.Scalars(tag)] == [1, 2]
    logged = [e.value for e in events.Scalars("test/neg_elbo")]
    assert logged == pytest.approx([m["test_neg_elbo"] for m in metrics], rel=1e-6)
    assert {"images/reconstructions", "images/samples"} <= set(tags["images"])
    (image,) = events.Images("images/samples")  # epoch 1 (then every 5th)
    assert image.step == 1 and image.width == 16 * 28 and image.height == 2 * 28
    # metrics.jsonl stays the record: the same numbers.
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["test_neg_elbo"] for r in rows] == [m["test_neg_elbo"] for m in metrics]
    assert math.isfinite(rows[-1]["lr"])


def test_kl_warmup_rises_linearly_to_beta_and_is_never_zero():
    from pyro_vae.training.schedules import kl_weight_at

    assert kl_weight_at(0, beta=2.0, warmup=4) == pytest.approx(0.5)
    assert [kl_weight_at(t, 2.0, 4) for t in range(6)] == pytest.approx([0.5, 1, 1.5, 2, 2, 2])
    assert kl_weight_at(10**6, beta=0.7, warmup=0) == 0.7  # no warm-up: beta throughout
    assert min(kl_weight_at(t, 1.0, 1000) for t in range(2000)) > 0
