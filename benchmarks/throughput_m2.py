"""The semi-supervised VAE's (M2) training step against a hand-written PyTorch M2, in one process.

Paths timed on the same device with the same networks and loss (``--z-dim``, ``--hidden-dims``,
``--classifier``, ``--classifier-dims``; y summed out over the 10 labels in one batched pass,
plus alpha * -log q(y | x) on the labelled images):
  reference   hand-written PyTorch, eager (benchmarks/reference_m2.py), torch.optim.Adam
  ref-fused   the same with torch.optim.Adam(fused=True), the optimizer pyro-vae uses
  pyro-svi    classic pyro.infer.SVI + TraceEnum_ELBO on config_enumerate(guide) (no alpha term)
  eager       pyro-vae's eager step (EnumELBO): the Pyro model and guide every step + fused Adam
  fx          the step traced once (make_fx) and replayed as an FX graph
  compiled    the traced step compiled by inductor
  cudagraph   (CUDA only) the traced step and Adam captured in one CUDA graph

Each batch holds ``--labelled-per-batch`` labelled images, the rest unlabelled (y = -1). Rounds
are interleaved across paths and the median round is reported, as in throughput.py; the
"x ref-fused" column is the ratio the issue's goal is stated in (the same fused Adam).

    OMP_NUM_THREADS=2 python benchmarks/throughput_m2.py --threads 2
    python benchmarks/throughput_m2.py --device cuda --batch-sizes 128,512
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import pyro
import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_m2 import ReferenceM2, reference_m2_step  # noqa: E402
from throughput import median_step_seconds  # noqa: E402

from pyro_vae import VAE  # noqa: E402
from pyro_vae.inference.objectives import EnumELBO  # noqa: E402
from pyro_vae.inference.steps import build_step  # noqa: E402
from pyro_vae.runs.options import TrainConfig  # noqa: E402
from pyro_vae.runtime.device import resolve_device  # noqa: E402
from pyro_vae.runtime.distributed import World  # noqa: E402
from pyro_vae.training.schedules import make_optimizer  # noqa: E402

ALPHA = 5.0  # any value: the time does not depend on it


def _sizes(s: str) -> tuple[int, ...]:
    return tuple(int(v) for v in s.split(",") if v)


def make_paths(device: torch.device, args: argparse.Namespace, lr: float = 1e-3) -> dict:
    """name -> step(x, y); each path owns a fresh model and optimizer."""
    net = dict(
        z_dim=args.z_dim,
        hidden=args.hidden_dims,
        classifier=args.classifier,
        classifier_hidden=args.classifier_dims,
    )
    ref = ReferenceM2(**net).to(device)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=lr)
    ref_fused = ReferenceM2(**net).to(device)
    ref_fused_opt = torch.optim.Adam(ref_fused.parameters(), lr=lr, fused=True)
    paths: dict[str, Callable] = {
        "reference": lambda x, y: reference_m2_step(ref, ref_opt, x, y, ALPHA),
        "ref-fused": lambda x, y: reference_m2_step(ref_fused, ref_fused_opt, x, y, ALPHA),
    }

    def vae() -> VAE:
        return VAE(
            z_dim=args.z_dim,
            hidden_dims=args.hidden_dims,
            num_classes=10,
            classifier=args.classifier,
            classifier_dims=args.classifier_dims,
        ).to(device)

    svi_vae = vae()
    svi = pyro.infer.SVI(
        svi_vae.model,
        config_enumerate(svi_vae.guide, "parallel"),
        pyro.optim.Adam({"lr": lr}),
        TraceEnum_ELBO(max_plate_nesting=1),
    )
    paths["pyro-svi"] = lambda x, y: svi.step(x, y)
    kinds = ["eager", "fx", "compiled"] + (["cudagraph"] if device.type == "cuda" else [])
    config = TrainConfig(lr=lr)
    for kind in kinds:
        model = vae()
        optimizer = make_optimizer(model, config, capturable=kind == "cudagraph")
        paths[kind] = build_step(model, optimizer, EnumELBO(alpha=ALPHA), kind, World())
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--batch-sizes", type=_sizes, default=(128,), help="comma list (default 128)")
    p.add_argument("--labelled-per-batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=5, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=10, help="timed rounds per path (median kept)")
    p.add_argument("--paths", default=None, help="comma list of paths to time (default: all)")
    p.add_argument("--z-dim", type=int, default=50)
    p.add_argument("--hidden-dims", type=_sizes, default=(500,), help="e.g. 500 or 200,200")
    p.add_argument("--classifier", default="conv", choices=["conv", "mlp"])
    p.add_argument("--classifier-dims", type=_sizes, default=(500,))
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    args = p.parse_args()

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    hidden = "-".join(map(str, args.hidden_dims))
    print(
        f"device: {name}; torch {torch.__version__}; pyro {pyro.__version__}; M2 784-{hidden}-"
        f"{args.z_dim}, q(y | x) {args.classifier} {args.classifier_dims}, 10 labels summed out; "
        f"{args.labelled_per_batch} labelled images per batch"
    )
    print(f"{'batch':>6} {'path':<10} {'ms/step':>9} {'images/s':>10} {'x ref-fused':>12}")
    for bs in args.batch_sizes:
        paths = make_paths(device, args)
        if args.paths:
            keep = {"ref-fused", *args.paths.split(",")}
            paths = {k: v for k, v in paths.items() if k in keep}
        y = torch.full((bs,), -1, device=device)
        y[: args.labelled_per_batch] = torch.arange(args.labelled_per_batch, device=device) % 10
        pool = [
            (torch.bernoulli(torch.full((bs, 784), 0.13, device=device)), y)
            for _ in range(args.steps)
        ]
        med = median_step_seconds(paths, pool, args.rounds, device, warmup=3)
        for k in paths:
            print(
                f"{bs:>6} {k:<10} {med[k] * 1e3:>9.2f} {bs / med[k]:>10.0f} "
                f"{med[k] / med['ref-fused']:>11.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
