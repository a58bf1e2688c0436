"""The figures: each plotting function draws what it promises (axes, images, finite pixels, the
right digit in the right place), and `pyro-vae plot` writes every file its --help lists."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.image import AxesImage, imread

import pyro_vae.cli.main as cli
from pyro_vae import VAE
from pyro_vae.data.images import ImageData
from pyro_vae.figures import plots
from pyro_vae.figures.run_figures import (
    FIGURES,
    figure_names,
    grid_values,
    interpolation_pairs,
    make_figures,
    pca_2d,
)
from pyro_vae.models.config import VAEConfig
from pyro_vae.models.likelihoods import BernoulliLikelihood

IMAGE = 28 * 28


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, IMAGE, generator=torch.Generator().manual_seed(seed))


def constant_images(values) -> torch.Tensor:
    """One flat image per value: lets a test find which input landed where."""
    return torch.tensor(values, dtype=torch.float32)[:, None].expand(-1, IMAGE).clone()


def render(fig) -> np.ndarray:
    """Draws the figure with Agg; returns its RGBA pixels after checking they are all finite."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    w, h = canvas.get_width_height()
    assert rgba.shape == (h, w, 4)
    assert rgba[..., :3].std() > 0, "the figure rendered as one flat colour"
    for ax in fig.axes:
        for im in ax.get_images():
            data = np.ma.getdata(im.get_array())
            # NaN pixels would render as the colour map's "bad" colour, silently.
            assert np.isfinite(data).all() and not np.ma.is_masked(im.get_array())
    return rgba


def image_counts(fig) -> list[int]:
    return [sum(isinstance(a, AxesImage) for a in ax.get_images()) for ax in fig.axes]


def canvas_cell(fig, row: int, col: int, pad: int = 2, ax: int = 0) -> np.ndarray:
    step = 28 + pad
    arr = np.asarray(fig.axes[ax].get_images()[0].get_array())
    return arr[row * step : row * step + 28, col * step : col * step + 28]


def test_reconstructions_alternate_real_and_reconstructed_columns():
    x, r = constant_images([0.1, 0.2, 0.3, 0.4]), constant_images([0.9, 0.8, 0.7, 0.6])
    fig = plots.reconstructions_figure(x, r, pairs_per_row=2)
    render(fig)
    assert image_counts(fig) == [1]
    # Row 1 holds pair 2 and 3: x, x_hat, x, x_hat.
    got = [canvas_cell(fig, 1, c).mean() for c in range(4)]
    np.testing.assert_allclose(got, [0.3, 0.7, 0.4, 0.6], atol=1e-6)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == [r"$x$", r"$\hat{x}$"] * 2


@pytest.mark.parametrize("fn", [plots.samples_figure, plots.image_grid])
def test_image_grids_draw_one_image_with_every_digit(fn):
    fig = fn(constant_images(np.linspace(0.05, 0.95, 12)), ncols=4)
    render(fig)
    assert image_counts(fig) == [1]
    np.testing.assert_allclose(canvas_cell(fig, 2, 3).mean(), 0.95, atol=1e-6)


def test_class_grid_puts_label_k_on_row_k():
    c, per = 10, 3
    fig = plots.class_grid_figure(constant_images(np.repeat(np.arange(c) / 10, per)), c, per)
    render(fig)
    assert image_counts(fig) == [1]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [str(k) for k in range(c)]
    np.testing.assert_allclose(canvas_cell(fig, 7, 2).mean(), 0.7, atol=1e-6)


def metric_rows(n: int) -> list[dict]:
    rows = []
    for e in range(1, n + 1):
        row = {"epoch": e}
        for split in ("train", "test"):
            row[f"{split}_recon"] = 100 / e
            row[f"{split}_kl"] = 20 + e
            row[f"{split}_neg_elbo"] = row[f"{split}_recon"] + row[f"{split}_kl"]
        rows.append(row)
    return rows


def test_training_curves_have_three_panels_of_train_and_test():
    fig = plots.training_curves_figure(metric_rows(4))
    render(fig)
    assert len(fig.axes) == 3 and image_counts(fig) == [0, 0, 0]
    kl_ax = fig.axes[2]
    assert [ln.get_label() for ln in kl_ax.get_lines()] == ["train", "test"]
    np.testing.assert_allclose(kl_ax.get_lines()[0].get_ydata(), [21, 22, 23, 24])
    assert all(ax.get_xlabel() == "epoch" for ax in fig.axes)
    with pytest.raises(ValueError, match="no metrics"):
        plots.training_curves_figure([])


def test_manifold_draws_largest_z2_at_the_top_and_labels_its_axes():
    z1, z2 = [-1.0, 0.0, 1.0], [-2.0, 2.0]
    # Image i * len(z1) + j is decoded at (z1[j], z2[i]); value encodes (i, j).
    vals = [(i * 3 + j + 1) / 10 for i in range(2) for j in range(3)]
    fig = plots.manifold_figure(constant_images(vals), z1, z2)
    render(fig)
    assert image_counts(fig) == [1]
    arr = np.asarray(fig.axes[0].get_images()[0].get_array())
    assert arr.shape == (2 * 28, 3 * 28)
    assert arr[0, 0] == pytest.approx(0.4)  # top-left: z = (-1, 2)
    assert arr[-1, -1] == pytest.approx(0.3)  # bottom-right: z = (1, -2)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "$z_1$" and ax.get_ylabel() == "$z_2$"
    assert {float(t.get_text()) for t in ax.get_xticklabels()} <= {-1.0, -0.5, 0.0, 0.5, 1.0}


def test_class_manifolds_have_one_image_per_label():
    v = grid_values(4)
    fig = plots.class_manifolds_figure(images(10 * 16).reshape(10, 16, IMAGE), v, v)
    render(fig)
    assert image_counts(fig) == [1] * 10
    assert [ax.get_title() for ax in fig.axes] == [f"y = {k}" for k in range(10)]


def test_latent_scatter_colours_by_digit_with_a_legend():
    pts = torch.randn(300, 2, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(300) % 10
    fig = plots.latent_scatter_figure(pts, labels, xlabel="PC 1", ylabel="PC 2")
    render(fig)
    assert image_counts(fig) == [0]
    ax = fig.axes[0]
    assert len(ax.collections[0].get_offsets()) == 300
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [str(k) for k in range(10)]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("PC 1", "PC 2")


def test_interpolation_puts_the_two_test_digits_at_the_ends():
    p, k = 2, 5
    paths = constant_images(np.full(p * k, 0.5)).reshape(p, k, IMAGE)
    fig = plots.interpolation_figure(
        constant_images([0.1, 0.2]), paths, constant_images([0.8, 0.9]), np.linspace(0, 1, k)
    )
    render(fig)
    assert image_counts(fig) == [1]
    # Columns: start, blank, k decoded points, blank, end.
    assert canvas_cell(fig, 1, 0).mean() == pytest.approx(0.2)
    assert canvas_cell(fig, 1, k + 3).mean() == pytest.approx(0.9)
    assert canvas_cell(fig, 0, 1).max() == 0.0
    assert canvas_cell(fig, 0, 2).mean() == pytest.approx(0.5)


def test_grid_values_square_and_quantile():
    sq = grid_values(5, "square", 2.0)
    np.testing.assert_allclose(sq, [-2, -1, 0, 1, 2])
    q = grid_values(6, "quantile", 2.0)
    np.testing.assert_allclose([q[0], q[-1]], [-2, 2], atol=1e-9)
    np.testing.assert_allclose(q, -q[::-1], atol=1e-9)
    # Equal prior mass between neighbours: the steps shrink towards the origin.
    steps = np.diff(q)
    assert steps[0] > steps[2] and steps[-1] > steps[2]
    with pytest.raises(ValueError, match="spacing"):
        grid_values(5, "polar")


def test_pca_finds_the_dominant_direction():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2000, 5, generator=g) * torch.tensor([5.0, 0.1, 2.0, 0.1, 0.1])
    proj, share = pca_2d(z)
    assert proj.shape == (2000, 2)
    # Variance shares 25/29.04 and 4/29.04; sampling error of the estimate ~ 3%.
    np.testing.assert_allclose(share.numpy(), [25 / 29.04, 4 / 29.04], rtol=0.1)
    assert torch.corrcoef(torch.stack([proj[:, 0], z[:, 0]]))[0, 1].abs() > 0.99


def test_interpolation_pairs_join_different_digits_or_the_same_label_for_a_cvae():
    y = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 0])
    for a, b in interpolation_pairs(y, conditional=False, rows=4):
        assert y[a] != y[b]
    pairs = interpolation_pairs(y, conditional=True, rows=4)
    assert pairs and all(y[a] == y[b] and a != b for a, b in pairs)


def synthetic_data(n: int = 60) -> ImageData:
    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((n, IMAGE), 0.2), generator=g)
    y = torch.arange(n) % 10
    return ImageData(
        train_x=(x * 255).to(torch.uint8),
        train_y=y,
        test_x=x,
        test_y=y,
        data_mode="threshold",
        likelihood=BernoulliLikelihood(),
    )


@pytest.mark.parametrize(
    "z_dim, num_classes, prior",
    [(2, 0, "normal"), (3, 0, "normal"), (2, 10, "normal"), (1, 0, "normal"), (2, 0, "mog")],
    ids=["2d", "pca", "cvae-2d", "1d", "mog-2d"],
)
def test_make_figures_draws_exactly_the_figures_that_apply(z_dim, num_classes, prior):
    vae = VAE(z_dim=z_dim, hidden_dims=(16,), num_classes=num_classes, prior=prior)
    rng = torch.get_rng_state()
    figs = make_figures(vae, synthetic_data(), metric_rows(2), grid_size=4)
    assert torch.equal(torch.get_rng_state(), rng), "figures must not move the caller's RNG"
    assert sorted(figs) == sorted(figure_names(vae.config))
    for fig in figs.values():
        render(fig)
    if z_dim > 2:
        assert "PCA" in figs["latent_scatter.png"].axes[0].get_title()


def test_class_manifolds_are_centred_on_each_label_prior():
    vae = VAE(z_dim=2, hidden_dims=(16,), num_classes=10, prior="conditional")
    with torch.no_grad():
        vae.model.prior.locs.copy_(torch.arange(10.0)[:, None] * torch.tensor([10.0, -10.0]))
    fig = make_figures(vae, synthetic_data(), [], grid_size=4)["class_manifolds.png"]
    for k, ax in enumerate(fig.axes):
        xs = [float(t.get_text().replace("\u2212", "-")) for t in ax.get_xticklabels()]
        ys = [float(t.get_text().replace("\u2212", "-")) for t in ax.get_yticklabels()]
        # The grid spans the prior mean of label k, +-2 prior sd (here sd 1).
        assert xs and min(xs) >= 10 * k - 2 and max(xs) <= 10 * k + 2
        assert ys and min(ys) >= -10 * k - 2 and max(ys) <= -10 * k + 2


def help_files(capsys) -> set[str]:
    with pytest.raises(SystemExit):
        cli.main(["plot", "--help"])
    return set(re.findall(r"\b\w+\.png\b", capsys.readouterr().out))


def test_help_lists_every_figure(capsys):
    assert help_files(capsys) == {f.name for f in FIGURES}


@pytest.mark.mnist
def test_plot_writes_every_file_its_help_lists(mnist_dir, tmp_path, capsys):
    listed = help_files(capsys)
    written: set[str] = set()
    for name, extra in (("vae", []), ("cvae", ["--num-classes", "10"])):
        run = tmp_path / name
        args = ["--data-dir", str(mnist_dir), "--device", "cpu"]
        train = ["train", "--out", str(run), "--z-dim", "2", "--hidden-dims", "32", "--epochs", "1"]
        train += ["--train-subset", "256", "--test-subset", "100", "--no-progress", *args, *extra]
        assert cli.main(train) == 0
        for png in (run / "figures").glob("*.png"):
            png.unlink()  # training drew them; `plot` must draw them again
        assert cli.main(["plot", str(run), "--grid", "quantile", *args]) == 0
        files = {p.name for p in (run / "figures").iterdir()}
        config = VAEConfig(z_dim=2, num_classes=10 if extra else 0)
        assert files == set(figure_names(config)) and files <= listed
        for f in files:
            assert imread(run / "figures" / f).shape[0] > 100, f
        assert capsys.readouterr().out.count("wrote ") == len(files)
        written |= files
    assert written == listed, f"no run wrote {sorted(listed - written)}"


@pytest.mark.mnist
def test_plot_reports_a_missing_run_in_one_line(tmp_path, capsys):
    assert cli.main(["plot", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no checkpoint" in err


def test_saved_pngs_are_palette_images_that_keep_grey_exact_and_colours(tmp_path):
    from PIL import Image

    from pyro_vae.figures.run_figures import save_png

    fig = plots.samples_figure(images(16))
    save_png(fig, tmp_path / "grey.png")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    drawn = np.asarray(canvas.buffer_rgba())[..., :3]
    with Image.open(tmp_path / "grey.png") as im:
        assert im.mode == "P"  # a palette: read back as RGB by any reader
        saved = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(saved, drawn)  # grey shades survive exactly
    labels = torch.arange(200) % 10
    save_png(plots.latent_scatter_figure(torch.randn(200, 2), labels), tmp_path / "colour.png")
    with Image.open(tmp_path / "colour.png") as im:
        colour = np.asarray(im.convert("RGB")).astype(int)
    # The digits' colours survive the palette: some pixels are far from grey.
    assert (colour.max(-1) - colour.min(-1)).max() > 100


def test_images_of_any_shape_tile_whole_and_a_wrong_shape_is_refused():
    # Two 3x5 images, pixel values naming their position: each lands whole in its cell.
    imgs = torch.arange(30, dtype=torch.float32).reshape(2, 15) / 30
    canvas = plots.tile(imgs, ncols=2, pad=1, image_shape=(3, 5))
    assert canvas.shape == (3, 11)
    np.testing.assert_allclose(canvas[:, :5], imgs[0].reshape(3, 5).numpy())
    np.testing.assert_allclose(canvas[:, 6:], imgs[1].reshape(3, 5).numpy())
    assert plots.shape_of(256) == (1, 16, 16) and plots.shape_of(784) == (1, 28, 28)
    assert plots.shape_of(15, (1, 3, 5)) == plots.shape_of(15, (3, 5)) == (1, 3, 5)
    with pytest.raises(ValueError, match="not square; pass image_shape"):
        plots.tile(imgs, ncols=2)  # 15 pixels: no square side
    with pytest.raises(ValueError, match="image_shape 4x4 does not hold images of 15 values"):
        plots.samples_figure(imgs, image_shape=(4, 4))
    fig = plots.interpolation_figure(
        imgs, imgs[:, None].expand(2, 3, 15), imgs, [0.0, 0.5, 1.0], image_shape=(3, 5)
    )
    (image,) = fig.axes[0].get_images()
    assert image.get_array().shape == (2 * 5 - 2, 7 * 7 - 2)  # 2 rows of 3 + 4 cells of 3x5


def test_rgb_images_are_drawn_in_their_colours_channel_by_channel():
    """[N, 3*H*W] values channel by channel (C, H, W) land as [H, W, 3] colours in the canvas;
    the gaps are the grey of the grayscale figures; white is 1 (0 under gray_r)."""
    h, w = 3, 4
    img = torch.zeros(3, h, w)
    img[0, 0, 0], img[1, 1, 2], img[2, 2, 3] = 1.0, 0.5, 0.25  # one value per channel
    canvas = plots.tile(img.reshape(1, -1).expand(2, -1), ncols=2, pad=1, image_shape=(3, h, w))
    assert canvas.shape == (h, 2 * w + 1, 3)
    np.testing.assert_allclose(canvas[:, :w], img.permute(1, 2, 0).numpy())
    np.testing.assert_allclose(canvas[:, w], 1 - plots.GAP_VALUE)
    assert plots.blank_value(canvas) == 1.0 and plots.blank_value(canvas[..., 0]) == 0.0
    fig = plots.samples_figure(img.reshape(1, -1), ncols=1, image_shape=(3, h, w))
    (image,) = fig.axes[0].get_images()
    assert image.get_array().shape == (h, w, 3) and image.get_cmap().name != "gray_r"
    with pytest.raises(ValueError, match="images of 2 channels cannot be drawn"):
        plots.shape_of(24, (2, h, w))
