"""Every VAE owns its parameters, whatever ``pyro.settings`` say.

In Pyro's default mode a PyroModule registers its parameters in the global param store under
their names, and a name already there wins: a second model built with the same names would
silently read, or train, the first one's tensors. Each test below trains model B after model A
in one session and checks that B ends exactly where B trained alone (in a cleared param store)
ends, and that A is left untouched. The negative controls give A and B the same ``name`` and
show the check catches the sharing.
"""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_vae import VAE, TrainConfig, load_vae, train
from pyro_vae.cli.main import main
from pyro_vae.models.priors import PRIORS

NUM_CLASSES = 10


def build(prior: str, name: str | None = None) -> VAE:
    classes = NUM_CLASSES if prior == "conditional" else 0
    return VAE(4, (16,), prior=prior, num_classes=classes, prior_components=3, name=name)


def learnable(prior: str) -> bool:
    return any(True for _ in build(prior).model.prior.parameters())


LEARNABLE = [p for p in sorted(PRIORS) if learnable(p)]


def state(vae: VAE) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in vae.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    patterns = torch.bernoulli(torch.full((4, 784), 0.5), generator=g)
    return patterns.repeat(4, 1), torch.arange(16) % NUM_CLASSES


def svi_train(vae: VAE, steps: int = 15) -> dict[str, torch.Tensor]:
    x, y = batch()
    y = y if vae.config.num_classes else None
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(steps):
        svi.step(x, y)
    return state(vae)


def b_after_a_and_alone(prior: str, fit, names=(None, None)):
    """Trains A, then B (seed 1) in the same session, then B again alone after clearing the
    store; returns A before/after B's training and the two B's."""
    pyro.set_rng_seed(0)
    a = build(prior, names[0])
    a_trained = fit(a)
    pyro.set_rng_seed(1)
    b = build(prior, names[1])
    b_after_a = fit(b)
    a_after_b = state(a)
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    b_alone = fit(build(prior, names[1]))
    return a_trained, a_after_b, b_after_a, b_alone


@pytest.mark.parametrize("prior", LEARNABLE)
def test_classic_svi_two_vaes_in_default_mode_keep_their_own_parameters(prior):
    assert not pyro.settings.get("module_local_params")  # Pyro's default, where users start
    a_trained, a_after_b, b_after_a, b_alone = b_after_a_and_alone(prior, svi_train)
    assert same(b_after_a, b_alone), "B trained after A is not B trained alone"
    assert same(a_trained, a_after_b), "training B changed A"
    assert not same(a_trained, b_after_a)


@pytest.mark.parametrize("prior", ["learned-normal", "mog"])
def test_negative_control_same_name_shares_and_the_check_sees_it(prior):
    # Two VAEs given one name share parameters (Pyro's param-store semantics, on purpose):
    # the comparison above must fail then, or it could not catch the bug it guards against.
    a_trained, a_after_b, b_after_a, b_alone = b_after_a_and_alone(
        prior, svi_train, names=("shared", "shared")
    )
    assert not (same(b_after_a, b_alone) and same(a_trained, a_after_b))


def test_default_names_are_unique_and_prefix_the_param_store():
    a, b = build("learned-normal"), build("learned-normal")
    assert a.name != b.name
    svi_train(a, steps=1)
    svi_train(b, steps=1)
    names = list(pyro.get_param_store().keys())
    for vae in (a, b):
        mine = [n for n in names if n.startswith(vae.name + ".")]
        assert any("prior.scale" in n for n in mine) and any("encoder" in n for n in mine)
    # Classic SVI trains the tensors the modules read: the store holds each VAE's own.
    stored = {id(p.unconstrained()) for p in pyro.get_param_store().values()}
    assert {id(p) for p in a.parameters()} | {id(p) for p in b.parameters()} <= stored
    assert {id(p) for p in a.parameters()}.isdisjoint({id(p) for p in b.parameters()})


@pytest.mark.mnist
@pytest.mark.parametrize("prior", LEARNABLE)
def test_library_trainer_two_vaes_in_default_mode(prior, mnist_dir, tmp_path):
    runs = iter(range(10))

    def fit(vae: VAE) -> dict[str, torch.Tensor]:
        config = TrainConfig(
            data_dir=str(mnist_dir),
            out=str(tmp_path / f"run{next(runs)}"),
            epochs=1,
            batch_size=50,
            lr=0.02,
            train_subset=200,
            test_subset=50,
            device="cpu",
        )
        train(vae, config, progress=False, log=lambda s: None, write_figures=False)
        return state(vae)

    a_trained, a_after_b, b_after_a, b_alone = b_after_a_and_alone(prior, fit)
    assert same(b_after_a, b_alone) and same(a_trained, a_after_b)
    # Both runs load side by side in the same default-mode session, each with its own weights.
    loaded_a, _ = load_vae(tmp_path / "run0")
    loaded_b, _ = load_vae(tmp_path / "run1")
    x, y = batch()
    y = y if loaded_a.config.num_classes else None
    assert same(state(loaded_a), a_trained) and same(state(loaded_b), b_after_a)
    for vae in (loaded_a, loaded_b):  # running them through Pyro swaps nothing in
        svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.0}), Trace_ELBO())
        svi.step(x, y)
    assert same(state(loaded_a), a_trained) and same(state(loaded_b), b_after_a)


@pytest.mark.mnist
def test_cli_leaves_the_session_in_the_mode_it_found(mnist_dir, tmp_path):
    # A user's VAE built in Pyro's default mode before the CLI runs in the same process.
    before = build("learned-normal")
    code = main(
        ["train", "--data-dir", str(mnist_dir), "--out", str(tmp_path / "run"), "--epochs", "1"]
        + ["--train-subset", "100", "--test-subset", "50", "--z-dim", "2", "--hidden-dims", "8"]
        + ["--device", "cpu", "--no-progress"]
    )
    assert code == 0
    assert pyro.settings.get("module_local_params") is False
    svi_train(before, steps=2)  # failed while the CLI left module_local_params switched on
