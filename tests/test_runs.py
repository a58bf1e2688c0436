"""Runs of the user's own objects: the library trainer takes a built VAE with any prior and
likelihood; the run reloads into a VAE rebuilt with the same objects, resumes exactly, and
evaluates and draws its figures like a run of registry names. In both of Pyro's modes."""

from __future__ import annotations

import json

import pyro.distributions as dist
import pytest
import torch

from pyro_vae import VAE, TrainConfig, VAEConfig, load_vae, train
from pyro_vae.cli.main import main
from pyro_vae.evaluation.elbo import evaluate_elbo
from pyro_vae.figures.run_figures import figure_names, plot_run
from pyro_vae.inference.loglik import evaluate_log_likelihood
from pyro_vae.runs.checkpoint import CheckpointError, load_checkpoint
from pyro_vae.runs.records import load_run

pytestmark = pytest.mark.mnist
Z = 3
QUIET = {"progress": False, "log": lambda s: None}


def student_t() -> dist.Distribution:
    return dist.StudentT(4.0, torch.zeros(Z), torch.ones(Z)).to_event(1)


def flat_bernoulli(out: torch.Tensor) -> dist.Distribution:
    """A likelihood written by the user: a plain callable."""
    return dist.Bernoulli(logits=out).to_event(1)


def custom_vae() -> VAE:
    return VAE(z_dim=Z, hidden_dims=(32,), prior=student_t(), likelihood=flat_bernoulli)


def config(mnist_dir, out, epochs: int) -> TrainConfig:
    return TrainConfig(
        data_dir=str(mnist_dir),
        out=str(out),
        epochs=epochs,
        batch_size=64,
        data_mode="dynamic",  # a callable likelihood says nothing of its data: say it here
        train_subset=300,
        test_subset=100,
        device="cpu",
        seed=5,
    )


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_custom_objects_train_resume_load_evaluate_and_plot(pyro_mode, mnist_dir, tmp_path):
    torch.manual_seed(0)
    straight = custom_vae()
    init = {k: v.clone() for k, v in straight.state_dict().items()}
    metrics = train(straight, config(mnist_dir, tmp_path / "straight", 2), **QUIET)
    assert len(metrics) == 2 and metrics[-1]["test_neg_elbo"] < metrics[0]["test_neg_elbo"]

    # The same start, stopped after one epoch and resumed by a VAE rebuilt from the objects.
    first = custom_vae()
    first.load_state_dict(init)
    train(first, config(mnist_dir, tmp_path / "resumed", 1), write_figures=False, **QUIET)
    rebuilt = custom_vae()
    resumed = train(rebuilt, config(mnist_dir, tmp_path / "resumed", 2), resume=True, **QUIET)
    assert states_equal(rebuilt.state_dict(), straight.state_dict())
    drop = {"seconds", "eval_seconds"}
    assert [{k: v for k, v in m.items() if k not in drop} for m in resumed] == [
        {k: v for k, v in m.items() if k not in drop} for m in metrics
    ]

    run = tmp_path / "straight"
    ckpt = load_checkpoint(run)
    assert ckpt["vae_config"]["prior"] == ckpt["vae_config"]["likelihood"] == "custom"
    assert "StudentT" in ckpt["objects"]["prior"]
    assert ckpt["objects"]["likelihood"] == "flat_bernoulli"
    assert json.loads((run / "config.json").read_text())["objects"] == ckpt["objects"]

    loaded, _ = load_vae(run, vae=custom_vae())
    assert states_equal(loaded.state_dict(), straight.state_dict())
    vae, _, data = load_run(run, mnist_dir, vae=custom_vae())
    torch.manual_seed(0)
    elbo = evaluate_elbo(vae, data.test_batches(50))
    nll = evaluate_log_likelihood(vae, data.test_batches(50), num_samples=20)
    assert nll["num_images"] == elbo["num_images"] == 100
    # L_20 >= ELBO up to Monte Carlo noise (a few nats at most here).
    assert nll["neg_log_likelihood"] < elbo["neg_elbo"] + 2.0
    written = plot_run(run, mnist_dir, device="cpu", vae=custom_vae())
    assert sorted(p.name for p in written) == sorted(figure_names(vae.config))


def test_a_custom_run_without_its_objects_says_how_to_load_it(mnist_dir, tmp_path):
    run = tmp_path / "run"
    train(custom_vae(), config(mnist_dir, run, 1), write_figures=False, **QUIET)
    with pytest.raises(CheckpointError, match=r"StudentT.*load_vae\(run_dir, vae="):
        load_vae(run)
    with pytest.raises(CheckpointError, match="z_dim 4 \\(run: 3\\)"):
        load_vae(
            run, vae=VAE(z_dim=4, hidden_dims=(32,), prior=student_t(), likelihood="bernoulli")
        )
    # The command line cannot rebuild user objects: one line pointing at the Python route.
    for command in (["evaluate", str(run)], ["plot", str(run)], ["sample", str(run)]):
        assert main([*command, "--device", "cpu"]) == 2


def test_weights_that_do_not_fit_are_one_line(mnist_dir, tmp_path):
    class LearnedScale(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.log_scale = torch.nn.Parameter(torch.zeros(Z))

        def forward(self, y=None):
            return dist.Normal(torch.zeros(Z), self.log_scale.exp()).to_event(1)

    run = tmp_path / "run"
    vae = VAE(z_dim=Z, hidden_dims=(32,), prior=LearnedScale())
    train(vae, config(mnist_dir, run, 1), write_figures=False, **QUIET)
    # Rebuilt with a fixed prior instead: the learned scale has nowhere to go.
    other = VAE(z_dim=Z, hidden_dims=(32,), prior=student_t())
    with pytest.raises(CheckpointError, match="unexpected model.prior.log_scale") as e:
        load_vae(run, vae=other)
    assert "\n" not in str(e.value)
    loaded, _ = load_vae(run, vae=VAE(z_dim=Z, hidden_dims=(32,), prior=LearnedScale()))
    assert torch.equal(loaded.model.prior.log_scale, vae.model.prior.log_scale)


def test_resume_refuses_settings_that_differ_and_keeps_the_run(mnist_dir, tmp_path):
    run = tmp_path / "run"
    small = VAEConfig(z_dim=Z, hidden_dims=(32,))
    train(small, config(mnist_dir, run, 1), write_figures=False, **QUIET)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    changed = config(mnist_dir, run, 2)
    changed.lr = 0.01
    with pytest.raises(ValueError, match=r"--lr 0.01 \(TrainConfig.lr; the run has 0.001\)"):
        train(None, changed, resume=True, **QUIET)
    with pytest.raises(ValueError, match="VAEConfig passed differs"):
        train(VAEConfig(z_dim=5), config(mnist_dir, run, 2), resume=True, **QUIET)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    # Only the length of the run (and data folder, device) may change: that resumes.
    assert len(train(None, config(mnist_dir, run, 2), resume=True, **QUIET)) == 2
