"""Train several prior x likelihood combinations and compare them in one table and one figure.

    python examples/swap_prior_likelihood.py --epochs 5
    python examples/swap_prior_likelihood.py --combos normal:bernoulli,vamp:bernoulli

Only rows on the same data are comparable: binarized pixels (bernoulli) and grayscale pixels
(the other likelihoods) are different data, so their nats are not on one scale.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyro
import torch
from matplotlib.figure import Figure

from pyro_vae import TrainConfig, VAEConfig, load_vae, train
from pyro_vae.data import MNISTData, default_data_dir
from pyro_vae.loglik import evaluate_log_likelihood
from pyro_vae.plots import tile

DEFAULT_COMBOS = (
    "normal:bernoulli,mog:bernoulli,vamp:bernoulli,normal:continuous-bernoulli,normal:beta"
)


def samples_figure(rows: dict[str, torch.Tensor]) -> Figure:
    """One row of samples per combination, labelled."""
    fig = Figure(figsize=(8, 1.1 * len(rows) + 0.3))
    axes = fig.subplots(len(rows), 1, squeeze=False)[:, 0]
    for ax, (name, samples) in zip(axes, rows.items(), strict=True):
        ax.imshow(tile(samples, samples.shape[0]), cmap="gray_r", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle("Samples from the prior (decoder means), one row per prior:likelihood")
    fig.tight_layout()
    return fig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", default=default_data_dir())
    p.add_argument("--out", default="runs/swap")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--combos", default=DEFAULT_COMBOS, help="comma list of PRIOR:LIKELIHOOD")
    p.add_argument("--elbo", choices=["trace", "meanfield"], default="meanfield")
    p.add_argument("--num-samples", type=int, default=500, help="K for the test NLL (0 = skip)")
    p.add_argument("--train-subset", type=int, default=0)
    p.add_argument("--test-subset", type=int, default=0)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    pyro.settings.set(module_local_params=True)

    out = Path(args.out)
    rows, samples = [], {}
    for combo in args.combos.split(","):
        prior, likelihood = combo.split(":")
        run = out / f"{prior}-{likelihood}"
        metrics = train(
            VAEConfig(prior=prior, likelihood=likelihood),
            TrainConfig(
                data_dir=args.data_dir,
                out=str(run),
                epochs=args.epochs,
                elbo=args.elbo,
                device=args.device,
                train_subset=args.train_subset,
                test_subset=args.test_subset,
            ),
            progress=False,
            write_figures=False,
            log=lambda s: None,
        )
        last = metrics[-1]
        vae, ckpt = load_vae(run, args.device if args.device != "auto" else "cpu")
        nll = float("nan")
        if args.num_samples:
            data = MNISTData.load(
                args.data_dir,
                vae.likelihood,
                ckpt["train_config"]["binarize"],
                train_subset=1,
                test_subset=args.test_subset,
            )
            torch.manual_seed(0)
            nll = evaluate_log_likelihood(
                vae, data.test_batches(500), num_samples=args.num_samples
            )["neg_log_likelihood"]
        torch.manual_seed(0)
        samples[combo] = vae.sample(12)
        data_kind = "binarized" if ckpt["train_config"]["binarize"] != "none" else "grayscale"
        rows.append(
            (
                prior,
                likelihood,
                data_kind,
                last["test_neg_elbo"],
                last["test_kl"],
                nll,
                sum(m["seconds"] for m in metrics) / len(metrics),
                last["kl_kind"],
            )
        )

    print(
        f"\ntest set, nats per image, {args.epochs} epochs, {args.elbo} ELBO; "
        f"NLL by importance sampling with K={args.num_samples}"
    )
    print(
        f"{'prior':<15}{'likelihood':<22}{'data':<11}{'-ELBO':>9}{'KL':>8}{'NLL':>9}"
        f"{'s/epoch':>9}  KL used"
    )
    for r in rows:
        print(
            f"{r[0]:<15}{r[1]:<22}{r[2]:<11}{r[3]:>9.2f}{r[4]:>8.2f}{r[5]:>9.2f}{r[6]:>9.1f}"
            f"  {r[7]}"
        )
    fig_path = out / "samples.png"
    samples_figure(samples).savefig(fig_path, dpi=110)
    print(f"figure: {fig_path}")


if __name__ == "__main__":
    main()
