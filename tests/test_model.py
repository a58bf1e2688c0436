"""The VAE's model and guide as Pyro programs: site shapes, gradients, both training paths
(classic ``pyro.infer.SVI`` with ``pyro.optim``, and the ELBO as a ``torch.nn.Module`` loss),
and posterior predictive draws with ``pyro.infer.Predictive``. Tests that take the
``pyro_mode`` fixture run in both of Pyro's modes."""

from __future__ import annotations

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import VAE, elbo_terms

Z_DIM = 4
HIDDEN = (16,)
NUM_CLASSES = 10
ELBOS = [Trace_ELBO, TraceMeanField_ELBO]


def small_vae(num_classes: int = 0) -> VAE:
    return VAE(z_dim=Z_DIM, hidden_dims=HIDDEN, num_classes=num_classes)


def labels(num_classes: int, n: int) -> torch.Tensor | None:
    return torch.arange(n) % num_classes if num_classes else None


def traces(vae: VAE, x: torch.Tensor, y: torch.Tensor | None, num_particles: int):
    """Guide trace and model trace replayed on it, with Pyro's own vectorized particle plate."""
    model, guide = vae.model, vae.guide
    if num_particles > 1:
        model = pyro.plate("particles", num_particles, dim=-2)(model)
        guide = pyro.plate("particles", num_particles, dim=-2)(guide)
    guide_tr = poutine.trace(guide).get_trace(x, y)
    model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(x, y)
    guide_tr.compute_log_prob()
    model_tr.compute_log_prob()
    return model_tr, guide_tr


@pytest.mark.parametrize("num_particles", [1, 3])
@pytest.mark.parametrize("num_classes", [0, NUM_CLASSES])
def test_site_shapes(pyro_mode, binary_batch, num_classes, num_particles):
    x = binary_batch
    b = x.shape[0]
    lead = (num_particles, b) if num_particles > 1 else (b,)
    model_tr, guide_tr = traces(small_vae(num_classes), x, labels(num_classes, b), num_particles)

    for tr in (model_tr, guide_tr):
        z = tr.nodes["z"]
        assert z["value"].shape == (*lead, Z_DIM)
        assert z["fn"].batch_shape == lead and z["fn"].event_shape == (Z_DIM,)
        assert z["log_prob"].shape == lead
        frames = {f.name: f for f in z["cond_indep_stack"]}
        assert frames["data"].dim == -1 and frames["data"].size == b
    x_site = model_tr.nodes["x"]
    assert x_site["is_observed"] and torch.equal(x_site["value"], x)
    assert x_site["fn"].batch_shape == lead and x_site["fn"].event_shape == (784,)
    assert x_site["log_prob"].shape == lead
    # The guide proposes z only; the model adds the observation and nothing else.
    samples = {n for n, s in model_tr.nodes.items() if s["type"] == "sample"}
    assert samples - {"data", "particles"} == {"z", "x"}
    assert "x" not in guide_tr.nodes


def test_unobserved_model_draws_images():
    vae = small_vae()
    tr = poutine.trace(vae.model).get_trace(None, None, 5)
    x = tr.nodes["x"]["value"]
    assert x.shape == (5, 784) and ((x == 0) | (x == 1)).all()


def test_guide_scale_is_positive_for_extreme_inputs(binary_batch):
    vae = small_vae()
    with torch.no_grad():
        for p in vae.guide.encoder.parameters():
            p.fill_(-5.0)  # drives the raw scale far below zero
    loc, scale = vae.encode(binary_batch)
    assert loc.shape == scale.shape == (8, Z_DIM)
    assert (scale > 0).all() and torch.isfinite(scale).all()


@pytest.mark.parametrize("num_particles", [1, 4])
@pytest.mark.parametrize("elbo_cls", ELBOS)
@pytest.mark.parametrize("num_classes", [0, NUM_CLASSES])
def test_loss_is_finite_and_every_parameter_gets_a_gradient(
    pyro_mode, binary_batch, elbo_cls, num_particles, num_classes
):
    vae = small_vae(num_classes)
    elbo = elbo_cls(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    loss = elbo(vae.model, vae.guide)(binary_batch, labels(num_classes, 8))
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    for name, p in vae.named_parameters():
        assert p.grad is not None, f"no gradient reaches {name}"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"zero gradient at {name}"


def test_classic_svi_with_pyro_optim_lowers_the_loss(binary_batch):
    # Classic SVI + pyro.optim is Pyro's default mode (with module_local_params Pyro's SVI
    # cannot collect the parameters: that mode is for the ELBO-as-module path below).
    vae = small_vae()
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    evaluate = Trace_ELBO(num_particles=20, vectorize_particles=True, max_plate_nesting=1)
    before = evaluate.loss(vae.model, vae.guide, binary_batch)
    losses = [svi.step(binary_batch) for _ in range(25)]
    after = evaluate.loss(vae.model, vae.guide, binary_batch)
    assert all(isinstance(v, float) for v in losses)
    # Classic SVI finds the networks' weights through Pyro's param store.
    store = {id(p) for _, p in pyro.get_param_store().named_parameters()}
    assert {id(p) for p in vae.parameters()} <= store
    # 8 images x 784 pixels: the Bernoulli(0.3) pixels are learnable far below log 2 per pixel.
    assert after < before - 0.05 * 8 * 784, (before, after)


def test_elbo_module_path_with_torch_optim(pyro_mode, binary_batch):
    vae = small_vae()
    loss_fn = Trace_ELBO(max_plate_nesting=1)(vae.model, vae.guide)
    assert isinstance(loss_fn, torch.nn.Module)
    assert {id(p) for p in loss_fn.parameters()} == {id(p) for p in vae.parameters()}
    optim = torch.optim.Adam(loss_fn.parameters(), lr=1e-2)
    evaluate = Trace_ELBO(num_particles=20, vectorize_particles=True, max_plate_nesting=1)
    with torch.no_grad():
        before = evaluate(vae.model, vae.guide)(binary_batch).item()
    for _ in range(25):
        optim.zero_grad()
        loss_fn(binary_batch).backward()
        optim.step()
    with torch.no_grad():
        after = evaluate(vae.model, vae.guide)(binary_batch).item()
    assert after < before - 0.05 * 8 * 784, (before, after)
    if pyro_mode == "module-local":  # module-local parameters never touch the global store
        assert len(pyro.get_param_store()) == 0


@pytest.mark.parametrize("path", ["svi", "module", "elbo_terms"])
def test_grayscale_into_bernoulli_raises_a_helpful_error(path):
    # The setting must come before the modules are built (as in an entry point).
    pyro.settings.set(module_local_params=path == "module")
    vae = small_vae()
    x = torch.rand(8, 784)  # grayscale intensities, not 0/1
    with pytest.raises(ValueError, match="binarize") as e:
        if path == "svi":
            SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO()).step(x)
        elif path == "module":
            Trace_ELBO()(vae.model, vae.guide)(x)
        else:
            elbo_terms(vae.model, vae.guide, x)
    assert "continuous-bernoulli" in str(e.value)


def test_bad_labels_are_rejected_before_any_network(binary_batch):
    with pytest.raises(ValueError, match="conditional"):
        small_vae(NUM_CLASSES).model(binary_batch)
    with pytest.raises(ValueError, match="unconditional"):
        small_vae().guide(binary_batch, torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        small_vae(NUM_CLASSES).model(binary_batch, torch.full((8,), 10))


@pytest.mark.parametrize("num_classes", [0, NUM_CLASSES])
def test_predictive_draws_reconstructions_of_given_images(pyro_mode, binary_batch, num_classes):
    """Posterior predictive x ~ p(x | z), z ~ q(z | x), the Pyro way: Predictive with the guide.
    Pyro returns an observed site as observed, so the model runs under ``uncondition``."""
    vae = small_vae(num_classes)
    x, y = binary_batch, labels(num_classes, 8)
    num = 4000
    pyro.set_rng_seed(0)
    draws = Predictive(
        poutine.uncondition(vae.model), guide=vae.guide, num_samples=num, parallel=True
    )(x, y)
    assert draws["z"].shape == (num, 8, Z_DIM) and draws["x"].shape == (num, 8, 784)
    assert set(draws["x"].unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(draws["x"][0], x)  # drawn, not the observed images handed back
    # Each draw is a Bernoulli sample at its own z: given the z's, the pixels' mean is the mean
    # of the decoder's probabilities at those z's, within binomial standard errors.
    with torch.no_grad():
        probs = vae.decode(draws["z"], y)  # [num, 8, 784]
    p = probs.mean(0)
    se = (p * (1 - p) / num).sqrt().clamp_min(1e-3)
    assert ((draws["x"].mean(0) - p).abs() / se).max() < 5.5
    # The reconstructions depend on the images: a different batch gives other probabilities.
    with torch.no_grad():
        other = vae.decode(vae.encode(1 - x, y)[0], y)
    assert (other - vae.decode(vae.encode(x, y)[0], y)).abs().max() > 1e-3
    # Without uncondition, Pyro hands the observed images back (what a user first tries).
    kept = Predictive(vae.model, guide=vae.guide, num_samples=2)(x, y)["x"]
    assert torch.equal(kept[0], x)


def test_a_config_passed_as_the_first_option_says_to_use_from_config():
    from pyro_vae import VAEConfig

    config = VAEConfig(z_dim=3, hidden_dims=(8,))
    with pytest.raises(TypeError, match=r"use VAE\.from_config\(config\)"):
        VAE(config)
    vae = VAE.from_config(config)  # the way it names
    assert vae.config.z_dim == 3 and vae.config.hidden_dims == (8,)
