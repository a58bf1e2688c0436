"""Training-step throughput: pyro-vae against a hand-written PyTorch VAE, in one process.

Paths timed on the same device, same network (784-400-50 softplus), same loss:
  reference   hand-written PyTorch, eager (benchmarks/reference_vae.py), torch.optim.Adam
  ref-fused   the same with torch.optim.Adam(fused=True), the optimizer pyro-vae uses
  pyro-svi    classic pyro.infer.SVI + Trace_ELBO + pyro.optim.Adam on the project's model/guide
  project     pyro_vae.training.train_step: device-side ELBO from the Pyro traces + fused Adam

Each path runs ``--steps`` steps per round on pre-made binary batches; rounds are interleaved
across paths and the median round is reported, so a busy machine hurts every path alike.
The epoch column times one pass over 60,000 images including the on-device shuffle and
dynamic binarization (real MNIST with --data-dir, else random uint8 images of the same size).

    python benchmarks/throughput.py                 # CPU: batch 128 and 256
    python benchmarks/throughput.py --device cuda   # GPU: batch 128, 256 and 1024
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_vae import ReferenceVAE, reference_step  # noqa: E402

from pyro_vae import VAE  # noqa: E402
from pyro_vae.data import MNISTData, load_mnist  # noqa: E402
from pyro_vae.device import resolve_device  # noqa: E402
from pyro_vae.likelihoods import BernoulliLikelihood  # noqa: E402
from pyro_vae.loglik import evaluate_log_likelihood  # noqa: E402
from pyro_vae.training import make_optimizer, train_step  # noqa: E402

NUM_TRAIN = 60_000


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_paths(
    device: torch.device, lr: float = 1e-3
) -> dict[str, Callable[[torch.Tensor], object]]:
    """name -> step(x); each path owns a fresh model and optimizer."""
    # The reference as a user writes it (torch's default Adam), and with fused Adam as ours has.
    ref = ReferenceVAE().to(device)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=lr)
    ref_fused = ReferenceVAE().to(device)
    ref_fused_opt = torch.optim.Adam(ref_fused.parameters(), lr=lr, fused=True)

    pyro.settings.set(module_local_params=False)
    pyro.clear_param_store()
    svi_vae = VAE().to(device)
    svi = pyro.infer.SVI(
        svi_vae.model,
        svi_vae.guide,
        pyro.optim.Adam({"lr": lr}),
        pyro.infer.Trace_ELBO(max_plate_nesting=1),
    )

    # A PyroModule must be built under the module_local_params setting it will run with.
    pyro.settings.set(module_local_params=True)
    proj_vae = VAE().to(device)
    proj_opt = make_optimizer(proj_vae, lr)

    def project(x: torch.Tensor) -> object:
        pyro.settings.set(module_local_params=True)
        return train_step(proj_vae, proj_opt, x, None)

    def classic(x: torch.Tensor) -> object:
        pyro.settings.set(module_local_params=False)
        return svi.step(x)

    return {
        "reference": lambda x: reference_step(ref, ref_opt, x),
        "ref-fused": lambda x: reference_step(ref_fused, ref_fused_opt, x),
        "pyro-svi": classic,
        "project": project,
    }


def time_steps(step: Callable, batches: list[torch.Tensor], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    for x in batches:
        step(x)
    _sync(device)
    return (time.perf_counter() - t0) / len(batches)


def epoch_seconds(step: Callable, data: MNISTData, batch_size: int, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    for x, _ in data.train_batches(batch_size):
        step(x)
    _sync(device)
    return time.perf_counter() - t0


def load_train(data_dir: str | None, device: torch.device) -> MNISTData:
    lik = BernoulliLikelihood()
    if data_dir:
        x, y = load_mnist(data_dir, train=True)
    else:
        x = torch.randint(0, 256, (NUM_TRAIN, 784), dtype=torch.uint8)
        y = torch.zeros(NUM_TRAIN, dtype=torch.long)
    return MNISTData(
        train_x=x.to(device),
        train_y=y.to(device),
        test_x=torch.empty(0, 784, device=device),
        test_y=y[:0].to(device),
        binarize="dynamic",
        likelihood=lik,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument(
        "--batch-sizes", default=None, help="comma list; default 128,256 (CPU), 128,256,1024 (GPU)"
    )
    p.add_argument("--steps", type=int, default=10, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=40, help="timed rounds per path (median kept)")
    p.add_argument("--epoch", action="store_true", help="also time one full epoch per path")
    p.add_argument("--data-dir", default=None, help="real MNIST for the epoch timing")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument(
        "--loglik-images",
        type=int,
        default=0,
        help="also time the K=5000 importance-sampled NLL over this many test images "
        "(10000 = the whole test set; an untrained model, since only the time matters)",
    )
    args = p.parse_args()

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = args.batch_sizes or ("128,256,1024" if device.type == "cuda" else "128,256")
    torch.manual_seed(0)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (f"CPU, {torch.get_num_threads()} threads")
    )
    print(f"device: {name}; torch {torch.__version__}; pyro {pyro.__version__}")
    print(
        f"{'batch':>6} {'path':<12} {'ms/step':>9} {'images/s':>10} {'x reference':>12}"
        + (f" {'epoch s':>8}" if args.epoch else "")
    )
    data = load_train(args.data_dir, device) if args.epoch else None
    for bs in [int(s) for s in sizes.split(",")]:
        paths = make_paths(device)
        pool = [
            torch.bernoulli(torch.full((bs, 784), 0.13, device=device)) for _ in range(args.steps)
        ]
        for step in paths.values():  # warm-up: allocator, lazy init, Pyro's first-call checks
            time_steps(step, pool[:5], device)
        rounds: dict[str, list[float]] = {k: [] for k in paths}
        for _ in range(args.rounds):
            for k, step in paths.items():
                rounds[k].append(time_steps(step, pool, device))
        med = {k: statistics.median(v) for k, v in rounds.items()}
        for k in paths:
            line = (
                f"{bs:>6} {k:<12} {med[k] * 1e3:>9.3f} {bs / med[k]:>10.0f} "
                f"{med[k] / med['reference']:>11.2f}x"
            )
            if data is not None:
                line += f" {epoch_seconds(paths[k], data, bs, device):>8.2f}"
            print(line, flush=True)
    if args.loglik_images:
        time_loglik(args.loglik_images, device)
    pyro.settings.set(module_local_params=False)


def time_loglik(num_images: int, device: torch.device, num_samples: int = 5000) -> None:
    """Seconds for the K-sample importance-sampled -log p(x) over ``num_images`` images."""
    pyro.settings.set(module_local_params=True)
    vae = VAE().to(device)
    x = torch.bernoulli(torch.full((num_images, 784), 0.13, device=device))
    batches = [(xb, None) for xb in x.split(100)]
    r = evaluate_log_likelihood(vae, batches, num_samples=num_samples)
    print(f"importance-sampled NLL, K={num_samples}, {num_images} images: {r['seconds']:.1f} s")


if __name__ == "__main__":
    main()
