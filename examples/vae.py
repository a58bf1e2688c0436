"""Trains the standard VAE on MNIST (Pyro's example network) and writes its pictures.

    python examples/vae.py --data-dir ../shared/data --out runs/example-vae --epochs 5

writes OUT/figures/reconstructions.png (test digits beside their reconstructions) and
OUT/figures/samples.png (decoder means at draws from the prior), with the run's checkpoint,
config and per-epoch metrics beside them.
"""

from __future__ import annotations

import argparse

from pyro_vae import TrainConfig, VAEConfig, train
from pyro_vae.data.torchvision_data import default_data_dir


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=default_data_dir(), help="folder holding MNIST/raw")
    p.add_argument("--out", default="runs/example-vae", help="run directory")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--train-subset", type=int, default=0, help="first N training images (0 = all)")
    p.add_argument("--test-subset", type=int, default=0, help="first N test images (0 = all)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--z-dim", type=int, default=50)
    p.add_argument("--elbo", choices=["trace", "meanfield"], default="trace")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    config = TrainConfig(
        data_dir=args.data_dir,
        out=args.out,
        epochs=args.epochs,
        elbo=args.elbo,
        data_mode="dynamic",
        seed=args.seed,
        device=args.device,
        train_subset=args.train_subset,
        test_subset=args.test_subset,
    )
    metrics = train(VAEConfig(z_dim=args.z_dim, hidden_dims=(400,)), config)
    last = metrics[-1]
    print(f"test -ELBO ({last['estimator']}) {last['test_neg_elbo']:.2f} nats/image")
    print(f"figures in {args.out}/figures")


if __name__ == "__main__":
    main()
