"""Training-step throughput: pyro-vae's steps against a hand-written PyTorch VAE, in one process.

Paths timed on the same device, same network and loss (``--z-dim``, ``--hidden-dims``,
``--activation``; ``--cvae`` for the conditional VAE and a hand-written CVAE; ``--network conv``
for the conv network of ``--conv-channels`` on MNIST's 1 x 28 x 28, against a hand-written
conv VAE with the same layers; ``--latent-dims 100,50`` for stacked stochastic layers against a
hand-written 2-layer VAE, reference_vae.ReferenceStackedVAE):
  reference   hand-written PyTorch, eager (benchmarks/reference_vae.py), torch.optim.Adam
  ref-fused   the same with torch.optim.Adam(fused=True), the optimizer pyro-vae uses
  pyro-svi    classic pyro.infer.SVI + Trace_ELBO + pyro.optim.Adam on the project's model/guide
  eager       pyro-vae's eager step: the Pyro model and guide every step + fused Adam
  fx          the step traced once (make_fx) and replayed as an FX graph
  compiled    the traced step compiled by inductor (the default on a CPU for real runs)
  cudagraph   (CUDA only) the traced step and Adam captured in one CUDA graph

Each path runs ``--steps`` steps per round on pre-made binary batches; rounds are interleaved
across paths and the median round is reported, so a busy machine hurts every path alike. The
overhead column is ms/step minus the hand-written step's (ref-fused: the same optimizer).
The epoch column times one pass over 60,000 images including the on-device shuffle and
dynamic binarization (real MNIST with --data-dir, else random uint8 images of the same size).

    python benchmarks/throughput.py                 # CPU: batch 128 and 256
    python benchmarks/throughput.py --cvae          # the conditional VAE against a hand-written one
    python benchmarks/throughput.py --device cuda   # GPU: batch 128, 256 and 1024
    python benchmarks/throughput.py --network conv  # the conv VAE against a hand-written one
    python benchmarks/throughput.py --latent-dims 100,50 --hidden-dims 200,200 --activation tanh
                                                    # the IWAE paper's two layers
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
from reference_vae import ReferenceConvVAE, ReferenceStackedVAE, ReferenceVAE, reference_step  # noqa: E402

from pyro_vae import VAE, TrainConfig  # noqa: E402
from pyro_vae.data.images import ImageData  # noqa: E402
from pyro_vae.data.torchvision_data import load_mnist  # noqa: E402
from pyro_vae.inference.loglik import evaluate_log_likelihood  # noqa: E402
from pyro_vae.inference.steps import build_step  # noqa: E402
from pyro_vae.models.likelihoods import BernoulliLikelihood  # noqa: E402
from pyro_vae.runtime.device import resolve_device, synchronize  # noqa: E402
from pyro_vae.runtime.distributed import World  # noqa: E402
from pyro_vae.training.schedules import make_optimizer  # noqa: E402

NUM_TRAIN = 60_000


def make_paths(
    device: torch.device, args: argparse.Namespace, lr: float = 1e-3
) -> dict[str, Callable[[torch.Tensor, torch.Tensor | None], object]]:
    """name -> step(x, y); each path owns a fresh model and optimizer."""
    classes = 10 if args.cvae else 0

    def reference() -> torch.nn.Module:
        if args.latent_dims:
            return ReferenceStackedVAE(
                latent_dims=args.latent_dims,
                hidden=args.hidden_dims,
                latent_hidden=args.latent_hidden_dims,
                activation=args.activation,
            ).to(device)
        if args.network == "conv":
            net = dict(z_dim=args.z_dim, channels=args.conv_channels, activation=args.activation)
            return ReferenceConvVAE(**net, num_classes=classes).to(device)
        net = dict(z_dim=args.z_dim, hidden=args.hidden_dims, activation=args.activation)
        return ReferenceVAE(**net, num_classes=classes).to(device)

    # The reference as a user writes it (torch's default Adam), and with fused Adam as ours has.
    ref = reference()
    ref_opt = torch.optim.Adam(ref.parameters(), lr=lr)
    ref_fused = reference()
    ref_fused_opt = torch.optim.Adam(ref_fused.parameters(), lr=lr, fused=True)
    paths: dict[str, Callable] = {
        "reference": lambda x, y: reference_step(ref, ref_opt, x, y),
        "ref-fused": lambda x, y: reference_step(ref_fused, ref_fused_opt, x, y),
    }

    def vae() -> VAE:
        layers = {"latent_dims": args.latent_dims, "latent_hidden_dims": args.latent_hidden_dims}
        return VAE(
            z_dim=None if args.latent_dims else args.z_dim,
            hidden_dims=args.hidden_dims,
            network=args.network,
            conv_channels=args.conv_channels,
            activation=args.activation,
            num_classes=classes,
            **(layers if args.latent_dims else {}),
        ).to(device)

    # Classic SVI runs in Pyro's default mode; the project's steps in either (default here).
    svi_vae = vae()
    svi = pyro.infer.SVI(
        svi_vae.model,
        svi_vae.guide,
        pyro.optim.Adam({"lr": lr}),
        pyro.infer.Trace_ELBO(max_plate_nesting=1),
    )
    paths["pyro-svi"] = lambda x, y: svi.step(x, y)
    kinds = ["eager", "fx", "compiled"] + (["cudagraph"] if device.type == "cuda" else [])
    config = TrainConfig(lr=lr)
    for kind in kinds:
        model = vae()
        optimizer = make_optimizer(model, config, capturable=kind == "cudagraph")
        paths[kind] = build_step(model, optimizer, config.objective(), kind, World())
    return paths


def time_steps(step: Callable, batches: list, device: torch.device) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    for x, y in batches:
        step(x, y)
    synchronize(device)
    return (time.perf_counter() - t0) / len(batches)


def median_step_seconds(
    paths: dict[str, Callable], pool: list, rounds: int, device: torch.device, warmup: int = 5
) -> dict[str, float]:
    """Seconds per step of each path: a warm-up (tracing, compiling, allocator, first-call
    checks), then ``rounds`` rounds interleaved across the paths, the median kept, so a busy
    machine hurts every path alike."""
    for step in paths.values():
        time_steps(step, pool[:warmup], device)
    times: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(rounds):
        for k, step in paths.items():
            times[k].append(time_steps(step, pool, device))
    return {k: statistics.median(v) for k, v in times.items()}


def epoch_seconds(step: Callable, data: ImageData, batch_size: int, device, cvae: bool) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    for x, y in data.train_batches(batch_size):
        if x.shape[0] == batch_size:  # the traced steps' graphs are for the full batch
            step(x, y if cvae else None)
    synchronize(device)
    return time.perf_counter() - t0


def load_train(data_dir: str | None, device: torch.device) -> ImageData:
    lik = BernoulliLikelihood()
    if data_dir:
        x, y = load_mnist(data_dir, train=True)
    else:
        x = torch.randint(0, 256, (NUM_TRAIN, 784), dtype=torch.uint8)
        y = torch.arange(NUM_TRAIN) % 10
    return ImageData(
        train_x=x.to(device),
        train_y=y.to(device),
        test_x=torch.empty(0, 784, device=device),
        test_y=y[:0].to(device),
        data_mode="dynamic",
        likelihood=lik,
    )


def _hidden(s: str) -> tuple[int, ...]:
    return tuple(int(v) for v in s.split(","))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument(
        "--batch-sizes", default=None, help="comma list; default 128,256 (CPU), 128,256,1024 (GPU)"
    )
    p.add_argument("--steps", type=int, default=10, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=40, help="timed rounds per path (median kept)")
    p.add_argument("--paths", default=None, help="comma list of paths to time (default: all)")
    p.add_argument("--cvae", action="store_true", help="the conditional VAE (10 labels)")
    p.add_argument("--z-dim", type=int, default=50)
    p.add_argument("--hidden-dims", type=_hidden, default=(400,), help="e.g. 400 or 200,200")
    p.add_argument("--network", choices=["mlp", "conv"], default="mlp")
    p.add_argument("--conv-channels", type=_hidden, default=(32, 64, 128), help="conv: e.g. 32,64")
    p.add_argument(
        "--latent-dims", type=_hidden, default=(), help="stacked layers, e.g. 100,50 (no --cvae)"
    )
    p.add_argument("--latent-hidden-dims", type=_hidden, default=(100, 100))
    p.add_argument("--activation", default="softplus", choices=["softplus", "tanh", "relu"])
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
    if args.latent_dims and args.cvae:
        p.error("the hand-written stacked reference is unconditional: drop --cvae")
    if args.latent_dims and args.network == "conv":
        p.error("the hand-written stacked reference is an MLP: drop --network conv")

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
    widths = args.conv_channels if args.network == "conv" else args.hidden_dims
    top = "-".join(map(str, args.latent_dims or (args.z_dim,)))
    net = f"{'CVAE' if args.cvae else 'VAE'} {args.network} 784-{'-'.join(map(str, widths))}-{top}"
    print(f"device: {name}; torch {torch.__version__}; pyro {pyro.__version__}; {net}")
    print(
        f"{'batch':>6} {'path':<10} {'ms/step':>9} {'images/s':>10} {'x reference':>12}"
        f" {'overhead ms':>12}" + (f" {'epoch s':>8}" if args.epoch else "")
    )
    data = load_train(args.data_dir, device) if args.epoch else None
    for bs in [int(s) for s in sizes.split(",")]:
        paths = make_paths(device, args)
        if args.paths:
            keep = {"reference", "ref-fused", *args.paths.split(",")}
            paths = {k: v for k, v in paths.items() if k in keep}
        y = (torch.arange(bs, device=device) % 10) if args.cvae else None
        pool = [
            (torch.bernoulli(torch.full((bs, 784), 0.13, device=device)), y)
            for _ in range(args.steps)
        ]
        med = median_step_seconds(paths, pool, args.rounds, device)
        for k in paths:
            line = (
                f"{bs:>6} {k:<10} {med[k] * 1e3:>9.3f} {bs / med[k]:>10.0f} "
                f"{med[k] / med['reference']:>11.2f}x {(med[k] - med['ref-fused']) * 1e3:>+12.3f}"
            )
            if data is not None:
                line += f" {epoch_seconds(paths[k], data, bs, device, args.cvae):>8.2f}"
            print(line, flush=True)
    if args.loglik_images:
        time_loglik(args.loglik_images, device)


def time_loglik(num_images: int, device: torch.device, num_samples: int = 5000) -> None:
    """Seconds for the K-sample importance-sampled -log p(x) over ``num_images`` images."""
    vae = VAE().to(device)
    x = torch.bernoulli(torch.full((num_images, 784), 0.13, device=device))
    batches = [(xb, None) for xb in x.split(100)]
    r = evaluate_log_likelihood(vae, batches, num_samples=num_samples)
    print(f"importance-sampled NLL, K={num_samples}, {num_images} images: {r['seconds']:.1f} s")


if __name__ == "__main__":
    main()
