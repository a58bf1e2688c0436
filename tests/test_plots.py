"""Every plotting function returns a Figure with the axes and images it promises and no NaN
pixels; ``pyro-vae plot`` writes every file its help lists, unconditional and conditional."""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pyro_vae import TrainConfig, VAEConfig, plots
from pyro_vae.cli import build_parser, main
from pyro_vae.figures import FIGURES, figure_names
from pyro_vae.train import train

RNG = np.random.default_rng(0)


def imgs(*shape: int) -> np.ndarray:
    return RNG.random((*shape, 784))


def rendered(fig: Figure) -> np.ndarray:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())


def check(fig: Figure, axes: int, images: int) -> None:
    assert isinstance(fig, Figure)
    assert len(fig.axes) == axes
    assert sum(len(ax.images) for ax in fig.axes) == images
    for ax in fig.axes:
        for im in ax.images:
            assert not np.isnan(np.asarray(im.get_array(), dtype=float)).any()
    pixels = rendered(fig)
    assert pixels.size and not np.isnan(pixels.astype(float)).any()
    assert pixels[..., :3].std() > 0  # something was drawn


METRICS = [
    {
        "epoch": e,
        **{
            f"{s}_{k}": 100.0 / e + i
            for i, k in enumerate(("neg_elbo", "recon", "kl"))
            for s in ("train", "test")
        },
    }
    for e in range(1, 5)
]


@pytest.mark.parametrize(
    "make,axes,images",
    [
        (lambda: plots.image_grid(imgs(10), ncols=5, title="t"), 1, 1),
        (lambda: plots.reconstructions_figure(imgs(8), imgs(8)), 1, 1),
        (lambda: plots.samples_figure(imgs(16)), 1, 1),
        (lambda: plots.class_grid_figure(imgs(30), 10, 3), 1, 1),
        (lambda: plots.training_curves_figure(METRICS), 3, 0),
        (lambda: plots.manifold_figure(imgs(12), [0, 1, 2, 3], [0, 1, 2]), 1, 1),
        (lambda: plots.class_manifolds_figure(imgs(10, 4), [0, 1], [0, 1]), None, 10),
        (
            lambda: plots.latent_scatter_figure(RNG.normal(size=(50, 2)), np.arange(50) % 10),
            None,
            0,
        ),
        (
            lambda: plots.interpolation_figure(imgs(2), imgs(2, 5), imgs(2), np.linspace(0, 1, 5)),
            1,
            1,
        ),
    ],
    ids=[
        "grid",
        "reconstructions",
        "samples",
        "class-grid",
        "curves",
        "manifold",
        "class-manifolds",
        "scatter",
        "interpolation",
    ],
)
def test_plot_functions(make, axes, images):
    fig = make()
    n_axes = len(fig.axes) if axes is None else axes
    assert n_axes >= 1
    check(fig, n_axes, images)


def test_scatter_has_a_legend_or_colour_bar():
    fig = plots.latent_scatter_figure(RNG.normal(size=(50, 2)), np.arange(50) % 10)
    has_legend = any(ax.get_legend() is not None for ax in fig.axes)
    assert has_legend or len(fig.axes) == 2  # scatter + colour bar
    assert fig.axes[0].get_xlabel() and fig.axes[0].get_ylabel()


def test_help_lists_every_figure():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    help_text = sub.choices["plot"].format_help()
    for spec in FIGURES:
        assert spec.name in help_text


@pytest.fixture(scope="module", params=[0, 10], ids=["vae", "cvae"])
def tiny_run(request, tmp_path_factory, mnist_dir):
    out = tmp_path_factory.mktemp("plot") / "run"
    pyro.settings.set(module_local_params=True)
    config = VAEConfig(z_dim=2, hidden_dims=(32,), num_classes=request.param)
    train(
        config,
        TrainConfig(
            data_dir=str(mnist_dir),
            out=str(out),
            epochs=1,
            train_subset=500,
            test_subset=100,
            device="cpu",
        ),
        progress=False,
        log=lambda s: None,
        write_figures=False,
    )
    pyro.settings.set(module_local_params=False)
    return out, config


def test_plot_command_writes_every_listed_file(tiny_run, mnist_dir):
    out, config = tiny_run
    assert not (out / "figures").exists()
    assert (
        main(
            ["plot", str(out), "--data-dir", str(mnist_dir), "--device", "cpu", "--grid-size", "4"]
        )
        == 0
    )
    written = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert written == sorted(figure_names(config))
    # z_dim = 2: the manifold(s) are among them.
    assert ("class_manifolds.png" if config.num_classes else "manifold.png") in written
    for name in written:
        assert (out / "figures" / name).stat().st_size > 2000


def test_plot_on_a_missing_run_is_one_line(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "nope")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_z_dim_above_two_uses_pca(mnist_dir, tmp_path):
    from pyro_vae.data import MNISTData
    from pyro_vae.figures import make_figures

    vae = __import__("pyro_vae").VAE(5, (16,))
    data = MNISTData.load(mnist_dir, vae.likelihood, "dynamic", train_subset=1, test_subset=60)
    torch.manual_seed(0)
    figs = make_figures(vae, data, METRICS)
    assert "manifold.png" not in figs
    assert "PCA" in figs["latent_scatter.png"].axes[0].get_title()
