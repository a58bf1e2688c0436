"""``pyro_vae.inference.objectives.elbo_terms`` against Pyro's own ELBOs and an independent
oracle.

- On the same random draws it equals ``Trace_ELBO`` / ``TraceMeanField_ELBO``: loss and gradients,
  for every registered prior x likelihood x (conditional or not), in both of Pyro's modes.
- It refuses model/guide pairs it would get wrong, instead of returning a wrong number.
- The Monte Carlo and analytic-KL estimators agree in expectation (within 3 standard errors).
- The analytic-KL loss equals -log p(x | z) + KL(N(loc, scale) || N(0, I)) written out in torch.
"""

from __future__ import annotations

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import VAE, elbo_terms
from pyro_vae.models.likelihoods import LIKELIHOODS
from pyro_vae.models.networks import GUIDE_MIN_SCALE
from pyro_vae.models.priors import PRIORS

Z_DIM = 6
HIDDEN = (32,)
SEED = 7
# The device-side ELBO must equal Pyro's wherever it runs: the GPU joins when there is one.
DEVICES = ["cpu"] + (
    [pytest.param("cuda", marks=pytest.mark.cuda)] if torch.cuda.is_available() else []
)


def fixed_vae(num_classes: int = 0, dtype: torch.dtype = torch.float64) -> VAE:
    """A small VAE whose posterior is far from the prior, so the KL term is not negligible."""
    pyro.set_rng_seed(1)
    vae = VAE(z_dim=Z_DIM, hidden_dims=HIDDEN, num_classes=num_classes).to(dtype)
    with torch.no_grad():
        vae.guide.encoder.net[-1].bias.normal_(0.0, 1.0)
    return vae


def labels(num_classes: int, n: int) -> torch.Tensor | None:
    return torch.arange(n) % num_classes if num_classes else None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_classes", [0, 10])
@pytest.mark.parametrize("num_particles", [1, 4])
@pytest.mark.parametrize("analytic_kl", [False, True], ids=["trace", "meanfield"])
def test_elbo_terms_equal_pyro_loss_and_gradients(
    pyro_mode, binary_batch, analytic_kl, num_particles, num_classes, device
):
    vae = fixed_vae(num_classes).to(device)
    x = binary_batch.double().to(device)
    y = labels(num_classes, binary_batch.shape[0])
    y = y.to(device) if y is not None else None
    params = list(vae.parameters())
    elbo_cls = TraceMeanField_ELBO if analytic_kl else Trace_ELBO
    # max_plate_nesting given, so Pyro does not run the model once (drawing noise) to find it.
    pyro_elbo = elbo_cls(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)

    pyro.set_rng_seed(SEED)
    expected = pyro_elbo(vae.model, vae.guide)(x, y)
    expected_grads = torch.autograd.grad(expected, params)
    pyro.set_rng_seed(SEED)
    terms = elbo_terms(
        vae.model, vae.guide, x, y, num_particles=num_particles, analytic_kl=analytic_kl
    )
    grads = torch.autograd.grad(terms.loss, params)

    assert terms.loss.item() == pytest.approx(expected.item(), rel=1e-10)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-8, atol=1e-10)
    # The per-image split adds up to the loss, and says which KL it used.
    assert terms.log_lik.shape == terms.kl.shape == (8,)
    torch.testing.assert_close(terms.kl.sum() - terms.log_lik.sum(), terms.loss)
    assert terms.analytic_kl is analytic_kl
    assert terms.kl_kind == ("analytic" if analytic_kl else "monte-carlo")


REGISTRY = [
    (prior, likelihood, classes)
    for prior, likelihood, classes in itertools.product(
        sorted(PRIORS), sorted(LIKELIHOODS), (0, 10)
    )
    if classes or prior != "conditional"
]


def registry_batch(vae: VAE, n: int = 6) -> torch.Tensor:
    """Data in the likelihood's representation, float64."""
    g = torch.Generator().manual_seed(11)
    gray = torch.rand(n, 784, generator=g, dtype=torch.float64)
    if vae.likelihood.data_kind == "binary":
        return torch.bernoulli(gray, generator=g)
    return vae.likelihood.prepare(gray)


@pytest.mark.parametrize("prior,likelihood,num_classes", REGISTRY)
@pytest.mark.parametrize("analytic_kl", [False, True], ids=["trace", "meanfield"])
def test_every_registered_combination_equals_pyro(
    pyro_mode, prior, likelihood, num_classes, analytic_kl
):
    """Two vectorized particles, so the particle plate is covered for every prior (the
    mixtures' fallback to a Monte Carlo KL included) and every likelihood."""
    pyro.set_rng_seed(1)
    vae = VAE(
        z_dim=Z_DIM,
        hidden_dims=(16,),
        prior=prior,
        likelihood=likelihood,
        num_classes=num_classes,
        prior_components=3,
    ).double()
    x = registry_batch(vae)
    y = labels(num_classes, x.shape[0])
    params = list(vae.parameters())
    elbo_cls = TraceMeanField_ELBO if analytic_kl else Trace_ELBO
    pyro.set_rng_seed(SEED)
    expected = elbo_cls(num_particles=2, vectorize_particles=True, max_plate_nesting=1)(
        vae.model, vae.guide
    )(x, y)
    expected_grads = torch.autograd.grad(expected, params)
    pyro.set_rng_seed(SEED)
    terms = elbo_terms(vae.model, vae.guide, x, y, num_particles=2, analytic_kl=analytic_kl)
    grads = torch.autograd.grad(terms.loss, params)
    torch.testing.assert_close(terms.loss, expected, rtol=1e-10, atol=1e-8)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-8, atol=1e-10)


def _plate_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
        pyro.sample("x", dist.Bernoulli(logits=z.sum(-1, keepdim=True)).to_event(1), obs=x)


def _plate_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))


def test_a_well_formed_hand_written_pair_passes():
    # The positive control for the refusals below: the same shapes, written right.
    x = torch.ones(5, 1)
    terms = elbo_terms(_plate_model, _plate_guide, x)
    assert terms.log_lik.shape == (5,)


def test_a_global_latent_outside_the_data_plate_is_refused():
    def model(x):
        w = pyro.sample("w", dist.Normal(0.0, 1.0))  # one draw for all images
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Bernoulli(logits=w.expand(x.shape[0], 1)).to_event(1), obs=x)

    def guide(x):
        pyro.sample("w", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="'w' lies outside the data plate"):
        elbo_terms(model, guide, torch.ones(5, 1))


def test_a_latent_site_the_guide_does_not_draw_is_refused():
    def guide(x):
        pass

    with pytest.raises(ValueError, match="latent site 'z' is not drawn by the guide"):
        elbo_terms(_plate_model, guide, torch.ones(5, 1))


def test_a_guide_site_without_rsample_is_refused():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            k = pyro.sample("k", dist.Bernoulli(0.5 * torch.ones(x.shape[0], 1)).to_event(1))
            pyro.sample("x", dist.Bernoulli(probs=0.2 + 0.6 * k).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("k", dist.Bernoulli(0.5 * torch.ones(x.shape[0], 1)).to_event(1))

    with pytest.raises(ValueError, match="'k' .* is not reparameterized.*Trace_ELBO"):
        elbo_terms(model, guide, torch.ones(5, 1))


def test_trace_and_meanfield_agree_within_three_standard_errors(binary_batch):
    """Both are unbiased for the same ELBO; the only difference is how the KL is estimated."""
    vae = fixed_vae()
    images, draws = 4, 4000
    # Each copy of an image gets its own z, so one call gives `draws` independent estimates.
    x = binary_batch[:images].double().repeat(draws, 1)
    estimates = {}
    for analytic in (False, True):
        pyro.set_rng_seed(SEED + analytic)
        with torch.no_grad():
            t = elbo_terms(vae.model, vae.guide, x, analytic_kl=analytic)
        per_draw = (t.kl - t.log_lik).reshape(draws, images).sum(1)  # -ELBO of the 4 images
        estimates[analytic] = (per_draw.mean().item(), per_draw.var().item() / draws)
        kl_per_draw = t.kl.reshape(draws, images).sum(1)
        # The KL is far from zero here, so a missing or mis-scaled KL term would show.
        assert kl_per_draw.mean() > 10
    (m_trace, v_trace), (m_mf, v_mf) = estimates[False], estimates[True]
    se = math.sqrt(v_trace + v_mf)
    assert abs(m_trace - m_mf) < 3 * se, (m_trace, m_mf, se)
    # The analytic KL removes the KL's sampling noise.
    assert v_mf < v_trace


@pytest.mark.parametrize("num_classes", [0, 10])
def test_meanfield_loss_equals_closed_form_oracle(pyro_mode, binary_batch, num_classes):
    """-log p(x|z) + KL(N(loc, scale) || N(0, I)), written with torch alone from the same
    networks and the same standard-normal noise as the guide's draw."""
    vae = fixed_vae(num_classes)
    x, y = binary_batch.double(), labels(num_classes, binary_batch.shape[0])
    onehot = F.one_hot(y, num_classes).double() if num_classes else x[:, :0]

    pyro.set_rng_seed(SEED)
    terms = elbo_terms(vae.model, vae.guide, x, y, analytic_kl=True)
    pyro.set_rng_seed(SEED)
    pyro_loss = TraceMeanField_ELBO(max_plate_nesting=1)(vae.model, vae.guide)(x, y)
    pyro.set_rng_seed(SEED)
    trace_terms = elbo_terms(vae.model, vae.guide, x, y, analytic_kl=False)

    # The oracle: the raw torch layers of the same networks, and the guide's noise redrawn.
    pyro.set_rng_seed(SEED)
    eps = torch.randn(x.shape[0], Z_DIM, dtype=torch.float64)
    enc = vae.guide.encoder.net(torch.cat([x, onehot], -1))
    loc, scale = enc[:, :Z_DIM], F.softplus(enc[:, Z_DIM:]) + GUIDE_MIN_SCALE
    z = loc + scale * eps
    logits = vae.model.decoder.net(torch.cat([z, onehot], -1))
    log_lik = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
    kl = 0.5 * (loc**2 + scale**2 - 1 - 2 * scale.log()).sum(-1)
    # Trace_ELBO's Monte Carlo KL at the same z: log q(z|x) - log p(z), Gaussian densities.
    log_q = (-0.5 * eps**2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_p = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)

    torch.testing.assert_close(terms.log_lik, log_lik)
    torch.testing.assert_close(terms.kl, kl)
    torch.testing.assert_close(terms.loss, (kl - log_lik).sum())
    torch.testing.assert_close(pyro_loss, (kl - log_lik).sum())
    torch.testing.assert_close(trace_terms.log_lik, log_lik)
    torch.testing.assert_close(trace_terms.kl, log_q - log_p)
