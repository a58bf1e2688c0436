"""Stacked stochastic layers (``VAE(latent_dims=(100, 50))``, the IWAE paper's second
architecture): what a user relies on.

- The sites z1, z2, ... lie in the data plate, the model top-down, the guide bottom-up; the
  label reaches every layer; every prior (on the top layer) and every likelihood trains; the KL
  weight scales every layer.
- The objectives equal Pyro's Trace_ELBO, TraceMeanField_ELBO and RenyiELBO(alpha=0) on the
  same draws (loss and gradients) for 2- and 3-layer models in both of Pyro's modes. Pyro's
  TraceMeanField_ELBO warns here and takes the closed form on every layer; the equality is with
  it taking the closed form only on the top layer, where it is that site's term, as ours does.
- The traced step equals Pyro on the same draws; the compiled step trains as the eager one.
- A one-layer VAE keeps its parameters, their order and its checkpoints; a 2-layer run resumes
  exactly; figures, the explorer and active units work per layer.
"""

from __future__ import annotations

import itertools
import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.poutine.messenger import Messenger

from pyro_vae import VAE, TrainConfig, VAEConfig, train
from pyro_vae.data.images import ImageData
from pyro_vae.inference.loglik import evaluate_log_likelihood, log_weights_chunk
from pyro_vae.inference.objectives import ELBO, MeanFieldELBO, make_objective, walk
from pyro_vae.inference.step_graph import split_parameters, trace_step
from pyro_vae.inference.steps import ELBOLoss, build_step
from pyro_vae.models.likelihoods import LIKELIHOODS
from pyro_vae.models.priors import PRIORS
from pyro_vae.runtime.distributed import World
from pyro_vae.training.schedules import make_optimizer

SEED = 13
LAYERS = {2: (5, 3), 3: (6, 4, 3)}
MEANFIELD_WARNING = "Failed to verify mean field restriction"


def stacked(
    layers=LAYERS[2], prior="normal", likelihood="bernoulli", num_classes=0, dtype=torch.float64
) -> VAE:
    pyro.set_rng_seed(1)
    vae = VAE(
        latent_dims=layers,
        hidden_dims=(8,),
        latent_hidden_dims=(7,),
        prior=prior,
        likelihood=likelihood,
        num_classes=num_classes,
        prior_components=2,
    )
    return vae.to(dtype)


def batch(vae: VAE, n: int = 6, dtype=torch.float64):
    g = torch.Generator().manual_seed(4)
    gray = torch.rand(n, 784, generator=g, dtype=dtype)
    lik = vae.likelihood
    x = torch.bernoulli(gray, generator=g) if lik.data_kind == "binary" else lik.prepare(gray)
    return x, (torch.arange(n) % 10 if vae.config.num_classes else None)


def traces(vae: VAE, x, y, num_particles: int = 1):
    model, guide = vae.model, vae.guide
    if num_particles > 1:
        model = pyro.plate("particles", num_particles, dim=-2)(model)
        guide = pyro.plate("particles", num_particles, dim=-2)(guide)
    guide_tr = poutine.trace(guide).get_trace(x, y)
    model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(x, y)
    return model_tr, guide_tr


def latent_order(trace) -> list[str]:
    return [
        n
        for n, s in trace.nodes.items()
        if s["type"] == "sample" and not s["is_observed"] and n not in ("data", "particles")
    ]


# The model and guide.


@pytest.mark.parametrize("num_particles", [1, 3])
def test_sites_lie_in_the_data_plate_top_down_in_the_model_bottom_up_in_the_guide(
    pyro_mode, num_particles
):
    vae = stacked(LAYERS[3])
    vae.kl_weight = 0.5
    x, _ = batch(vae)
    model_tr, guide_tr = traces(vae, x, None, num_particles)
    assert latent_order(model_tr) == ["z3", "z2", "z1"] and vae.sites == ["z1", "z2", "z3"]
    assert latent_order(guide_tr) == ["z1", "z2", "z3"]
    lead = (num_particles, 6) if num_particles > 1 else (6,)
    for tr in (model_tr, guide_tr):
        for name, size in zip(["z1", "z2", "z3"], LAYERS[3], strict=True):
            site = tr.nodes[name]
            assert site["value"].shape == (*lead, size) and site["fn"].event_shape == (size,)
            frames = {f.name: f for f in site["cond_indep_stack"]}
            assert frames["data"].dim == -1 and frames["data"].size == 6
            assert float(site["scale"]) == 0.5  # the KL weight on every layer, both sides
    assert model_tr.nodes["x"]["scale"] == 1.0 and model_tr.nodes["x"]["is_observed"]
    # The guide's z2 is drawn given its own z1: the same z1 gives the same loc.
    z1 = guide_tr.nodes["z1"]["value"]
    loc, _ = vae.guide.layers[0](z1)
    torch.testing.assert_close(guide_tr.nodes["z2"]["fn"].mean, loc)


def test_the_label_reaches_every_layer():
    vae = stacked(num_classes=10)
    nets = [vae.guide.encoder, *vae.guide.layers, *vae.model.layers, vae.model.decoder]
    assert [net.net[0].in_features for net in nets] == [784 + 10, 5 + 10, 3 + 10, 5 + 10]
    x, _ = batch(vae, n=2)
    a, b = torch.tensor([0, 0]), torch.tensor([7, 7])
    with torch.no_grad():
        means_a, means_b = vae.encode_layers(x, a), vae.encode_layers(x, b)
        z = torch.zeros(2, 3, dtype=torch.float64)
        down_a, down_b = (
            vae.model.layers[0](z, vae._onehot(a, 2)),
            vae.model.layers[0](z, vae._onehot(b, 2)),
        )
    for (la, _), (lb, _) in zip(means_a, means_b, strict=True):
        assert not torch.allclose(la, lb)  # q(z1 | x, y) and q(z2 | z1, y) both read y
    assert not torch.allclose(down_a[0], down_b[0])  # so does p(z1 | z2, y)


REGISTRY = [
    (prior, likelihood, classes)
    for prior, likelihood, classes in itertools.product(
        sorted(PRIORS), sorted(LIKELIHOODS), (0, 10)
    )
    if classes or prior != "conditional"
]


@pytest.mark.parametrize("prior,likelihood,num_classes", REGISTRY)
def test_every_prior_on_top_and_every_likelihood_gives_a_gradient_to_every_parameter(
    prior, likelihood, num_classes
):
    vae = stacked(prior=prior, likelihood=likelihood, num_classes=num_classes)
    x, y = batch(vae)
    loss = Trace_ELBO(max_plate_nesting=1).differentiable_loss(vae.model, vae.guide, x, y)
    params = list(vae.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    assert torch.isfinite(loss)
    missing = [n for (n, _), g in zip(vae.named_parameters(), grads, strict=True) if g is None]
    assert not missing
    assert any("model.layers" in n for n, _ in vae.named_parameters())


# The objectives against Pyro's on the same draws.


class _NoClosedForm(dist.TorchDistribution):
    """A guide site's distribution with no KL registered: Pyro's TraceMeanField_ELBO then takes
    log q - log p at the draw for it (its own fallback), as ours does below the top layer."""

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(self, base) -> None:
        self.base = base
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def support(self):
        return self.base.support

    def expand(self, batch_shape, _instance=None):
        return _NoClosedForm(self.base.expand(batch_shape))

    def rsample(self, sample_shape=()):
        return self.base.rsample(torch.Size(sample_shape))

    def log_prob(self, value):
        return self.base.log_prob(value)


class _OpenSites(Messenger):
    def __init__(self, names) -> None:
        super().__init__()
        self.names = set(names)

    def _pyro_sample(self, msg) -> None:
        if msg["name"] in self.names:
            msg["fn"] = _NoClosedForm(msg["fn"])


def pyro_loss_and_grads(objective, vae: VAE, x, y) -> tuple[float, list]:
    """Pyro's own loss and gradients of the objective's equivalent. For the mean-field one,
    the layers below the top keep the Monte Carlo term (``_OpenSites``), and Pyro warns that
    the bottom-up guide breaks its mean-field check."""
    pyro_elbo = objective.pyro_equivalent()
    guide = vae.guide
    if isinstance(objective, MeanFieldELBO):
        guide = _OpenSites(vae.sites[:-1])(vae.guide)
        with pytest.warns(UserWarning, match=MEANFIELD_WARNING):
            loss = pyro_elbo.loss_and_grads(vae.model, guide, x, y)
    else:
        loss = pyro_elbo.loss_and_grads(vae.model, guide, x, y)
    return loss, [p.grad.clone() for p in vae.parameters()]


CASES = [(LAYERS[2], "normal", 0), (LAYERS[3], "normal", 0), (LAYERS[2], "vamp", 0)]
CASES += [(LAYERS[3], "conditional", 10)]


@pytest.mark.parametrize("name", ["trace", "meanfield", "iwae"])
@pytest.mark.parametrize("layers,prior,num_classes", CASES, ids=str)
def test_every_objective_equals_pyros_on_the_same_draws(
    name, layers, prior, num_classes, pyro_mode
):
    vae = stacked(layers, prior=prior, num_classes=num_classes)
    x, y = batch(vae)
    objective = make_objective(name, num_particles=3)
    torch.manual_seed(SEED)
    expected, expected_grads = pyro_loss_and_grads(objective, vae, x, y)
    torch.manual_seed(SEED)
    terms = objective.terms(vae.model, vae.guide, x, y)
    grads = torch.autograd.grad(terms.loss, list(vae.parameters()))
    assert terms.loss.item() == pytest.approx(expected, rel=1e-10)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-7, atol=1e-9)
    top, below = vae.sites[-1], vae.sites[:-1]
    if name == "meanfield":
        closed = "analytic" if prior == "normal" or prior == "conditional" else "monte-carlo"
        assert terms.estimators == {top: closed, **dict.fromkeys(below[::-1], "monte-carlo")}
    else:
        assert set(terms.estimators.values()) == {"monte-carlo"}


def test_negative_control_pyros_closed_form_on_every_layer_is_another_number():
    """Without _OpenSites Pyro takes the closed form on z1 too: not our loss on those draws
    (the equality above holds to 1e-10; this differs by far more)."""
    vae = stacked()
    x, _ = batch(vae)
    torch.manual_seed(SEED)
    with pytest.warns(UserWarning, match=MEANFIELD_WARNING):
        everywhere = MeanFieldELBO(3).pyro_equivalent().loss(vae.model, vae.guide, x)
    torch.manual_seed(SEED)
    ours = MeanFieldELBO(3).terms(vae.model, vae.guide, x).loss.item()
    assert abs(everywhere - ours) > 1e-6 * abs(ours)


def test_the_kl_weight_scales_every_layer_of_the_bound():
    vae = stacked(LAYERS[3])
    x, _ = batch(vae)
    torch.manual_seed(SEED)
    plain = ELBO().terms(vae.model, vae.guide, x)
    vae.kl_weight = 0.25
    torch.manual_seed(SEED)
    weighted = ELBO().terms(vae.model, vae.guide, x)
    expected = -(plain.log_lik - 0.25 * plain.kl).sum()
    torch.testing.assert_close(weighted.loss, expected, rtol=1e-10, atol=1e-8)
    torch.testing.assert_close(weighted.kl, plain.kl)  # the reported KL stays unweighted
    torch.manual_seed(SEED)
    pyro_value = Trace_ELBO(max_plate_nesting=1).loss(vae.model, vae.guide, x)
    assert weighted.loss.item() == pytest.approx(pyro_value, rel=1e-10)


@pytest.mark.parametrize("pyro_local", [False, True])
def test_the_nll_of_stacked_latents_comes_from_the_same_walk(pyro_local):
    """L_1 from the NLL's log-weights is the ELBO on the same draws, and the replayed chunks
    give the eager NLL on the same seed."""
    pyro.settings.set(module_local_params=pyro_local)
    vae = stacked(LAYERS[3], prior="conditional", num_classes=10)
    x, y = batch(vae)
    torch.manual_seed(SEED)
    log_w = log_weights_chunk(vae.model, vae.guide, x, y, num_samples=4)
    torch.manual_seed(SEED)
    t = ELBO(4).terms(vae.model, vae.guide, x, y)
    torch.testing.assert_close(log_w.mean(0), t.log_lik - t.kl, rtol=1e-10, atol=1e-8)
    results = {}
    for step in ("eager", "fx"):
        torch.manual_seed(3)
        r = evaluate_log_likelihood(vae, [(x, y)], num_samples=20, chunk_size=8, step=step)
        results[step] = r["neg_log_likelihood"]
    assert math.isfinite(results["eager"])
    assert results["fx"] == pytest.approx(results["eager"], rel=1e-6)


def test_compare_elbo_names_each_sites_estimator_and_counts_every_generative_network():
    from pyro_vae.evaluation.compare import compare_estimators, format_table

    pyro.settings.set(module_local_params=True)  # as the command line runs it
    vae = stacked(dtype=torch.float32)
    x, _ = batch(vae, n=8, dtype=torch.float32)
    y = torch.zeros(8, dtype=torch.long)
    torch.manual_seed(SEED)
    result = compare_estimators(
        vae, x, y, repeats=2, grad_batch=4, grad_repeats=2, particles=(1,), ks=(1, 2), iw_subset=4
    )
    mf = result["estimators"]["TraceMeanField_ELBO"]
    assert mf["kl_kind"] == "z2 analytic, z1 monte-carlo"
    assert mf["kl_estimators"] == {"z2": "analytic", "z1": "monte-carlo"}
    assert result["estimators"]["Trace_ELBO"]["kl_kind"] == "monte-carlo"
    assert "z2 analytic, z1 monte-carlo" in format_table(result)
    # The decoder's gradient group holds p(z1 | z2)'s network beside the decoder's: with the
    # decoder frozen the group still has a gradient (an empty group would give 0).
    from pyro_vae.evaluation.compare import gradient_variance

    vae.model.decoder.requires_grad_(False)
    dec = gradient_variance(vae, x[:4], y[:4], "trace", 1, 2)["decoder"]
    assert dec["grad_norm"] > 0 and dec["trace_cov"] > 0


# The mean-field objective's expectation, against the Monte Carlo one.


def per_draw_bounds(vae: VAE, x, analytic_kl: bool, draws: int) -> torch.Tensor:
    """The batch's bound at each of ``draws`` independent draws of the guide: [draws]."""
    with torch.no_grad():
        t = walk(vae.model, vae.guide, x, num_particles=draws, analytic_kl=analytic_kl)
    return (t.log_lik - t.kl).sum(-1)


def test_meanfield_has_the_monte_carlo_expectation_on_a_two_layer_vae():
    vae = stacked()
    x, _ = batch(vae)
    torch.manual_seed(SEED)
    mc, mf = per_draw_bounds(vae, x, False, 4000), per_draw_bounds(vae, x, True, 4000)
    se = (mc.var() / len(mc) + mf.var() / len(mf)).sqrt()
    assert (mc.mean() - mf.mean()).abs() < 4 * se
    assert mf.var() < mc.var()  # the closed form on top still cuts the variance


# The traced steps.


@pytest.mark.parametrize("name,num_classes", [("trace", 0), ("meanfield", 10), ("iwae", 0)])
def test_the_traced_graph_equals_pyro_on_the_same_draws(name, num_classes, pyro_mode):
    vae = stacked(prior="learned-normal", num_classes=num_classes)
    x, y = batch(vae, n=5)
    objective = make_objective(name, num_particles=2)
    loss = ELBOLoss(vae, objective)
    torch.manual_seed(SEED)
    expected, expected_grads = pyro_loss_and_grads(objective, vae, x, y)
    gm = trace_step(loss, x, y)
    trainable, constant = split_parameters(loss)
    torch.manual_seed(SEED)
    with torch.no_grad():
        metrics, bad, *grads = gm(trainable, constant, x, *([y] if y is not None else []))
    assert metrics[0].item() == pytest.approx(expected, rel=1e-10) and not bad
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-7, atol=1e-9)


def test_the_compiled_step_trains_as_the_eager_step():
    """Inductor drawing as eager torch does (fallback_random): 3 steps of the 2-layer model,
    compiled and eager, give the same losses and weights. The one compile of this file."""
    import torch._inductor.config as inductor_config

    results = {}
    for kind in ("eager", "compiled"):
        vae = stacked(dtype=torch.float32)
        config = TrainConfig(lr=1e-2)
        step = build_step(vae, make_optimizer(vae, config), config.objective(), kind, World())
        x, _ = batch(vae, n=16, dtype=torch.float32)
        with inductor_config.patch(fallback_random=True):
            if kind == "compiled":
                with torch.random.fork_rng():
                    step._build(x, None)
            torch.manual_seed(SEED)
            values = torch.stack([step(x, None)[0] for _ in range(3)])
        assert step.kind == kind
        results[kind] = (values, vae.state_dict())
    (a, sa), (b, sb) = results["eager"], results["compiled"]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("num_classes", [0, 10])
def test_the_cuda_graph_step_trains_as_the_replayed_graph(num_classes):
    results = []
    for kind in ("fx", "cudagraph"):
        vae = stacked(LAYERS[3], num_classes=num_classes, dtype=torch.float32).cuda()
        config = TrainConfig(lr=1e-2)
        optimizer = make_optimizer(vae, config, capturable=kind == "cudagraph")
        step = build_step(vae, optimizer, config.objective(), kind, World())
        x, y = batch(vae, n=16, dtype=torch.float32)
        x, y = x.cuda(), None if y is None else y.cuda()
        step(x, y)
        torch.cuda.manual_seed(SEED)
        results.append((torch.stack([step(x, y)[0].clone() for _ in range(5)]), vae))
    (la, va), (lb, vb) = results
    assert torch.isfinite(lb).all()
    torch.testing.assert_close(la, lb, rtol=1e-4, atol=1e-3)
    for k in va.state_dict():
        torch.testing.assert_close(va.state_dict()[k], vb.state_dict()[k], rtol=1e-4, atol=1e-5)


# Configs, checkpoints and resume.


def test_latent_dims_sets_z_dim_and_a_mismatch_is_one_line():
    assert VAEConfig(latent_dims=(100, 20)).z_dim == 20
    assert VAEConfig(latent_dims=(20,)) == VAEConfig(z_dim=20)  # one layer, one record
    assert VAEConfig().layers == (50,) and not VAEConfig().stacked
    with pytest.raises(ValueError, match="z_dim 3 is not the top layer of latent_dims 6,2"):
        VAEConfig(z_dim=3, latent_dims=(6, 2))
    with pytest.raises(ValueError, match="latent_dims must be positive sizes"):
        VAE(latent_dims=(6, 0))


def test_a_one_layer_vae_keeps_its_parameters_their_order_and_old_checkpoints():
    """The IWAE paper's runs (written before stacked latents) load, and their optimizer state,
    which is positional, fits the parameters in order."""
    from pathlib import Path

    from pyro_vae import load_vae
    from pyro_vae.training.schedules import load_optimizer_state

    run = Path(__file__).resolve().parents[1] / "results" / "iwae-paper" / "vae-k1"
    vae, ckpt = load_vae(run)
    assert "latent_dims" not in ckpt["vae_config"] and vae.config.latent_dims == ()
    assert list(vae.state_dict()) == list(ckpt["model"])
    optimizer = make_optimizer(vae, TrainConfig())
    load_optimizer_state(optimizer, ckpt["optimizer"])
    state = optimizer.state_dict()["state"]
    for i, p in enumerate(vae.parameters()):
        assert state[i]["exp_avg"].shape == p.shape
    names = [n for n, _ in VAE(hidden_dims=(8,)).named_parameters()]
    assert names == [
        f"{net}.net.{i}.{w}"
        for net in ("guide.encoder", "model.decoder")
        for i in (0, 2)
        for w in ("weight", "bias")
    ]


def test_a_checkpoint_of_two_layers_does_not_load_into_one(tmp_path):
    from pyro_vae.runs.checkpoint import CheckpointError
    from pyro_vae.runs.records import check_fits

    with pytest.raises(CheckpointError, match=r"latent_dims \(\) \(run: \(5, 3\)\)"):
        check_fits(VAE(z_dim=3), stacked().config)


@pytest.fixture(scope="module")
def tensor_data(tmp_path_factory):
    from synthetic import write_tensor_file

    path = tmp_path_factory.mktemp("stacked") / "t.pt"
    return write_tensor_file(path, n=60, shape=(8, 8), num_classes=3)


def _config(tensor_data, out, epochs, **extra) -> TrainConfig:
    return TrainConfig(
        dataset=f"tensor:{tensor_data}", out=str(out), epochs=epochs, batch_size=16,
        device="cpu", seed=2, **extra,
    )  # fmt: skip


QUIET = {"progress": False, "write_figures": False, "log": lambda line: None}


@pytest.mark.parametrize("step", ["eager", "fx"])
def test_a_two_layer_run_resumes_exactly(tensor_data, tmp_path, step):
    vae_config = VAEConfig(x_dim=64, latent_dims=(6, 2), hidden_dims=(8,), latent_hidden_dims=(5,))
    elbo = {"elbo": "meanfield", "step": step}
    straight = train(vae_config, _config(tensor_data, tmp_path / "a", 2, **elbo), **QUIET)
    train(vae_config, _config(tensor_data, tmp_path / "b", 1, **elbo), **QUIET)
    resumed = train(None, _config(tensor_data, tmp_path / "b", 2, **elbo), resume=True, **QUIET)
    from pyro_vae.runs.checkpoint import load_checkpoint

    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert any(k.startswith("model.layers.0") for k in a["model"])
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    drop = {"seconds", "eval_seconds", "trace_seconds"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed] == [
        {k: v for k, v in r.items() if k not in drop} for r in straight
    ]
    assert straight[-1]["kl_kind"] == "z2 analytic, z1 monte-carlo"
    assert straight[-1]["kl_estimators"] == {"z2": "analytic", "z1": "monte-carlo"}
    assert straight[-1]["step"] == step


# Figures, the explorer, active units.


def _image_data(vae: VAE, n: int = 40) -> ImageData:
    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((n, 784), 0.3), generator=g)
    return ImageData(
        train_x=(x * 255).to(torch.uint8),
        train_y=torch.arange(n) % 10,
        test_x=x,
        test_y=torch.arange(n) % 10,
        data_mode="threshold",
        likelihood=vae.likelihood,
    )


@pytest.mark.parametrize("num_classes", [0, 10])
def test_figures_show_the_top_layer(num_classes):
    from pyro_vae.figures.run_figures import figure_names, make_figures

    vae = stacked((6, 2), num_classes=num_classes, prior="learned-normal", dtype=torch.float32)
    data = _image_data(vae)
    figs = make_figures(vae, data, [], grid_size=3)
    assert set(figs) == set(figure_names(vae.config)) - {"training_curves.png"}
    assert "latent_scatter.png" in figs  # top layer z2 of size 2: scatter and manifold
    assert ("class_manifolds.png" if num_classes else "manifold.png") in figs
    title = figs["latent_scatter.png"].axes[0].get_title()
    assert "q(z2 | x" in title
    y = torch.arange(4) % 10 if num_classes else None
    x = data.test_x[:4]
    assert vae.sample(4, y=y if num_classes else None).shape == (4, 784)
    assert vae.reconstruct(x, y).shape == vae.decode(vae.encode(x, y)[0], y).shape == (4, 784)


def test_the_explorer_moves_through_the_top_layer():
    from pyro_vae.app.explorer import Explorer

    vae = stacked((6, 2), dtype=torch.float32)
    data = _image_data(vae)
    explorer = Explorer(vae, data.test_x, data.test_y)
    assert explorer.z_dim == 2 and explorer.means.shape == (40, 2)
    assert explorer.decode([0.5, -0.5]).shape == (784,)
    coords, residual = explorer.sample_prior()
    assert len(coords) == 2 and residual.shape == (2,)
    assert explorer.interpolate(0, 1, 0.5).shape == (784,)
    score = explorer.score_drawing(data.test_x[0], num_samples=20)
    assert math.isfinite(score.log_likelihood) and score.z.shape == (2,)
    assert score.log_likelihood >= -score.neg_elbo - 1e-6  # L_K >= the ELBO of the same draws


def test_active_units_are_counted_per_layer():
    from pyro_vae.evaluation.active_units import active_units, describe_active_units

    vae = stacked((6, 3), dtype=torch.float32)
    with torch.no_grad():
        vae.guide.encoder.net[-1].weight.normal_(0, 3.0)  # z1's means spread over the data
        vae.guide.layers[0].net[-1].weight.zero_()  # z2's the same for every image: collapsed
    x = torch.bernoulli(torch.full((300, 784), 0.3), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    result = active_units(vae, [(x, torch.zeros(300, dtype=torch.long))])
    layers = {u["site"]: u for u in result["layers"]}
    assert (layers["z1"]["active"], layers["z1"]["num_units"]) == (6, 6)
    assert (layers["z2"]["active"], layers["z2"]["num_units"]) == (0, 3)
    assert result["active"] == 6 and result["num_units"] == 9
    line = describe_active_units(result)
    assert line.startswith("active units: z1 6 of 6, z2 0 of 3 (")


# The command line and the preset.


def test_the_preset_is_the_authors_two_layer_network(tensor_data, capsys):
    from pyro_vae.cli.main import build_parser
    from pyro_vae.cli.train import configs_from_args

    parser = build_parser()

    def configs(*argv):
        args = parser.parse_args(["train", "--dataset", f"tensor:{tensor_data}", *argv])
        args.typed = {a.lstrip("-").replace("-", "_") for a in argv if a.startswith("--")}
        return configs_from_args(args)

    vae, train_config, record = configs("--preset", "iwae-paper-2layer")
    assert (vae.latent_dims, vae.z_dim, vae.latent_hidden_dims) == ((100, 50), 50, (100, 100))
    assert (vae.hidden_dims, vae.activation, vae.prior) == ((200, 200), "tanh", "normal")
    assert train_config.epochs == 3280 and train_config.batch_size == 20
    assert record["name"] == "iwae-paper-2layer"
    # The top layer typed: z_dim follows it (the one-layer preset's z_dim 50 does not win).
    vae, _, _ = configs("--preset", "iwae-paper", "--latent-dims", "100,20")
    assert (vae.latent_dims, vae.z_dim) == ((100, 20), 20)


def test_the_command_line_trains_and_evaluates_two_layers(tensor_data, tmp_path, capsys):
    import json

    from conftest import assert_one_line_error

    from pyro_vae.cli.main import main

    run = tmp_path / "run"
    argv = ["train", "--dataset", f"tensor:{tensor_data}", "--out", str(run), "--device", "cpu"]
    argv += ["--latent-dims", "6,2", "--latent-hidden-dims", "5", "--hidden-dims", "8"]
    argv += ["--epochs", "1", "--batch-size", "16", "--no-progress", "--elbo", "meanfield"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "KL z2 analytic, z1 monte-carlo" in out
    assert (run / "figures" / "manifold.png").is_file()
    assert main(["evaluate", str(run), "--device", "cpu", "--num-samples", "10"]) == 0
    out = capsys.readouterr().out
    report = json.loads((run / "eval.json").read_text())
    rows = {r["estimator"]: r for r in report["elbo"]}
    assert rows["TraceMeanField_ELBO"]["estimators"] == {"z2": "analytic", "z1": "monte-carlo"}
    assert "z2 analytic, z1 monte-carlo" in out
    au = report["active_units"]
    assert [u["site"] for u in au["layers"]] == ["z1", "z2"]
    counts = ", ".join(f"{u['site']} {u['active']} of {u['num_units']}" for u in au["layers"])
    assert f"active units: {counts} (" in out
    assert math.isfinite(report["log_likelihood"]["neg_log_likelihood"])
    # Layer sizes that do not fit: one line, before anything is made.
    bad = ["train", "--dataset", f"tensor:{tensor_data}", "--out", str(tmp_path / "bad")]
    code = main([*bad, "--z-dim", "3", "--latent-dims", "6,2"])
    assert_one_line_error(code, capsys.readouterr().err, "z_dim 3 is not the top layer")
    code = main([*bad, "--latent-dims", "6,0"])
    assert_one_line_error(code, capsys.readouterr().err, "--latent-dims: expected positive sizes")
    assert not (tmp_path / "bad").exists()


def test_the_benchmarks_hand_written_two_layer_vae_is_this_model():
    """benchmarks/throughput.py times the compiled 2-layer step against
    reference_vae.ReferenceStackedVAE: with the same weights and seed, the same loss."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from reference_vae import ReferenceStackedVAE

    torch.manual_seed(0)
    kw = dict(hidden_dims=(20, 20), latent_hidden_dims=(8, 8), activation="tanh")
    vae = VAE(latent_dims=(10, 5), **kw).double()
    ref = ReferenceStackedVAE(
        latent_dims=(10, 5), hidden=(20, 20), latent_hidden=(8, 8), activation="tanh"
    ).double()
    nets = [
        (ref.encoder, vae.guide.encoder.net),
        (ref.up[0], vae.guide.layers[0].net),
        (ref.down[0], vae.model.layers[0].net),
        (ref.decoder, vae.model.decoder.net),
    ]
    with torch.no_grad():
        for mine, theirs in nets:
            for a, b in zip(mine.parameters(), theirs.parameters(), strict=True):
                a.copy_(b)
    x = torch.bernoulli(torch.rand(7, 784, dtype=torch.float64))
    torch.manual_seed(3)
    expected = ELBO().terms(vae.model, vae.guide, x).loss
    torch.manual_seed(3)
    assert ref.loss(x).item() == pytest.approx(expected.item(), rel=1e-12)
