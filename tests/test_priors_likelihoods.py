"""Every registered prior x likelihood x (conditional or not) x ELBO trains (its loss falls under
Adam, in both of Pyro's modes); custom ones too. The priors' log densities and the likelihoods'
moments are checked against their definitions, and a prior given as a Pyro distribution
follows the VAE across dtypes and devices."""

from __future__ import annotations

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.distributions.transforms import AffineTransform

from pyro_vae import VAE, elbo_terms
from pyro_vae.models.likelihoods import LIKELIHOOD_MIN_SCALE, LIKELIHOODS
from pyro_vae.models.networks import GUIDE_MIN_SCALE
from pyro_vae.models.priors import PRIORS

Z_DIM, HIDDEN, BATCH, NUM_CLASSES = 4, (32,), 8, 10


def data_for(vae: VAE, n: int = BATCH) -> torch.Tensor:
    """A batch in the likelihood's representation, as the data pipeline would give it: noisy
    copies of 4 random grey patterns, structure a small VAE learns in a few steps."""
    g = torch.Generator().manual_seed(7)
    patterns = torch.rand(4, 784, generator=g)
    noise = 0.05 * torch.rand(n, 784, generator=g)
    gray = (0.1 + 0.8 * patterns[torch.arange(n) % 4] + noise).clamp(0, 1)
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
def test_every_registered_combination_trains(
    pyro_mode, prior, likelihood, num_classes, analytic_kl
):
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

    # Adam steps on the batch lower the -ELBO (measured with fixed noise and 8 particles).
    def neg_elbo() -> float:
        pyro.set_rng_seed(0)
        with torch.no_grad():
            t = elbo_terms(vae.model, vae.guide, x, y, num_particles=8, analytic_kl=analytic_kl)
        return t.loss.item()

    before = neg_elbo()
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-2)
    for _ in range(15):
        optimizer.zero_grad()
        elbo_terms(
            vae.model, vae.guide, x, y, num_particles=2, analytic_kl=analytic_kl
        ).loss.backward()
        optimizer.step()
    # Measured: every combination falls by 0.09 to 1.1 nats per pixel in 20 steps; a model
    # whose gradient pointed nowhere useful would stay within noise of where it started.
    assert neg_elbo() < before - 0.03 * BATCH * 784, (before, neg_elbo())


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
    with pytest.raises(ValueError, match="--data-mode.*continuous-bernoulli"):
        elbo_terms(vae.model, vae.guide, torch.rand(BATCH, 784))


def test_unknown_names_list_the_choices():
    with pytest.raises(ValueError, match="choose one of"):
        VAE(prior="cauchy")
    with pytest.raises(ValueError, match="choose one of"):
        VAE(likelihood="poisson")


# ---- the priors' log densities against a direct computation -------------------------------

LOG_2PI = math.log(2 * math.pi)


def normal_log_density(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """sum_d log N(z_d; loc_d, scale_d), written out."""
    return (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * LOG_2PI).sum(-1)


def randomized(vae: VAE) -> VAE:
    """Parameters moved off their initial values (zeros, ones) so the oracle sees them all."""
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return vae


@pytest.mark.parametrize("prior", sorted(PRIORS))
def test_prior_log_density_equals_its_definition(prior):
    classes = NUM_CLASSES if prior == "conditional" else 0
    vae = randomized(tiny_vae(prior, num_classes=classes).double())
    p = vae.model.prior
    g = torch.Generator().manual_seed(5)
    z = 2 * torch.randn(BATCH, Z_DIM, generator=g, dtype=torch.float64)
    y = torch.arange(BATCH) % NUM_CLASSES if classes else None
    got = p(y).log_prob(z)
    if prior == "normal":
        expected = normal_log_density(z, torch.zeros(Z_DIM), torch.ones(Z_DIM))
    elif prior == "learned-normal":
        expected = normal_log_density(z, p.loc, p.scale)
    elif prior == "conditional":
        expected = normal_log_density(z, p.locs[y], p.scales[y])
    elif prior == "mog":
        log_w = p.logits - p.logits.logsumexp(0)  # [K]
        per = normal_log_density(z[:, None], p.locs, p.scales)  # [B, K]
        expected = (log_w + per).logsumexp(-1)
    elif prior == "vamp":
        # 1/K sum_k q(z | u_k), the guide's posterior at each pseudo-input, from the raw network.
        out = vae.guide.encoder.net(p.pseudo_inputs)
        loc, scale = out[:, :Z_DIM], F.softplus(out[:, Z_DIM:]) + GUIDE_MIN_SCALE
        per = normal_log_density(z[:, None], loc, scale)  # [B, K]
        expected = per.logsumexp(-1) - math.log(p.pseudo_inputs.shape[0])
    else:  # a new prior needs its definition written here
        pytest.fail(f"no oracle for prior {prior!r}")
    torch.testing.assert_close(got, expected)


def test_prior_oracle_negative_control():
    # A mixture scored as if its weights were uniform is a different number: the oracle sees it.
    vae = randomized(tiny_vae("mog").double())
    p = vae.model.prior
    z = torch.randn(BATCH, Z_DIM, dtype=torch.float64)
    uniform = normal_log_density(z[:, None], p.locs, p.scales).logsumexp(-1) - math.log(3)
    assert (p().log_prob(z) - uniform).abs().max() > 1e-3


# ---- the likelihoods' moments against their definitions -----------------------------------


def _sig(t: torch.Tensor) -> torch.Tensor:
    return 1 / (1 + torch.exp(-t))


def _softplus(t: torch.Tensor) -> torch.Tensor:
    return torch.log1p(torch.exp(t))


def _cb_mean(lam: torch.Tensor) -> torch.Tensor:
    """Mean of ContinuousBernoulli(lam), Loaiza-Ganem & Cunningham (2019), eq. for lam != 1/2."""
    return lam / (2 * lam - 1) + 1 / (2 * torch.atanh(1 - 2 * lam))


# name -> (mean, stddev) of the pixel distribution from the decoder's raw output ``out``.
MOMENTS = {
    "bernoulli": lambda out: (_sig(out), (_sig(out) * (1 - _sig(out))).sqrt()),
    "continuous-bernoulli": lambda out: (_cb_mean(_sig(out)), None),
    "gaussian": lambda out: (
        _sig(out[..., :784]),
        _softplus(out[..., 784:]) + LIKELIHOOD_MIN_SCALE,
    ),
    "laplace": lambda out: (
        _sig(out[..., :784]),
        math.sqrt(2) * (_softplus(out[..., 784:]) + LIKELIHOOD_MIN_SCALE),
    ),
    "discretized-logistic": lambda out: (_discretized_logistic_mean(out), None),
    "beta": lambda out: _beta_moments(
        _softplus(out[..., :784]) + LIKELIHOOD_MIN_SCALE,
        _softplus(out[..., 784:]) + LIKELIHOOD_MIN_SCALE,
    ),
}


def _discretized_logistic_mean(out: torch.Tensor) -> torch.Tensor:
    """sum_k (k / 255) P(k), P(k) = F(upper_k) - F(lower_k), F the logistic CDF, edge bins open."""
    loc, scale = out[..., :784, None], _softplus(out[..., 784:, None]) + 1e-4
    k = torch.arange(256, dtype=out.dtype)
    upper = torch.where(k == 255, torch.inf, (k + 0.5) / 255)
    lower = torch.where(k == 0, -torch.inf, (k - 0.5) / 255)
    probs = _sig((upper - loc) / scale) - _sig((lower - loc) / scale)
    return (probs * k / 255).sum(-1)


def _beta_moments(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return a / (a + b), (a * b / ((a + b) ** 2 * (a + b + 1))).sqrt()


@pytest.mark.parametrize("likelihood", sorted(LIKELIHOODS))
def test_likelihood_mean_and_scale_equal_their_definitions(likelihood):
    assert likelihood in MOMENTS, f"write the definition of {likelihood!r}'s moments in MOMENTS"
    lik = tiny_vae(likelihood=likelihood).likelihood
    g = torch.Generator().manual_seed(9)
    out = 3 * torch.randn(2, lik.params_per_pixel * 784, generator=g, dtype=torch.float64)
    if likelihood == "continuous-bernoulli":
        out = out + 0.5 * out.sign()  # keep lambda away from 1/2, where the formula is 0/0
    d = lik(out)
    mean, std = MOMENTS[likelihood](out)
    assert d.event_shape == (784,) and d.batch_shape == (2,)
    torch.testing.assert_close(d.mean, mean)
    if std is not None:
        torch.testing.assert_close(d.stddev, std)


@pytest.mark.parametrize("name", ["gaussian", "laplace"])
def test_fixed_likelihood_scale_is_used_as_given(name):
    lik = VAE(Z_DIM, HIDDEN, likelihood=name, likelihood_scale=0.2).likelihood
    assert lik.params_per_pixel == 1
    d = lik(torch.zeros(3, 784))
    expected = 0.2 * (math.sqrt(2) if name == "laplace" else 1.0)
    torch.testing.assert_close(d.stddev, torch.full((3, 784), expected))


# ---- a prior given as a Pyro distribution moves with the VAE ------------------------------


def _tensors(obj, seen=None):
    """Every tensor reachable from a distribution or transform, written independently of the
    library's mover: the test's own walk over attributes."""
    seen = set() if seen is None else seen
    if torch.is_tensor(obj):
        yield obj
        return
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, list | tuple):
        for v in obj:
            yield from _tensors(v, seen)
    elif isinstance(obj, torch.distributions.Distribution | torch.distributions.Transform):
        for v in vars(obj).values():
            yield from _tensors(v, seen)


def _user_priors() -> dict[str, dist.Distribution]:
    mixing = dist.Categorical(logits=torch.tensor([0.1, 0.2, 0.7]))
    _ = mixing.probs  # both probs and logits now cached on the object
    return {
        "independent": dist.Normal(torch.zeros(Z_DIM), torch.ones(Z_DIM)).to_event(1),
        "mixture": dist.MixtureSameFamily(
            mixing, dist.Normal(torch.randn(3, Z_DIM), torch.ones(3, Z_DIM)).to_event(1)
        ),
        "transformed": dist.TransformedDistribution(
            dist.Normal(torch.zeros(Z_DIM), torch.ones(Z_DIM)),
            [AffineTransform(torch.ones(Z_DIM), 2 * torch.ones(Z_DIM))],
        ).to_event(1),
        "studentt": dist.StudentT(4.0, torch.zeros(Z_DIM), torch.ones(Z_DIM)),
    }


@pytest.mark.parametrize("kind", sorted(_user_priors()))
def test_distribution_prior_moves_with_the_vae_dtype(kind):
    prior = _user_priors()[kind]
    tensors = list(_tensors(prior))
    assert tensors and all(t.dtype == torch.float32 for t in tensors)  # the walk sees them
    vae = VAE(Z_DIM, HIDDEN, prior=prior).double()
    moved = vae.model.prior.dist
    assert len(list(_tensors(moved))) == len(tensors)
    assert all(t.dtype == torch.float64 for t in _tensors(moved))
    assert all(t.dtype == torch.float32 for t in _tensors(prior))  # the user's object is kept
    terms = elbo_terms(vae.model, vae.guide, data_for(vae).double())
    assert terms.loss.dtype == torch.float64 and torch.isfinite(terms.loss)
    # Back again, and the log density is the user's distribution's, at float32.
    vae.float()
    z = torch.randn(BATCH, Z_DIM)
    torch.testing.assert_close(
        vae.model.prior.dist.log_prob(z),
        prior.log_prob(z).reshape(vae.model.prior.dist.log_prob(z).shape),
    )


def test_distribution_prior_negative_control_a_plain_callable_stays_behind():
    # The same distribution behind a lambda is opaque to the VAE: it keeps float32, which is
    # what the mover above exists to prevent.
    prior = _user_priors()["mixture"]
    vae = VAE(Z_DIM, HIDDEN, prior=lambda y: prior).double()
    assert all(t.dtype == torch.float32 for t in _tensors(vae.model.prior(None)))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", sorted(_user_priors()))
def test_distribution_prior_moves_to_cuda(kind):
    vae = VAE(Z_DIM, HIDDEN, prior=_user_priors()[kind]).to("cuda")
    assert all(t.is_cuda for t in _tensors(vae.model.prior.dist))
    x = data_for(vae).cuda()
    assert torch.isfinite(elbo_terms(vae.model, vae.guide, x).loss)
