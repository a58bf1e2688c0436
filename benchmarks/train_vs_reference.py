"""Train pyro-vae and the hand-written reference the same way; compare test -ELBO and s/epoch.

Both see the same data pipeline (MNIST on the device, dynamic binarization of each training
batch, the test set binarized once with the fixed seed), batch 128, Adam 1e-3, the same seed.
The test -ELBO is the Trace_ELBO estimate (Monte Carlo KL) in nats per image for both.

    python benchmarks/train_vs_reference.py --data-dir ../shared/data --epochs 10
    python benchmarks/train_vs_reference.py --steps eager,compiled   # pyro-vae with each step
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_vae import ReferenceVAE, reference_step  # noqa: E402

from pyro_vae import (  # noqa: E402
    TrainConfig,
    VAEConfig,
    train,  # noqa: E402
)
from pyro_vae.data.images import ImageData, default_data_dir  # noqa: E402
from pyro_vae.models.likelihoods import BernoulliLikelihood  # noqa: E402
from pyro_vae.runtime.device import resolve_device  # noqa: E402


@torch.no_grad()
def reference_test_neg_elbo(model: ReferenceVAE, data: ImageData) -> float:
    total = torch.zeros((), dtype=torch.float64, device=data.test_x.device)
    for x, _ in data.test_batches(1000):
        log_lik, kl = model.loss_terms(x)
        total += (kl - log_lik).sum().double()
    return total.item() / data.test_x.shape[0]


def train_reference(data: ImageData, epochs: int, batch_size: int, lr: float, seed: int):
    torch.manual_seed(seed)
    device = data.train_x.device
    model = ReferenceVAE().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)  # as a user writes it
    rows = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        for x, _ in data.train_batches(batch_size):
            reference_step(model, opt, x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        rows.append((epoch, reference_test_neg_elbo(model, data), seconds))
        print(
            f"  reference epoch {epoch}: test -ELBO {rows[-1][1]:.2f}, {seconds:.2f} s", flush=True
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", default=default_data_dir())
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--steps",
        default="eager,compiled",
        help="comma list of pyro-vae steps to train with (eager, fx, compiled, cudagraph)",
    )
    args = p.parse_args()
    device = resolve_device(args.device)
    pyro.settings.set(module_local_params=True)

    data = ImageData.load(args.data_dir, BernoulliLikelihood(), "dynamic", device)
    print(f"device: {device}; torch {torch.__version__}; threads {torch.get_num_threads()}")
    print("hand-written reference:")
    ref = train_reference(data, args.epochs, args.batch_size, args.lr, args.seed)
    runs = {}
    for step in args.steps.split(","):
        print(f"pyro-vae (pyro-vae train --step {step}, Trace_ELBO):")
        with tempfile.TemporaryDirectory() as tmp:
            runs[step] = train(
                VAEConfig(),
                TrainConfig(
                    data_dir=args.data_dir,
                    out=tmp,
                    epochs=args.epochs,
                    batch_size=args.batch_size,
                    lr=args.lr,
                    elbo="trace",
                    seed=args.seed,
                    device=str(device),
                    step=step,
                ),
                progress=False,
                write_figures=False,
                log=lambda s: print("  " + s, flush=True),
            )
    head = f"\n{'epoch':>5} {'reference':>10}" + "".join(f" {k:>10}" for k in runs)
    print(head + "   test -ELBO, nats/image")
    for i, (e, r_elbo, _) in enumerate(ref):
        print(
            f"{e:>5} {r_elbo:>10.2f}"
            + "".join(f" {m[i]['test_neg_elbo']:>10.2f}" for m in runs.values())
        )
    r_mean = sum(r[2] for r in ref) / len(ref)
    print(f"\nmean s/epoch: reference {r_mean:.2f}", end="")
    for k, m in runs.items():
        mean = sum(x["seconds"] for x in m) / len(m)
        trace = sum(x.get("trace_seconds", 0.0) for x in m)
        print(
            f", {k} {mean:.2f} ({mean / r_mean:.2f}x; traced/compiled once in {trace:.1f} s)",
            end="",
        )
    print()


if __name__ == "__main__":
    main()
