"""Your own prior and likelihood, through the library's trainer: train, resume, evaluate, plot.

    python examples/custom_prior.py --data-dir ../shared/data --out runs/studentt --epochs 4

The prior is a heavy-tailed Student-t, p(z) = prod_d StudentT(z_d; 4, 0, 1), a plain
``pyro.distributions`` object; the likelihood is written here: a Bernoulli whose pixels are
replaced by coin flips with probability ``noise`` (robust to stray pixels). Neither is in the
library's registries, so a run of them is reloaded by rebuilding the same VAE in Python and
passing it to ``load_vae`` / ``train(..., resume=True)`` / ``plot_run``.

It trains the first half of the epochs, "restarts" (a new VAE from the same objects, resumed
from the run directory), trains the rest, then reports the test NLL by importance sampling and
writes the figures into OUT/figures. It runs in Pyro's default mode (global param store).
"""

from __future__ import annotations

import argparse

import pyro.distributions as dist
import torch

from pyro_vae import VAE, TrainConfig, load_vae, train
from pyro_vae.data.images import ImageData
from pyro_vae.data.torchvision_data import default_data_dir
from pyro_vae.figures.run_figures import plot_run
from pyro_vae.inference.loglik import evaluate_log_likelihood
from pyro_vae.models.likelihoods import Likelihood
from pyro_vae.runtime.rng import seeded


class NoisyBernoulli(Likelihood):
    """x_i ~ Bernoulli((1 - noise) sigmoid(out_i) + noise / 2): binarized pixels."""

    data_kind = "binary"  # the data pipeline binarizes for it; Pyro validates {0, 1}
    name = "noisy-bernoulli"

    def __init__(self, noise: float = 0.02) -> None:
        super().__init__()
        self.noise = noise

    def forward(self, out: torch.Tensor) -> dist.Distribution:
        probs = (1 - self.noise) * torch.sigmoid(out) + self.noise / 2
        return self.pixels(dist.Bernoulli(probs=probs))

    def describe(self) -> str:
        return f"NoisyBernoulli(noise={self.noise})"


def build_vae(z_dim: int) -> VAE:
    """The same objects every time: a run of them is reloaded into a VAE built like this."""
    prior = dist.StudentT(4.0, torch.zeros(z_dim), torch.ones(z_dim)).to_event(1)
    return VAE(z_dim=z_dim, hidden_dims=(400,), prior=prior, likelihood=NoisyBernoulli(0.02))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=default_data_dir(), help="folder holding MNIST/raw")
    p.add_argument("--out", default="runs/studentt", help="run directory")
    p.add_argument("--epochs", type=int, default=4, help="epochs in all (half, restart, half)")
    p.add_argument("--z-dim", type=int, default=20)
    p.add_argument("--num-samples", type=int, default=1000, help="K for the test NLL")
    p.add_argument("--train-subset", type=int, default=0, help="first N training images (0 = all)")
    p.add_argument("--test-subset", type=int, default=0, help="first N test images (0 = all)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    args = p.parse_args(argv)

    def config(epochs: int) -> TrainConfig:
        return TrainConfig(
            data_dir=args.data_dir,
            out=args.out,
            epochs=epochs,
            device=args.device,
            train_subset=args.train_subset,
            test_subset=args.test_subset,
        )

    first = max(1, args.epochs // 2)
    train(build_vae(args.z_dim), config(first), write_figures=False)
    print(f"-- restarting: a new VAE from the same objects resumes {args.out} --")
    metrics = train(build_vae(args.z_dim), config(args.epochs), resume=True, write_figures=False)

    vae, ckpt = load_vae(args.out, vae=build_vae(args.z_dim))
    print(f"run objects: {ckpt['objects']}")
    data = ImageData.load(
        args.data_dir,
        vae.likelihood,
        TrainConfig.from_dict(ckpt["train_config"]).data_mode,
        train_subset=1,
        test_subset=args.test_subset,
    )
    with seeded(0):
        nll = evaluate_log_likelihood(vae, data.test_batches(100), num_samples=args.num_samples)
    print(
        f"after {metrics[-1]['epoch']} epochs: test -ELBO {metrics[-1]['test_neg_elbo']:.2f}, "
        f"test NLL {nll['neg_log_likelihood']:.2f} +- {nll['std_error']:.2f} nats/image "
        f"(K={args.num_samples}, {nll['num_images']} images)"
    )
    for path in plot_run(args.out, args.data_dir, device="cpu", vae=build_vae(args.z_dim)):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
