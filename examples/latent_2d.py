"""Trains a VAE with a 2-D latent space and draws it: the decoded manifold and the encoded test set.

    python examples/latent_2d.py --data-dir ../shared/data --out runs/latent-2d --epochs 10

writes OUT/figures/manifold.png (decoder means over a grid of z, evenly spaced in [-2, 2]^2 by
default; --grid quantile places the points at N(0, 1) quantiles) and
OUT/figures/latent_scatter.png (posterior means of the test digits, coloured by digit), with
the run's other figures, checkpoint, config and per-epoch metrics. The blog post this follows
trains 50 epochs (--epochs 50); a few already show the digits sorting themselves in the plane.
"""

from __future__ import annotations

import argparse

from pyro_vae import TrainConfig, VAEConfig, train
from pyro_vae.data.torchvision_data import default_data_dir
from pyro_vae.figures.run_figures import GRID_EXTENT, GRID_SIZE, plot_run


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=default_data_dir(), help="folder holding MNIST/raw")
    p.add_argument("--out", default="runs/latent-2d", help="run directory")
    p.add_argument("--epochs", type=int, default=5, help="epochs (default 5; the seed used 50)")
    p.add_argument("--train-subset", type=int, default=0, help="first N training images (0 = all)")
    p.add_argument("--test-subset", type=int, default=0, help="first N test images (0 = all)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--grid", choices=["square", "quantile"], default="square")
    p.add_argument("--grid-extent", type=float, default=GRID_EXTENT, help="z in [-E, E]^2")
    p.add_argument("--grid-size", type=int, default=GRID_SIZE, help="digits per side")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    config = TrainConfig(
        data_dir=args.data_dir,
        out=args.out,
        epochs=args.epochs,
        data_mode="dynamic",
        seed=args.seed,
        device=args.device,
        train_subset=args.train_subset,
        test_subset=args.test_subset,
    )
    metrics = train(VAEConfig(z_dim=2, hidden_dims=(400,)), config, write_figures=False)
    print(f"test -ELBO {metrics[-1]['test_neg_elbo']:.2f} nats/image")
    paths = plot_run(
        args.out,
        args.data_dir,
        device=args.device,
        grid=args.grid,
        grid_extent=args.grid_extent,
        grid_size=args.grid_size,
    )
    for path in paths:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
