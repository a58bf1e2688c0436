"""The importance-sampled log p(x) against an oracle: the linear-Gaussian VAE, whose marginal
log p(x) = log N(x; b, W W^T + sigma^2 I) and posterior are known in closed form."""

from __future__ import annotations

import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae import VAE, elbo_terms
from pyro_vae.cli.main import main
from pyro_vae.data.pixels import resolve_data_mode, to_pixels
from pyro_vae.evaluation.elbo import evaluate_elbo
from pyro_vae.inference.loglik import evaluate_log_likelihood, iw_bound, log_marginal, log_weights
from pyro_vae.inference.units import bits_per_dim, dequantization_nats
from pyro_vae.models.likelihoods import LIKELIHOODS
from pyro_vae.models.networks import GUIDE_MIN_SCALE
from pyro_vae.models.priors import PRIORS

X_DIM, Z_DIM, SIGMA = 6, 2, 0.5
# Column norms of W: the posterior N(m(x), S) has S = diag(1 / (1 + s^2 / sigma^2)) when the
# columns of W are orthogonal, so the mean-field guide can hold it exactly.
COLUMN_NORMS = (1.5, 0.8)


@pytest.fixture(autouse=True)
def _module_local_params():
    pyro.settings.set(module_local_params=True)  # conftest resets it after each test


def linear_gaussian(loc_shift: float = 0.0, scale_factor: float = 1.0):
    """A VAE with a linear decoder x = W z + b + sigma * eps and an encoder set to the exact
    posterior, then moved off it by ``loc_shift`` (added to the mean) and ``scale_factor``
    (multiplying the std). Returns the VAE, the exact marginal p(x) and the posterior maps."""
    vae = VAE(
        z_dim=Z_DIM,
        hidden_dims=(),
        x_dim=X_DIM,
        likelihood=lambda out: dist.Normal(out, SIGMA).to_event(1),
    )
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(X_DIM, Z_DIM, generator=g))
    w = q * torch.tensor(COLUMN_NORMS)
    b = 0.3 * torch.randn(X_DIM, generator=g)
    post_var = 1 / (1 + torch.tensor(COLUMN_NORMS) ** 2 / SIGMA**2)
    a = post_var[:, None] * w.T / SIGMA**2  # posterior mean = a (x - b)
    dec, enc = vae.model.decoder.net[0], vae.guide.encoder.net[0]
    target = post_var.sqrt() * scale_factor - GUIDE_MIN_SCALE
    with torch.no_grad():
        dec.weight.copy_(w)
        dec.bias.copy_(b)
        enc.weight.zero_()
        enc.weight[:Z_DIM] = a
        enc.bias[:Z_DIM] = -a @ b + loc_shift
        enc.bias[Z_DIM:] = target + torch.log(-torch.expm1(-target))  # softplus^-1
    marginal = dist.MultivariateNormal(b, w @ w.T + SIGMA**2 * torch.eye(X_DIM))
    return vae, marginal, (a, b, post_var)


def exact_elbo(x, loc_shift, scale_factor):
    """log p(x) - KL(q(z | x) || p(z | x)), both Gaussian: the ELBO in closed form, [B]."""
    _, marginal, (a, b, post_var) = linear_gaussian()
    post_loc = (x - b) @ a.T
    post = dist.Normal(post_loc, post_var.sqrt()).to_event(1)
    q = dist.Normal(post_loc + loc_shift, post_var.sqrt() * scale_factor).to_event(1)
    return marginal.log_prob(x) - torch.distributions.kl_divergence(q, post)


def test_exact_posterior_gives_exact_log_likelihood_with_one_sample():
    # With q = p(z | x) every weight p(x, z) / q(z | x) equals p(x): no noise at all, so this
    # pins every log-density the estimator reads from the traces.
    vae, marginal, _ = linear_gaussian()
    x = marginal.sample((16,))
    with torch.no_grad():
        for k in (1, 7):
            est = log_marginal(vae.model, vae.guide, x, None, num_samples=k)
            assert est.shape == (16,)
            torch.testing.assert_close(est, marginal.log_prob(x), atol=1e-4, rtol=0)


def test_estimate_converges_to_exact_and_elbo_lies_below():
    shift, factor = 0.3, 1.4
    vae, marginal, _ = linear_gaussian(shift, factor)
    x = marginal.sample((20,))
    exact = marginal.log_prob(x)
    with torch.no_grad():
        est = log_marginal(vae.model, vae.guide, x, None, num_samples=5000, chunk_size=1000)
        few = log_marginal(vae.model, vae.guide, x, None, num_samples=5, chunk_size=2)
        draws = []
        for analytic in (False, True):
            for _ in range(20):
                t = elbo_terms(
                    vae.model, vae.guide, x, None, num_particles=100, analytic_kl=analytic
                )
                draws.append(t.log_lik - t.kl)
    assert (est - exact).abs().mean() < 0.05
    assert (est - exact).abs().max() < 0.1
    assert (est - exact).abs().mean() < (few - exact).abs().mean()
    draws = torch.stack(draws)  # [40, 20]: 100-particle ELBO estimates of each image
    elbo, se = draws.mean(0), draws.std(0) / math.sqrt(len(draws))
    # The guide is off the posterior by a known KL, so the gap is real: about 0.9 nats.
    truth = exact_elbo(x, shift, factor)
    assert (exact - truth > 0.3).all()
    assert (elbo < exact).all()
    assert ((elbo - truth).abs() < 4 * se).all()


def test_iw_bound_rises_with_k_towards_log_likelihood():
    shift, factor = 0.3, 1.4
    vae, marginal, _ = linear_gaussian(shift, factor)
    x = marginal.sample((40,))
    exact = marginal.log_prob(x)
    with torch.no_grad():
        lw = log_weights(vae.model, vae.guide, x, None, num_samples=2000, chunk_size=300)
    assert lw.shape == (2000, 40)
    gaps = {k: (exact - iw_bound(lw, k)) for k in (1, 5, 50, 500, 2000)}
    means = {k: g.mean().item() for k, g in gaps.items()}
    ses = {k: g.std().item() / math.sqrt(len(g)) for k, g in gaps.items()}
    ks = sorted(gaps)
    for k_small, k_big in zip(ks[:-1], ks[1:], strict=True):
        assert means[k_big] <= means[k_small] + 3 * (ses[k_small] + ses[k_big])
    # L_1 is the ELBO in expectation; L_K stays below log p(x) up to its noise.
    elbo = exact_elbo(x, shift, factor)
    assert abs((iw_bound(lw, 1) - elbo).mean().item()) < 3 * ses[1] + 0.02
    assert means[5] < means[1] - 0.3
    assert means[2000] > -3 * ses[2000] - 0.01


def test_chunks_combine_to_the_logsumexp_of_all_weights():
    vae, marginal, _ = linear_gaussian(0.5, 1.5)
    x = marginal.sample((5,))
    with torch.no_grad():
        pyro.set_rng_seed(3)
        lw = log_weights(vae.model, vae.guide, x, None, num_samples=100, chunk_size=13)
        pyro.set_rng_seed(3)
        lm = log_marginal(vae.model, vae.guide, x, None, num_samples=100, chunk_size=13)
    torch.testing.assert_close(lm, lw.logsumexp(0) - math.log(100))
    torch.testing.assert_close(iw_bound(lw, 100), lm)


def _data_for(vae: VAE, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, vae.config.x_dim, generator=g)
    if vae.likelihood.data_kind == "binary":
        x = torch.bernoulli(x, generator=g)
    return vae.likelihood.prepare(x)


CASES = [
    (prior, lik, classes)
    for prior in sorted(PRIORS)
    for lik in sorted(LIKELIHOODS)
    for classes in (0, 3)
    if not (prior == "conditional" and classes == 0)
]


@pytest.mark.parametrize("prior,likelihood,num_classes", CASES)
def test_one_sample_weight_is_the_trace_elbo_draw(prior, likelihood, num_classes):
    # For every prior, likelihood and the conditional VAE: the K = 1 log-weight of each image is
    # log p(x, z | y) - log q(z | x, y), the same number Trace_ELBO computes on the same draw.
    vae = VAE(
        z_dim=3,
        hidden_dims=(8,),
        x_dim=12,
        prior=prior,
        likelihood=likelihood,
        num_classes=num_classes,
        prior_components=4,
    )
    x = _data_for(vae, 5)
    y = torch.tensor([0, 1, 2, 1, 0]) if num_classes else None
    with torch.no_grad():
        pyro.set_rng_seed(5)
        lm = log_marginal(vae.model, vae.guide, x, y, num_samples=1)
        pyro.set_rng_seed(5)
        t = elbo_terms(vae.model, vae.guide, x, y)
        many = log_marginal(vae.model, vae.guide, x, y, num_samples=50, chunk_size=16)
    assert lm.shape == (5,) and torch.isfinite(many).all()
    torch.testing.assert_close(lm, t.log_lik - t.kl, atol=1e-4, rtol=1e-5)


def test_evaluate_log_likelihood_reports_mean_nll_over_batches():
    vae, marginal, _ = linear_gaussian()
    x = marginal.sample((30,))
    y = torch.zeros(30, dtype=torch.long)
    batches = [(x[s : s + 8], y[s : s + 8]) for s in range(0, 30, 8)]
    r = evaluate_log_likelihood(vae, batches, num_samples=3)
    assert r["num_images"] == 30 and r["num_samples"] == 3
    assert r["neg_log_likelihood"] == pytest.approx(-marginal.log_prob(x).mean().item(), abs=1e-4)
    sd = marginal.log_prob(x).std().item()
    assert r["std_error"] == pytest.approx(sd / math.sqrt(30), rel=1e-3)


def test_bad_sample_counts_are_value_errors():
    vae, marginal, _ = linear_gaussian()
    x = marginal.sample((2,))
    with pytest.raises(ValueError, match="num_samples"):
        log_marginal(vae.model, vae.guide, x, None, num_samples=0)
    with pytest.raises(ValueError, match="k must lie"):
        iw_bound(torch.zeros(10, 2), 11)


@pytest.mark.mnist
def test_cli_evaluate_writes_nll_and_protocol(mnist_dir, tmp_path):
    run = tmp_path / "run"
    common = ["--data-dir", str(mnist_dir), "--device", "cpu"]
    train = ["train", "--out", str(run), "--epochs", "1", "--train-subset", "256"]
    train += ["--test-subset", "64", "--hidden-dims", "16", "--z-dim", "4", "--no-progress"]
    assert main(train + common) == 0
    ev = ["evaluate", str(run), "--num-samples", "20", "--test-subset", "40", "--batch-size", "16"]
    assert main(ev + common + ["--seed", "3"]) == 0
    report = json.loads((run / "eval.json").read_text())
    ll = report["log_likelihood"]
    assert (report["split"], report["data_mode"], report["seed"]) == ("test", "dynamic", 3)
    assert (ll["num_samples"], ll["num_images"]) == (20, 40)
    # -log p(x) <= -L_20 <= ... : the NLL estimate lies below both -ELBO estimates.
    for r in report["elbo"]:
        assert ll["neg_log_likelihood"] < r["neg_elbo"]
    assert main(ev[:2] + ["--num-samples", "-1"] + common) == 2


@pytest.mark.parametrize("likelihood", ["discretized-logistic", "gaussian"])
def test_nll_lies_below_the_elbo_in_bits_per_dim_on_8_bit_data(likelihood):
    # 8-bit images: 4 stroke patterns (value ~200) on a noisy dark background, 12 copies each.
    g = torch.Generator().manual_seed(2)
    x_dim = 64
    strokes = (torch.rand(4, x_dim, generator=g) < 0.3).repeat(12, 1)
    noise = torch.randint(0, 56, strokes.shape, generator=g)
    raw = (strokes * 200 + noise).to(torch.uint8)
    vae = VAE(z_dim=4, hidden_dims=(32,), x_dim=x_dim, likelihood=likelihood)
    mode = resolve_data_mode("auto", vae.likelihood)  # the data each likelihood gets
    optim = torch.optim.Adam(vae.parameters(), lr=1e-2)
    for _ in range(60):
        optim.zero_grad()
        elbo_terms(vae.model, vae.guide, to_pixels(raw, mode, vae.likelihood)).loss.backward()
        optim.step()
    test = [(to_pixels(raw, mode, vae.likelihood, generator=g), torch.zeros(len(raw)))]
    with torch.no_grad():
        elbo = evaluate_elbo(vae, test, "trace", num_particles=20, data_mode=mode)
        nll = evaluate_log_likelihood(vae, test, num_samples=500, data_mode=mode)
    added = x_dim * math.log(256) if mode == "dequantize" else 0.0
    assert nll["data"] == elbo["data"] == ("8-bit dequantized" if added else "8-bit discrete")
    assert nll["nats_per_image"] == pytest.approx(nll["neg_log_likelihood"] + added)
    assert elbo["nats_per_image"] == pytest.approx(elbo["neg_elbo"] + added)
    margin = 2 * nll["std_error_bits_per_dim"]
    assert 0 < nll["bits_per_dim"] <= elbo["bits_per_dim"] + margin
    # Negative control: the two in different units (one with the D log 256 term, one
    # without: 8 bits/dim apart) break the inequality by far more than the margin.
    if added:
        assert nll["bits_per_dim"] > bits_per_dim(elbo["neg_elbo"], x_dim) + 10 * margin
    else:
        wrong = bits_per_dim(nll["neg_log_likelihood"] + dequantization_nats(x_dim), x_dim)
        assert wrong > elbo["bits_per_dim"] + 10 * margin


@pytest.mark.parametrize("pyro_local", [False, True])
def test_replayed_chunks_give_the_eager_log_likelihood_on_the_same_draws(pyro_local):
    """The traced chunk of samples draws what Pyro draws: the same seed, the same NLL."""
    pyro.settings.set(module_local_params=pyro_local)
    torch.manual_seed(0)
    vae = VAE(z_dim=3, hidden_dims=(16,), num_classes=10)
    x = torch.bernoulli(torch.full((8, 784), 0.2))
    batches = [(x[:4], torch.arange(4)), (x[4:], torch.arange(4, 8))]
    results = {}
    for step in ("eager", "fx"):
        torch.manual_seed(3)
        # 50 samples in chunks of 8: six replayed chunks and a last one of 2, run eagerly.
        r = evaluate_log_likelihood(vae, batches, num_samples=50, chunk_size=8, step=step)
        results[step] = r["neg_log_likelihood"]
    assert results["fx"] == pytest.approx(results["eager"], rel=1e-6)
