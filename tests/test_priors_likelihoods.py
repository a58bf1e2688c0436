"""Every registered prior x likelihood x (conditional or not) x ELBO trains; custom ones too."""

from __future__ import annotations

import itertools

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyro_vae import VAE, elbo_terms
from pyro_vae.likelihoods import LIKELIHOODS
from pyro_vae.priors import PRIORS

Z_DIM, HIDDEN, BATCH, NUM_CLASSES = 4, (32,), 8, 10


def data_for(vae: VAE, n: int = BATCH) -> torch.Tensor:
    """A batch in the likelihood's representation, as the data pipeline would give it."""
    g = torch.Generator().manual_seed(7)
    gray = torch.rand(n, 784, generator=g)
    if vae.likelihood.data_kind == "binary":
        return torch.bernoulli(gray, generator=g)
    return vae.likelihood.prepare(gray)


def tiny_vae(prior: str = "normal", likelihood: str = "bernoulli", num_classes: int = 0) -> VAE:
    return VAE(
        Z_DIM,
        HIDDEN,
        prior=prior,
        likelihood=likelihood,
        num_classes=num_classes,
        prior_components=3,
    )


CASES = list(itertools.product(sorted(PRIORS), sorted(LIKELIHOODS), (0, NUM_CLASSES)))


@pytest.mark.parametrize("prior,likelihood,num_classes", CASES)
@pytest.mark.parametrize("analytic_kl", [False, True], ids=["trace", "meanfield"])
def test_every_registered_combination_trains(prior, likelihood, num_classes, analytic_kl):
    if prior == "conditional" and not num_classes:
        with pytest.raises(ValueError, match="num_classes"):
            tiny_vae(prior, likelihood, num_classes)
        return
    vae = tiny_vae(prior, likelihood, num_classes)
    x = data_for(vae)
    y = torch.arange(BATCH) % NUM_CLASSES if num_classes else None
    terms = elbo_terms(vae.model, vae.guide, x, y, num_particles=2, analytic_kl=analytic_kl)
    assert torch.isfinite(terms.loss)
    assert terms.log_lik.shape == terms.kl.shape == (BATCH,)
    terms.loss.backward()
    for name, p in vae.named_parameters():
        assert p.grad is not None, f"no gradient reaches {name}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient at {name}"
        assert p.grad.abs().sum() > 0, f"zero gradient at {name}"

    # Samples from the model have the data's shape and lie in the likelihood's support.
    with torch.no_grad():
        trace = poutine.trace(vae.model).get_trace(None, y, batch_size=BATCH)
    x_site = trace.nodes["x"]
    assert x_site["value"].shape == (BATCH, 784)
    assert x_site["fn"].support.check(x_site["value"]).all()
    assert trace.nodes["z"]["value"].shape == (BATCH, Z_DIM)
    assert vae.sample(BATCH if not num_classes else None, y).shape == (BATCH, 784)


@pytest.mark.parametrize(
    "prior,expected",
    [
        ("normal", "analytic"),
        ("learned-normal", "analytic"),
        ("mog", "monte-carlo"),
        ("vamp", "monte-carlo"),
    ],
)
def test_which_kl_was_used_is_reported(prior, expected):
    vae = tiny_vae(prior)
    x = data_for(vae)
    assert elbo_terms(vae.model, vae.guide, x, analytic_kl=True).kl_kind == expected
    # Trace_ELBO semantics never use an analytic KL.
    assert elbo_terms(vae.model, vae.guide, x, analytic_kl=False).kl_kind == "monte-carlo"


def test_conditional_prior_kl_is_analytic():
    vae = tiny_vae("conditional", num_classes=NUM_CLASSES)
    terms = elbo_terms(
        vae.model, vae.guide, data_for(vae), torch.arange(BATCH) % 10, analytic_kl=True
    )
    assert terms.kl_kind == "analytic"


@pytest.mark.parametrize(
    "prior",
    [
        dist.StudentT(4.0, 0.0, 1.0),
        dist.Laplace(0.0, 1.0),
        dist.Normal(torch.zeros(Z_DIM), torch.ones(Z_DIM)),
    ],
    ids=["studentt", "laplace", "normal-zdim"],
)
def test_unregistered_prior_trains_with_classic_svi(prior):
    vae = VAE(Z_DIM, HIDDEN, prior=prior)
    assert vae.config.prior == "custom"
    # 64 noisy copies of 4 random binary patterns: structure a small VAE learns in seconds.
    g = torch.Generator().manual_seed(3)
    patterns = torch.bernoulli(torch.full((4, 784), 0.5), generator=g)
    flips = torch.bernoulli(torch.full((64, 784), 0.05), generator=g)
    x = (patterns.repeat(16, 1) + flips) % 2
    elbo = pyro.infer.Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
    first = [svi.step(x) for _ in range(10)]
    for _ in range(100):
        svi.step(x)
    last = [svi.step(x) for _ in range(10)]
    # -ELBO starts near 64 * 784 * log 2 = 34,800 nats; the patterns' noise floor is
    # 64 * 784 * H(0.05) = 10,000 nats. Learning the patterns takes it below half the start.
    assert sum(last) < 0.5 * sum(first)


def test_custom_prior_module_receives_labels():
    seen = []

    class LabelPrior(torch.nn.Module):
        def forward(self, y):
            seen.append(y)
            return dist.Normal(y.float().unsqueeze(-1).expand(-1, Z_DIM), 1.0).to_event(1)

    vae = VAE(Z_DIM, HIDDEN, prior=LabelPrior(), num_classes=NUM_CLASSES)
    y = torch.arange(BATCH)
    terms = elbo_terms(vae.model, vae.guide, data_for(vae), y, analytic_kl=True)
    assert torch.equal(seen[-1], y)
    assert terms.kl_kind == "analytic"


def test_custom_likelihood_callable_sets_decoder_width():
    def gaussian(out):
        loc, raw = out.chunk(2, dim=-1)
        return dist.Normal(loc, torch.nn.functional.softplus(raw) + 1e-3)

    gaussian.params_per_pixel = 2
    vae = VAE(Z_DIM, HIDDEN, likelihood=gaussian)
    assert vae.model.decoder.net[-1].out_features == 2 * 784
    terms = elbo_terms(vae.model, vae.guide, torch.rand(BATCH, 784))
    assert torch.isfinite(terms.loss)


def test_distribution_prior_follows_the_module_dtype():
    vae = VAE(Z_DIM, HIDDEN, prior=dist.Normal(torch.zeros(Z_DIM), torch.ones(Z_DIM))).double()
    terms = elbo_terms(vae.model, vae.guide, data_for(vae).double())
    assert terms.loss.dtype == torch.float64


@pytest.mark.parametrize("likelihood", sorted(LIKELIHOODS))
def test_data_outside_support_says_the_fix(likelihood):
    vae = tiny_vae(likelihood=likelihood)
    kind = vae.likelihood.data_kind
    bad = {
        "binary": torch.full((BATCH, 784), 0.5),
        "unit": torch.full((BATCH, 784), 1.5),
        "open-unit": torch.zeros(BATCH, 784),
        "8-bit": torch.full((BATCH, 784), 0.5),  # 127.5 / 255: between two pixel values
    }.get(kind)
    if bad is None:  # gaussian and laplace accept any real pixel
        vae.likelihood.check(torch.randn(BATCH, 784))
        return
    with pytest.raises(ValueError, match=f"the {likelihood} likelihood needs"):
        vae.likelihood.check(bad)
    if kind == "open-unit":
        return  # torch's Beta support is the closed [0, 1]: only the pipeline's check is stricter
    # Called directly, the model's own validation gives the same advice.
    with pytest.raises(ValueError, match=f"the {likelihood} likelihood needs"):
        elbo_terms(vae.model, vae.guide, bad)


def test_bernoulli_grayscale_error_suggests_binarize_or_continuous_bernoulli():
    vae = tiny_vae()
    with pytest.raises(ValueError, match="--binarize.*continuous-bernoulli"):
        elbo_terms(vae.model, vae.guide, torch.rand(BATCH, 784))


def test_unknown_names_list_the_choices():
    with pytest.raises(ValueError, match="choose one of"):
        VAE(prior="cauchy")
    with pytest.raises(ValueError, match="choose one of"):
        VAE(likelihood="poisson")
