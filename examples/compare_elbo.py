"""Trains one VAE twice from the same seed, with Trace_ELBO and with TraceMeanField_ELBO, and
compares the two estimators: learning curves, variance, gradient noise, IW bound, test NLL.

    python examples/compare_elbo.py --data-dir ../shared/data --out runs/compare-elbo --epochs 5

Both runs start from the same weights and see the same batches (same seed), taking their steps
in turn so that both are timed under the same machine load; the seconds count training steps
only. The test -ELBO of both is measured with the same estimator (analytic KL) and the same
seed every --eval-every steps. Writes OUT/learning_curves.png, then runs
``pyro_vae.evaluation.compare`` on the Trace_ELBO-trained model: OUT/compare_elbo.png and
OUT/compare_elbo.json (which also holds the curves and the test NLL of both models).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pyro_vae import VAE, TrainConfig, VAEConfig
from pyro_vae.data.images import ImageData
from pyro_vae.data.torchvision_data import default_data_dir
from pyro_vae.evaluation.compare import ELBOS, compare_estimators, format_table
from pyro_vae.evaluation.elbo import evaluate_elbo
from pyro_vae.figures.compare import comparison_figure, learning_curves_figure
from pyro_vae.inference.loglik import evaluate_log_likelihood
from pyro_vae.inference.objectives import make_objective
from pyro_vae.inference.steps import EagerStep, ELBOLoss
from pyro_vae.models.vae import labels_for
from pyro_vae.runtime.device import resolve_device
from pyro_vae.runtime.rng import seeded
from pyro_vae.training.schedules import make_optimizer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def test_neg_elbo(vae: VAE, data: ImageData, seed: int) -> float:
    device = data.test_x.device
    # Forked: the evaluation's draws do not shift training's random stream.
    with seeded(seed, device):
        return evaluate_elbo(vae, data.test_batches(1000), "meanfield")["neg_elbo"]


def train_both(
    config: VAEConfig, data: ImageData, args: argparse.Namespace, device: torch.device
) -> tuple[dict[str, VAE], dict[str, dict]]:
    """Trains one model per estimator from the same initial weights on the same batches.

    The two take their steps in turn, each timed alone, so a machine busy with other work
    slows both alike; the test -ELBO of each is measured every ``args.eval_every`` steps.
    """
    models, steps, curves = {}, {}, {}
    for elbo in ELBOS:
        torch.manual_seed(args.seed)  # identical initial weights
        models[elbo] = VAE.from_config(config).to(device)
        optimizer = make_optimizer(models[elbo], TrainConfig(lr=args.lr))
        steps[elbo] = EagerStep(ELBOLoss(models[elbo], elbo), optimizer)
        first = test_neg_elbo(models[elbo], data, args.seed)
        curves[elbo] = {"step": [0], "seconds": [0.0], "neg_elbo": [first]}
    seconds = dict.fromkeys(ELBOS, 0.0)
    step, last = 0, args.epochs * data.num_batches(args.batch_size)
    for _ in range(args.epochs):
        for x, y in data.train_batches(args.batch_size):
            step += 1
            for elbo, vae in models.items():
                _sync(device)
                t0 = time.perf_counter()
                steps[elbo](x, labels_for(vae, y))
                _sync(device)
                # The first step pays one-off costs (allocator, kernel choice): not counted.
                seconds[elbo] += time.perf_counter() - t0 if step > 1 else 0.0
            if step % args.eval_every == 0 or step == last:
                for elbo, vae in models.items():
                    curves[elbo]["step"].append(step)
                    curves[elbo]["seconds"].append(seconds[elbo])
                    curves[elbo]["neg_elbo"].append(test_neg_elbo(vae, data, args.seed))
    return models, curves


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=default_data_dir(), help="folder holding MNIST/raw")
    p.add_argument("--out", default="runs/compare-elbo", help="output folder")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--train-subset", type=int, default=0, help="first N training images (0 = all)")
    p.add_argument("--test-subset", type=int, default=0, help="first N test images (0 = all)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--z-dim", type=int, default=50)
    p.add_argument("--hidden", type=int, default=400, help="hidden layer width")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-every", type=int, default=100, help="steps between test evaluations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=1000, help="K for the test NLL")
    p.add_argument("--nll-subset", type=int, default=500, help="test images for the NLL")
    p.add_argument("--repeats", type=int, default=20, help="repeated ELBO evaluations")
    p.add_argument("--grad-repeats", type=int, default=50)
    p.add_argument("--grad-batch", type=int, default=100)
    p.add_argument("--ks", default="1,5,50,500,5000", help="K values of the IW bound")
    p.add_argument("--iw-subset", type=int, default=100, help="test images for the IW bound")
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = VAEConfig(z_dim=args.z_dim, hidden_dims=(args.hidden,))
    lik = VAE.from_config(config).likelihood
    data = ImageData.load(
        args.data_dir, lik, "dynamic", device, args.train_subset, args.test_subset
    )
    models, curves = train_both(config, data, args, device)
    models = {make_objective(e).label: m for e, m in models.items()}
    curves = {make_objective(e).label: c for e, c in curves.items()}
    nll = {}
    for name, vae in models.items():
        torch.manual_seed(args.seed)
        n = args.nll_subset
        nll[name] = evaluate_log_likelihood(
            vae, [(data.test_x[:n], data.test_y[:n])], args.num_samples
        )
    learning_curves_figure(curves).savefig(out / "learning_curves.png", dpi=120)

    print(f"{'trained with':<22}{'test -ELBO':>11}{'train s':>9}{'ms/step':>9}{'test NLL':>10}")
    for name, c in curves.items():
        ms = 1000 * c["seconds"][-1] / max(c["step"][-1] - 1, 1)
        print(
            f"{name:<22}{c['neg_elbo'][-1]:>11.2f}{c['seconds'][-1]:>9.1f}{ms:>9.2f}"
            f"{nll[name]['neg_log_likelihood']:>10.2f}"
        )
    print(f"(nats/image; NLL with K={args.num_samples} on {args.nll_subset} test images)\n")

    torch.manual_seed(args.seed)
    result = compare_estimators(
        models["Trace_ELBO"],
        data.test_x,
        data.test_y,
        repeats=args.repeats,
        grad_batch=args.grad_batch,
        grad_repeats=args.grad_repeats,
        ks=[int(k) for k in args.ks.split(",")],
        iw_subset=args.iw_subset,
    )
    result.update(curves=curves, test_nll=nll, args=vars(args))
    (out / "compare_elbo.json").write_text(json.dumps(result, indent=2))
    comparison_figure(result).savefig(out / "compare_elbo.png", dpi=120)
    print("comparison on the Trace_ELBO-trained model:")
    print(format_table(result))
    print(f"figures and JSON in {out}")


if __name__ == "__main__":
    main()
