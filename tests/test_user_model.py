"""Your own Pyro model and guide through the library (``UserModel``): what a user relies on.

- examples/own_model.py (plain functions, a ``pyro.param`` and closures over nn.Modules) is
  equal, through the adapter, to Pyro's Trace_ELBO, TraceMeanField_ELBO and RenyiELBO(alpha=0)
  run on the functions as written, on the same draws (loss and gradients), in both modes.
- The trainer trains it and a model written as PyroModules: the traced step, resume exactly,
  the test -ELBO and -L_K; the NLL, the test ELBO and active units take it; the KL weight scales
  its latents; its parameters are the adapter's, never Pyro's global param store's.
- Bad input is one line at the first step: a global latent, a latent outside the data plate,
  a guide missing a site or drawing one the model lacks, layer sizes that differ, a parameter
  the adapter was not given; what needs a VAE (figures, explorer, the CLI) says so.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import assert_one_line_error
from pyro.nn import PyroModule, PyroParam
from synthetic import write_tensor_file
from torch import nn
from torch.distributions import constraints

from pyro_vae import TrainConfig, UserModel, VAEConfig, evaluate_log_likelihood, train
from pyro_vae.evaluation.active_units import active_units
from pyro_vae.evaluation.elbo import evaluate_elbo
from pyro_vae.inference.objectives import ELBO, make_objective
from pyro_vae.runs.checkpoint import CheckpointError, load_checkpoint

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "own_model.py"
SEED = 21


def example(dtype=torch.float64):
    """A fresh import of examples/own_model.py (its networks built from a fixed seed)."""
    torch.manual_seed(0)
    spec = importlib.util.spec_from_file_location("own_model", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for net in (module.encoder, module.style_net, module.decoder):
        net.to(dtype)
    return module


def adapter(module) -> UserModel:
    nets = {"encoder": module.encoder, "style_net": module.style_net, "decoder": module.decoder}
    return UserModel(module.model, module.guide, modules=nets, name="content-style")


def images(n: int = 6, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.bernoulli(torch.full((n, 784), 0.3, dtype=dtype), generator=g)


@pytest.mark.parametrize("name", ["trace", "meanfield", "iwae"])
def test_the_example_equals_pyros_elbo_on_the_functions_as_written(name, pyro_mode):
    module = example()
    x = images()
    user = adapter(module).setup(x)
    objective = make_objective(name, num_particles=3)
    # Pyro on the plain functions: their pyro.param lives in Pyro's param store (ones, as
    # the adapter's own copy starts).
    torch.manual_seed(SEED)
    expected = objective.pyro_equivalent().loss_and_grads(module.model, module.guide, x)
    store = pyro.get_param_store()
    expected_grads = [p.grad.clone() for p in user.nets.parameters()]
    expected_grads.append(store.get_param("style_scale").unconstrained().grad.clone())
    torch.manual_seed(SEED)
    terms = objective.terms(user.model, user.guide, x, None)
    params = [*user.nets.parameters(), user.params["style_scale"]]
    grads = torch.autograd.grad(terms.loss, params)
    assert terms.loss.item() == pytest.approx(expected, rel=1e-10)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-7, atol=1e-9)
    assert user.sites == ["content", "style"]
    closed = "analytic" if name == "meanfield" else "monte-carlo"
    assert terms.estimators == {"content": closed, "style": closed}


def test_the_adapter_owns_the_parameters_and_serves_pyro_param_statements():
    module = example(torch.float32)
    user = adapter(module).setup(images(dtype=torch.float32))
    assert [n for n, _ in user.named_parameters()][-1] == "params.style_scale"
    assert "params.style_scale" in user.state_dict()
    torch.manual_seed(SEED)
    loss = ELBO().terms(user.model, user.guide, images(dtype=torch.float32), None).loss
    loss.backward()
    assert user.params["style_scale"].grad is not None  # the served copy is what gets a grad
    assert not list(pyro.get_param_store())  # nothing went to the global store


def test_the_kl_weight_scales_every_latent_of_a_user_model():
    user = adapter(example()).setup(images())
    x = images()
    torch.manual_seed(SEED)
    plain = ELBO().terms(user.model, user.guide, x, None)
    user.kl_weight = 0.5
    torch.manual_seed(SEED)
    weighted = ELBO().terms(user.model, user.guide, x, None)
    expected = -(plain.log_lik - 0.5 * plain.kl).sum()
    torch.testing.assert_close(weighted.loss, expected, rtol=1e-10, atol=1e-8)


class Ladder(PyroModule):
    """A user's two-site model as PyroModules: z2 ~ N(0, I), z1 ~ N(W z2, s^2 I) with s a
    learned PyroParam, x ~ Bernoulli(decoder(z1, z2)); the guide has the same shape."""

    def __init__(self, x_dim: int) -> None:
        super().__init__()
        self.up = nn.Linear(2, 4)
        self.scale = PyroParam(torch.ones(4), constraint=constraints.positive)
        self.decoder = nn.Linear(6, x_dim)

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            z1 = pyro.sample("z1", dist.Normal(self.up(z2), self.scale).to_event(1))
            logits = self.decoder(torch.cat([z1, z2], -1))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)


class LadderGuide(PyroModule):
    def __init__(self, x_dim: int) -> None:
        super().__init__()
        self.first = nn.Linear(x_dim, 8)
        self.second = nn.Linear(4, 4)

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            loc, raw = self.first(x).chunk(2, -1)
            z1 = pyro.sample("z1", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))
            loc, raw = self.second(z1).chunk(2, -1)
            pyro.sample("z2", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))


def ladder(x_dim: int = 64) -> UserModel:
    torch.manual_seed(5)
    return UserModel(Ladder(x_dim), LadderGuide(x_dim), name="ladder")


@pytest.fixture(scope="module")
def tensor_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("user") / "t.pt"
    return write_tensor_file(path, n=60, shape=(8, 8), num_classes=3)


def _config(data: Path, out: Path, epochs: int, **extra) -> TrainConfig:
    return TrainConfig(
        dataset=f"tensor:{data}", out=str(out), epochs=epochs, batch_size=16, device="cpu",
        seed=4, **extra,
    )  # fmt: skip


QUIET = {"progress": False, "log": lambda line: None}


# PyroModules in both of Pyro's modes (in the default one a PyroModule would read a stored
# parameter of its name: the adapter's scratch store is what keeps the runs apart); plain
# functions run alike in both (their pyro.param is served by the adapter).
TRAINED = [("pyromodules", False), ("pyromodules", True), ("functions", False)]


@pytest.mark.parametrize("build,module_local", TRAINED, ids=str)
def test_the_trainer_trains_resumes_exactly_and_scores_a_user_model(
    build, module_local, tensor_data, tmp_path
):
    """Two epochs straight against one and a resume from a fresh model, through the traced
    (fx) step, with the test -ELBO and -L_K every epoch."""
    pyro.settings.set(module_local_params=module_local)

    def fresh() -> UserModel:
        if build == "pyromodules":
            return ladder()
        module = example(torch.float32)
        # The example's networks are for 784 pixels; these images have 64: same story, smaller.
        module.encoder[0] = nn.Linear(64, 256)
        module.decoder[-1] = nn.Linear(256, 64)
        return adapter(module)

    extra = {"step": "fx", "test_iw_samples": 5, "elbo": "meanfield"}
    a = fresh()
    start = {k: v.clone() for k, v in a.nets.state_dict().items()} if build == "functions" else {}
    straight = train(a, _config(tensor_data, tmp_path / "a", 2, **extra), **QUIET)
    train(fresh(), _config(tensor_data, tmp_path / "b", 1, **extra), **QUIET)
    resumed = train(fresh(), _config(tensor_data, tmp_path / "b", 2, **extra), resume=True, **QUIET)
    ca, cb = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert ca["model"].keys() == cb["model"].keys() and "vae_config" not in ca
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    drop = {"seconds", "eval_seconds", "trace_seconds"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed] == [
        {k: v for k, v in r.items() if k not in drop} for r in straight
    ]
    last = straight[-1]
    assert last["step"] == "fx" and math.isfinite(last["test_neg_L5"])
    assert last["test_neg_L5"] <= last["test_neg_elbo"] + 1.0
    assert ca["user_model"]["name"] == a.name and ca["user_model"]["sites"] == a.sites
    if build == "functions":
        assert "style_scale" not in pyro.get_param_store()
        assert any(not torch.equal(v, start[k]) for k, v in a.nets.state_dict().items())
        assert not torch.equal(ca["model"]["params.style_scale"], torch.ones(4))  # it trained
    assert not (tmp_path / "a" / "figures").exists()  # figures need a VAE: none written


def test_the_nll_the_test_elbo_and_active_units_take_a_user_model():
    user = ladder(784)
    x = images(40, dtype=torch.float32)
    user.setup(x)
    batches = [(x[:20], None), (x[20:], None)]
    torch.manual_seed(SEED)
    nll = evaluate_log_likelihood(user, batches, num_samples=50)
    elbo = evaluate_elbo(user, batches, "meanfield")
    assert math.isfinite(nll["neg_log_likelihood"]) and nll["num_images"] == 40
    assert nll["neg_log_likelihood"] <= elbo["neg_elbo"] + 3 * nll["std_error"]
    assert elbo["estimators"] == {"z2": "analytic", "z1": "monte-carlo"}  # bottom-up guide
    units = active_units(user, [(x, torch.zeros(40, dtype=torch.long))])
    assert [u["site"] for u in units["layers"]] == ["z1", "z2"]
    assert [u["num_units"] for u in units["layers"]] == [4, 2]


# Bad input: one line at the first step.


def _model_with(kind: str):
    """A small model/guide pair, each broken in one way (``kind``), or sound ("ok")."""
    net = nn.Linear(2, 64)
    enc = nn.Linear(64, 4)

    def model(x):
        if kind == "global":
            pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0], dim=-2 if kind == "outside" else -1):
            size = 3 if kind == "sizes" else 2
            z = pyro.sample("z", dist.Normal(x.new_zeros(size), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=net(z[..., :2])).to_event(1), obs=x)

    def guide(x):
        if kind == "global":
            pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0], dim=-2 if kind == "outside" else -1):
            loc, raw = enc(x).chunk(2, -1)
            if kind != "missing":
                pyro.sample("z", dist.Normal(loc, raw.exp()).to_event(1))
            if kind == "extra":
                pyro.sample("u", dist.Normal(loc, 1.0).to_event(1))

    return model, guide, {"net": net, "enc": enc}


BAD = [
    ("global", "site 'w' lies outside the data plate at dim -1"),
    ("outside", "lies outside the data plate at dim -1"),
    ("missing", "the model's latent site 'z' is not drawn by the guide"),
    ("extra", "the guide's site 'u' is not a latent site of the model"),
    ("sizes", "the guide draws 'z' with event shape (2,) but the model's 'z' has (3,)"),
]


@pytest.mark.parametrize("kind,message", BAD, ids=[b[0] for b in BAD])
def test_a_broken_model_is_one_line_at_the_first_step(kind, message, tensor_data, tmp_path):
    model, guide, nets = _model_with(kind)
    user = UserModel(model, guide, modules=nets, name=kind)
    with pytest.raises(ValueError) as e:
        train(user, _config(tensor_data, tmp_path / "run", 1), **QUIET)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    # Negative control: the sound pair trains.
    model, guide, nets = _model_with("ok")
    train(UserModel(model, guide, modules=nets), _config(tensor_data, tmp_path / "ok", 1), **QUIET)


def test_a_parameter_the_adapter_was_not_given_is_refused_by_setup():
    model, guide, nets = _model_with("ok")
    x = images(4, dtype=torch.float32)[:, :64]
    with pytest.raises(ValueError, match=r"tensor of shape \(64, 2\) that requires grad"):
        UserModel(model, guide, modules={"enc": nets["enc"]}).setup(x)
    decoder = nn.Linear(2, 64)

    def registered(x):  # a pyro.module statement of a module the adapter was not given
        pyro.module("decoder", decoder)
        model(x)

    with pytest.raises(ValueError, match=r"modules=\{'decoder': module\}"):
        UserModel(registered, guide, modules=nets).setup(x)
    UserModel(model, guide, modules=nets).setup(x)  # negative control: all of them given


def test_what_needs_a_vae_says_so_in_one_line(tensor_data, tmp_path, capsys):
    from pyro_vae.app.explorer import Explorer
    from pyro_vae.cli.main import main
    from pyro_vae.figures.run_figures import make_figures

    user = ladder()
    run = tmp_path / "run"
    train(user, _config(tensor_data, run, 1), **QUIET)
    x = torch.bernoulli(torch.full((4, 64), 0.5))
    for call in (lambda: make_figures(user, None, []), lambda: Explorer(user, x, x[:, 0].long())):
        with pytest.raises(ValueError, match="need a pyro_vae.VAE") as e:
            call()
        assert "\n" not in str(e.value)
    for argv in (["evaluate", str(run)], ["plot", str(run)], ["train", "--out", str(run)]):
        code = main([*argv, "--resume"] if argv[0] == "train" else argv)
        assert_one_line_error(code, capsys.readouterr().err, "trained your own Pyro model 'ladder'")
    with pytest.raises(CheckpointError, match="rebuild it and pass it"):
        train(None, _config(tensor_data, run, 2), resume=True, **QUIET)
    vae_run = tmp_path / "vae"
    train(VAEConfig(x_dim=64, z_dim=2, hidden_dims=(4,)), _config(tensor_data, vae_run, 1), **QUIET)
    with pytest.raises(CheckpointError, match="trained a VAE, not your model 'ladder'"):
        train(ladder(), _config(tensor_data, vae_run, 2), resume=True, **QUIET)
