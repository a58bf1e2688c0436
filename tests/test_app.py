"""The functions behind the explorer's page (pyro_vae.app.explorer), without a browser or Gradio.

Each runs in both Pyro modes, the VAE built under the setting it runs with. The oracles are the
library's own pieces: ``VAE.decode``, ``loglik.log_marginal``, ``elbo.elbo_terms`` on the same
random draws, and an SVD of the encoded test set.
"""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch

from pyro_vae import VAE
from pyro_vae.app.explorer import Explorer, drawing_to_pixels, latent_axes, to_image
from pyro_vae.data.torchvision_data import load_mnist
from pyro_vae.inference.loglik import log_marginal
from pyro_vae.inference.objectives import elbo_terms
from pyro_vae.models.priors import as_latent_event
from pyro_vae.runtime.rng import seeded


@pytest.fixture(params=[False, True], ids=["param-store", "module-local"])
def pyro_mode(request) -> bool:
    pyro.settings.set(module_local_params=request.param)  # before any module is built
    return request.param


def make_explorer(z_dim: int, num_classes: int = 0, n: int = 64) -> Explorer:
    g = torch.Generator().manual_seed(1)
    x = torch.bernoulli(torch.full((n, 784), 0.2), generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return Explorer(VAE(z_dim=z_dim, hidden_dims=(32,), num_classes=num_classes), x, y)


def stroke(top: int = 40, left: int = 60, height: int = 150, width: int = 24) -> np.ndarray:
    """A white bar on a black 280x280 RGBA canvas, as the page's canvas sends it."""
    img = np.zeros((280, 280, 4), np.uint8)
    img[..., 3] = 255
    img[top : top + height, left : left + width, :3] = 255
    return img


@pytest.mark.parametrize("z_dim", [2, 5])
def test_decode_at_coords_is_the_decoder_mean_at_that_z(pyro_mode, z_dim):
    ex = make_explorer(z_dim)
    ax = ex.axes
    coords = torch.tensor([0.7, -1.2, 0.3, 2.0, -0.5][: ax.directions.shape[0]])
    residual = 0.1 * torch.randn(z_dim)
    z = ax.center + (coords * ax.scales) @ ax.directions + residual
    expected = ex.vae.decode(z[None])[0]
    assert torch.allclose(ex.decode(coords.tolist(), residual=residual), expected)
    if z_dim == 2:  # the coordinates are z itself
        assert torch.allclose(ex.decode([0.7, -1.2]), ex.vae.decode(torch.tensor([[0.7, -1.2]]))[0])
    # z -> (coords, residual) -> z, and the residual is off the slider directions
    c, r = ax.to_coords(z)
    assert torch.allclose(ax.to_z(c, r), z, atol=1e-5)
    assert torch.allclose(r @ ax.directions.T, torch.zeros(len(c)), atol=1e-5)


def test_principal_directions_are_those_of_the_encoded_test_set():
    means = torch.randn(500, 6) * torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, 0.1])
    means = means @ torch.linalg.qr(torch.randn(6, 6))[0]  # rotated: no axis is special
    ax = latent_axes(means, num_sliders=3)
    d = ax.directions.double()
    assert torch.allclose(d @ d.T, torch.eye(3, dtype=d.dtype), atol=1e-5)
    cov = np.cov(means.double().numpy().T)
    evals, evecs = np.linalg.eigh(cov)  # ascending
    for i in range(3):
        assert abs(float(d[i] @ torch.from_numpy(evecs[:, -1 - i]))) == pytest.approx(1, abs=1e-4)
        assert ax.scales[i].item() ** 2 == pytest.approx(evals[-1 - i], rel=1e-4)
    # Negative control: a random direction carries less variance than the first one.
    u = torch.nn.functional.normalize(torch.randn(6, dtype=torch.float64), dim=0)
    assert float(u @ torch.from_numpy(cov) @ u) < evals[-1]
    # 99% of the test set lies inside the sliders' range
    coords = ax.to_coords(means)[0]
    assert (coords.abs() <= ax.extent).float().mean() >= 0.99


def test_drawing_is_scaled_centred_and_binarized_like_mnist():
    x = drawing_to_pixels(stroke(top=10, left=20), binary=True)
    assert x.shape == (784,) and set(x.unique().tolist()) == {0.0, 1.0}
    img = x.reshape(28, 28)
    rows = img.sum(1).nonzero().flatten()
    assert rows.max() - rows.min() + 1 == 20  # the longest side fills a 20-pixel box
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    com = ((ys * img).sum() / img.sum(), (xs * img).sum() / img.sum())
    # centred by its centre of mass, though it was drawn in the top-left corner
    assert abs(com[0] - 14) <= 1 and abs(com[1] - 14) <= 1
    assert drawing_to_pixels(np.zeros((280, 280, 4), np.uint8), binary=True) is None
    assert drawing_to_pixels(np.zeros((280, 280), np.uint8), binary=False) is None


def test_drawing_gets_the_likelihoods_representation():
    slanted = stroke(width=0)
    for i in range(150):  # a slanted line: its edges cover pixels of the 28x28 image in part
        slanted[40 + i, 60 + i // 3 : 72 + i // 3, :3] = 255
    gray = drawing_to_pixels(slanted, binary=False)
    assert ((gray > 0) & (gray < 1)).any()  # anti-aliased edges stay grey
    assert set(drawing_to_pixels(slanted, binary=True).unique().tolist()) == {0.0, 1.0}
    beta = VAE(z_dim=2, hidden_dims=(8,), likelihood="beta").likelihood
    squeezed = drawing_to_pixels(stroke(), binary=False, likelihood=beta)
    assert squeezed.min() > 0 and squeezed.max() < 1
    beta.check(squeezed)  # inside the beta likelihood's support


@pytest.mark.mnist
def test_an_mnist_digit_drawn_large_comes_back_as_itself(mnist_dir):
    # MNIST digits are already 20x20-box scaled and centred: a 10x enlarged copy, as if drawn
    # on the canvas, must come back close to the original.
    x, _ = load_mnist(mnist_dir, train=False)
    for img in x[:20]:
        big = np.kron(img.reshape(28, 28).numpy(), np.ones((10, 10), np.uint8))
        back = drawing_to_pixels(big, binary=False)
        assert (back - img.float() / 255).abs().mean() < 0.05


def test_score_is_the_libraries_log_marginal_and_elbo_on_the_same_draws(pyro_mode):
    ex = make_explorer(3)
    x = drawing_to_pixels(stroke(), binary=True)
    s = ex.score_drawing(x, num_samples=200, seed=5)
    with torch.no_grad(), seeded(5):
        expected = log_marginal(ex.vae.model, ex.vae.guide, x[None], None, num_samples=200)
    assert s.log_likelihood == pytest.approx(expected.item(), abs=1e-4)
    with torch.no_grad(), seeded(5):
        t = elbo_terms(ex.vae.model, ex.vae.guide, x[None], None, num_particles=200)
    assert s.neg_elbo == pytest.approx((t.kl - t.log_lik).item(), rel=1e-5)
    assert s.log_likelihood >= -s.neg_elbo  # L_K >= L_1 on the same draws (Jensen)
    assert torch.equal(s.reconstruction, ex.vae.reconstruct(x[None])[0])
    assert np.isfinite(s.log_likelihood) and s.label is None
    # Seeded: the same drawing gets the same numbers; another seed other numbers.
    assert ex.score_drawing(x, 200, seed=5).log_likelihood == s.log_likelihood
    assert ex.score_drawing(x, 200, seed=6).log_likelihood != s.log_likelihood


def test_cvae_scores_every_label_and_classifies_by_it(pyro_mode):
    ex = make_explorer(2, num_classes=10)
    x = drawing_to_pixels(stroke(), binary=True)
    s = ex.score_drawing(x, num_samples=100, seed=3)
    labels = torch.arange(10)
    with torch.no_grad(), seeded(3):
        expected = log_marginal(
            ex.vae.model, ex.vae.guide, x.expand(10, -1), labels, num_samples=100
        )
    assert s.label_log_likelihoods == pytest.approx(expected.tolist(), abs=1e-4)
    assert s.label == int(expected.argmax()) and s.log_likelihood == max(s.label_log_likelihoods)
    assert sum(s.label_probabilities) == pytest.approx(1)
    assert s.label_probabilities == pytest.approx(expected.softmax(0).tolist(), abs=1e-5)
    y = torch.tensor([s.label])
    assert torch.equal(s.reconstruction, ex.vae.reconstruct(x[None], y)[0])


@pytest.mark.parametrize("num_classes", [0, 10])
def test_interpolation_walks_between_the_two_codes(pyro_mode, num_classes):
    ex = make_explorer(4, num_classes)
    label = 7 if num_classes else None
    y = torch.tensor([7]) if num_classes else None
    za, zb = ex.means[3], ex.means[10]
    for t, z in ((0.0, za), (1.0, zb), (0.25, 0.75 * za + 0.25 * zb)):
        expected = ex.vae.decode(z[None], y)[0]
        assert torch.allclose(ex.interpolate(3, 10, t, label), expected, atol=1e-6)
    assert not torch.allclose(ex.interpolate(3, 10, 0.0, label), ex.interpolate(3, 10, 1.0, label))
    if num_classes:  # the codes come from q(z | x, y) with each image's own label
        assert torch.allclose(za, ex.vae.encode(ex.test_x[3:4], ex.test_y[3:4])[0][0])


@pytest.mark.parametrize("num_classes", [0, 10])
def test_sample_from_the_prior_is_a_prior_draw(pyro_mode, num_classes):
    ex = make_explorer(5, num_classes)
    label = 2 if num_classes else None
    with seeded(11):
        coords, residual = ex.sample_prior(label)
    with seeded(11), torch.no_grad():
        prior = ex.vae.model.prior(torch.tensor([2]) if num_classes else None)
        prior = as_latent_event(prior, 5)
        z = prior.sample((1,) if not prior.batch_shape else ()).reshape(5)
    assert torch.allclose(ex.axes.to_z(torch.tensor(coords), residual), z, atol=1e-5)
    assert all(abs(c) <= ex.axes.extent for c in coords)


def test_bad_requests_are_value_errors_that_say_what_to_do():
    cvae = make_explorer(2, num_classes=10)
    with pytest.raises(ValueError, match=r"label in \[0, 10\)"):
        cvae.decode([0.0, 0.0], label=None)
    with pytest.raises(ValueError, match=r"label in \[0, 10\)"):
        cvae.decode([0.0, 0.0], label=10)
    with pytest.raises(ValueError, match=r"outside \[0, 64\)"):
        cvae.interpolate(0, 64, 0.5, label=1)
    with pytest.raises(ValueError, match="num_samples must be at least 1"):
        cvae.score_drawing(torch.zeros(784), num_samples=0)
    with pytest.raises(ValueError, match="at least 2 test images"):
        make_explorer(2, n=1)


def test_drawings_of_a_grayscale_model_stay_grayscale():
    vae = VAE(z_dim=2, hidden_dims=(8,), likelihood="continuous-bernoulli")
    ex = Explorer(vae, torch.rand(10, 784), torch.zeros(10, dtype=torch.long))
    assert not ex.binary
    assert make_explorer(2).binary  # negative control: binary test data, binary drawings
    img = to_image(torch.linspace(-1, 2, 784))
    assert img.dtype == np.uint8 and img.shape == (28, 28) and img.min() == 0 and img.max() == 255
