"""Train several prior x likelihood combinations and compare them in one table and one figure.

    python examples/swap_prior_likelihood.py --epochs 5
    python examples/swap_prior_likelihood.py --combos normal:bernoulli,vamp:bernoulli

Each likelihood gets its data from `--data-mode auto`: bernoulli binarized pixels, the
discretized logistic the raw 8-bit values, the densities (continuous Bernoulli, Beta,
Gaussian, Laplace) dequantized 8-bit pixels. The table has one section per dataset, and
bits per dimension compare only within a section: the 8-bit rows (dequantized bounds, with
D log 256 added, and discrete probabilities) share one column; binarized MNIST is a dataset
of its own.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from matplotlib.figure import Figure

from pyro_vae import TrainConfig, VAEConfig, load_vae, train
from pyro_vae.data.images import ImageData
from pyro_vae.data.torchvision_data import default_data_dir
from pyro_vae.figures.plots import tile
from pyro_vae.inference.loglik import evaluate_log_likelihood
from pyro_vae.inference.units import data_label, describe, in_units

DEFAULT_COMBOS = (
    "normal:bernoulli,mog:bernoulli,vamp:bernoulli,"
    "normal:continuous-bernoulli,normal:beta,normal:gaussian,normal:laplace,"
    "normal:discretized-logistic"
)
# Sections of the table, in this order; rows compare only within one.
SECTIONS = ("8-bit MNIST", "binarized MNIST", None)


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


def format_table(rows: list[dict], num_dims: int) -> str:
    """One section per dataset: bits/dim compare within a section, never across."""
    lines = []
    for dataset in SECTIONS:
        section = [r for r in rows if r["dataset"] == dataset]
        if not section:
            continue
        lines.append(f"\n== {dataset or 'not comparable with any dataset'} ==")
        lines += [f"   {describe(d, num_dims)}" for d in dict.fromkeys(r["data"] for r in section)]
        lines.append(
            f"{'prior':<15}{'likelihood':<22}{'data':<19}{'-ELBO':>9}{'KL':>8}{'NLL':>9}"
            f"{'-ELBO b/d':>11}{'NLL b/d':>9}{'s/epoch':>9}  KL used"
        )
        for r in section:
            lines.append(
                f"{r['prior']:<15}{r['likelihood']:<22}{r['data'][:18]:<19}{r['neg_elbo']:>9.2f}"
                f"{r['kl']:>8.2f}{r['nll']:>9.2f}{r['elbo_bpd']:>11.4f}{r['nll_bpd']:>9.4f}"
                f"{r['s_epoch']:>9.1f}  {r['kl_kind']}"
            )
    return "\n".join(lines)


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
        data_mode = TrainConfig.from_dict(ckpt["train_config"]).data_mode
        label = data_label(data_mode, vae.likelihood)
        nll = {"nats_per_image": float("nan"), "bits_per_dim": float("nan")}
        if args.num_samples:
            data = ImageData.load(
                args.data_dir,
                vae.likelihood,
                data_mode,
                train_subset=1,
                test_subset=args.test_subset,
            )
            torch.manual_seed(0)
            nll = evaluate_log_likelihood(
                vae, data.test_batches(500), num_samples=args.num_samples, data_mode=data_mode
            )
        torch.manual_seed(0)
        samples[combo] = vae.sample(12)
        elbo = in_units(last["test_neg_elbo"], vae.config.x_dim, label)
        rows.append(
            {
                "prior": prior,
                "likelihood": likelihood,
                "data": label,
                "dataset": elbo["dataset"],
                "neg_elbo": elbo["nats_per_image"],
                "kl": last["test_kl"],
                "nll": nll["nats_per_image"],
                "elbo_bpd": elbo["bits_per_dim"],
                "nll_bpd": nll["bits_per_dim"],
                "s_epoch": sum(m["seconds"] for m in metrics) / len(metrics),
                "kl_kind": last["kl_kind"],
            }
        )

    print(
        f"\ntest set, {args.epochs} epochs, {args.elbo} ELBO; NLL by importance sampling with "
        f"K={args.num_samples}; nats per image and bits per dimension of each section's dataset"
    )
    print(format_table(rows, num_dims=VAEConfig().x_dim))
    fig_path = out / "samples.png"
    samples_figure(samples).savefig(fig_path, dpi=110)
    print(f"figure: {fig_path}")


if __name__ == "__main__":
    main()
