"""The estimator comparison: the numbers it reports must be true.

- On the linear-Gaussian VAE both estimators agree with the closed-form ELBO (and each other)
  within 3 standard errors.
- Under a Normal prior, far from the posterior (an untrained encoder), the analytic-KL
  estimator has the lower per-image variance and the lower encoder-gradient noise; the decoder
  gradient is the same for both. Near the posterior this can flip: at q = p(z | x) the
  Trace_ELBO value is exactly constant.
- The gradient noise falls like 1 / particles; the IW bound is non-decreasing in K.
"""

from __future__ import annotations

import json
import math

import pyro
import pytest
import torch
from matplotlib.figure import Figure
from test_loglik import exact_elbo, linear_gaussian

from pyro_vae import VAE, load_vae, train
from pyro_vae.cli.main import main
from pyro_vae.data.images import ImageData
from pyro_vae.evaluation.compare import (
    compare_estimators,
    elbo_summary,
    format_table,
    gradient_variance,
    repeated_elbos,
)
from pyro_vae.figures.compare import comparison_figure, learning_curves_figure
from pyro_vae.models.config import VAEConfig
from pyro_vae.runs.options import TrainConfig


@pytest.fixture(autouse=True)
def _module_local_params():
    pyro.settings.set(module_local_params=True)  # conftest resets it after each test


@pytest.fixture(scope="module")
def trained_run(mnist_dir, tmp_path_factory):
    """A small VAE trained for one epoch on 1000 MNIST images, and 200 binarized test images."""
    out = tmp_path_factory.mktemp("compare") / "run"
    vae_config = VAEConfig(z_dim=8, hidden_dims=(64,))
    config = TrainConfig(
        data_dir=str(mnist_dir),
        out=str(out),
        epochs=1,
        train_subset=1000,
        test_subset=200,
        device="cpu",
    )
    with pyro.settings.context(module_local_params=True):
        train(vae_config, config, progress=False, log=lambda s: None, write_figures=False)
        vae, _ = load_vae(out)
    data = ImageData.load(mnist_dir, vae.likelihood, "dynamic", train_subset=1, test_subset=200)
    return out, vae, data.test_x, data.test_y


def test_estimators_agree_with_the_closed_form_elbo():
    shift, factor = 0.5, 1.5
    vae, marginal, _ = linear_gaussian(shift, factor)
    x = marginal.sample((50,))
    y = torch.zeros(50, dtype=torch.long)
    truth = exact_elbo(x, shift, factor).mean().item()
    stats = {
        e: elbo_summary(repeated_elbos(vae, x, y, e, repeats=40)) for e in ("trace", "meanfield")
    }
    t, m = stats["trace"], stats["meanfield"]
    for s in (t, m):
        assert abs(-s["neg_elbo"] - truth) < 3 * s["std_error"]
        # std over evaluations of a mean over N images = sqrt(per-image variance / N)
        assert s["std_over_evals"] == pytest.approx(math.sqrt(s["per_image_var"] / 50), rel=0.35)
    se_diff = math.hypot(t["std_error"], m["std_error"])
    assert abs(t["neg_elbo"] - m["neg_elbo"]) < 3 * se_diff


def test_trace_elbo_value_is_exact_when_the_guide_is_the_posterior():
    # The analytic KL does not always lower the variance of the ELBO *value*: with q = p(z | x),
    # log p(x, z) - log q(z | x) = log p(x) for every z, while log p(x | z) - KL still varies.
    vae, marginal, _ = linear_gaussian()
    x = marginal.sample((20,))
    y = torch.zeros(20, dtype=torch.long)
    t = elbo_summary(repeated_elbos(vae, x, y, "trace", repeats=10))
    m = elbo_summary(repeated_elbos(vae, x, y, "meanfield", repeats=10))
    assert t["per_image_var"] < 1e-8
    assert m["per_image_var"] > 0.1


@pytest.mark.mnist
def test_analytic_kl_is_less_noisy_far_from_the_posterior(trained_run):
    # An untrained encoder is far from the posterior, where the Monte Carlo KL adds its own noise
    # to the ELBO and to the encoder's gradient. (Near the posterior this can flip: see above.)
    _, _, x, y = trained_run
    vae = VAE(z_dim=8, hidden_dims=(64,))
    t = elbo_summary(repeated_elbos(vae, x, y, "trace", repeats=10))
    m = elbo_summary(repeated_elbos(vae, x, y, "meanfield", repeats=10))
    assert abs(t["neg_elbo"] - m["neg_elbo"]) < 3 * math.hypot(t["std_error"], m["std_error"])
    assert m["per_image_var"] < t["per_image_var"]
    g = {}
    for elbo in ("trace", "meanfield"):
        pyro.set_rng_seed(11)  # the same z draws for both estimators
        g[elbo] = gradient_variance(vae, x[:32], y[:32], elbo, 1, repeats=30)
    assert g["meanfield"]["encoder"]["trace_cov"] < g["trace"]["encoder"]["trace_cov"]
    # Under a Normal prior the KL term does not touch the decoder: identical gradients.
    assert g["trace"]["decoder"]["trace_cov"] == pytest.approx(
        g["meanfield"]["decoder"]["trace_cov"], rel=1e-4
    )


@pytest.mark.mnist
def test_gradient_noise_falls_like_one_over_particles(trained_run):
    _, vae, x, y = trained_run
    g = {p: gradient_variance(vae, x[:32], y[:32], "trace", p, repeats=30) for p in (1, 4)}
    for group in ("encoder", "decoder"):
        ratio = g[1][group]["trace_cov"] / g[4][group]["trace_cov"]
        assert 2 < ratio < 8, (group, ratio)
        assert g[4][group]["snr"] > g[1][group]["snr"]
    assert all(p.grad is None for p in vae.parameters())  # autograd.grad left .grad alone


@pytest.mark.mnist
def test_compare_estimators_report_and_figure(trained_run):
    _, vae, x, y = trained_run
    pyro.set_rng_seed(0)
    r = compare_estimators(
        vae,
        x,
        y,
        repeats=4,
        grad_batch=16,
        grad_repeats=5,
        particles=(1, 3),
        ks=(1, 5, 50, 200),
        iw_subset=60,
    )
    json.dumps(r)  # JSON-ready
    bounds = [r["iw_bound"][str(k)] for k in (1, 5, 50, 200)]
    for small, big in zip(bounds[:-1], bounds[1:], strict=True):
        # L_K is non-decreasing in K: judged on the same images, by the paired errors.
        assert big["gain"] >= small["gain"] - 3 * (small["gain_std_error"] + big["gain_std_error"])
    assert bounds[0]["gain"] == 0.0
    assert bounds[-1]["gain"] > 10 * bounds[-1]["gain_std_error"] > 0
    assert bounds[-1]["neg_bound"] == pytest.approx(bounds[0]["neg_bound"] - bounds[-1]["gain"])
    # L_1 is the ELBO in expectation: within noise of the -ELBO on the same 60 images. Only
    # the Monte Carlo noise differs (the images are the same): L_1 averages 200 draws per
    # image, the -ELBO 4 (one per repeat).
    var_l1 = r["estimators"]["Trace_ELBO"]["per_image_var"] / (60 * 200)
    for s in r["estimators"].values():
        se = math.sqrt(s["per_image_var"] / (60 * 4) + var_l1)
        assert abs(bounds[0]["neg_bound"] - s["neg_elbo_iw_subset"]) < 4 * se
    table = format_table(r)
    assert "Trace_ELBO" in table and "TraceMeanField_ELBO" in table and "200" in table
    assert isinstance(comparison_figure(r), Figure)
    curves = {"Trace_ELBO": {"step": [1, 2], "seconds": [0.1, 0.2], "neg_elbo": [200, 190]}}
    assert isinstance(learning_curves_figure(curves), Figure)


@pytest.mark.mnist
def test_cli_compare_elbo_writes_json_and_figure(trained_run, mnist_dir, tmp_path):
    run, *_ = trained_run
    args = ["compare-elbo", str(run), "--data-dir", str(mnist_dir), "--device", "cpu"]
    args += ["--test-subset", "40", "--repeats", "3", "--grad-batch", "8", "--grad-repeats", "3"]
    args += ["--particles", "1,2", "--ks", "1,5,20", "--iw-subset", "10", "--out", str(tmp_path)]
    assert main(args) == 0
    r = json.loads((tmp_path / "compare_elbo.json").read_text())
    assert r["protocol"]["ks"] == [1, 5, 20] and r["protocol"]["data_mode"] == "dynamic"
    assert set(r["estimators"]) == {"Trace_ELBO", "TraceMeanField_ELBO"}
    assert (tmp_path / "compare_elbo.png").stat().st_size > 0
    assert main(args[:6] + ["--repeats", "1"]) == 2  # a variance needs two evaluations
