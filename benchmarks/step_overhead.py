"""The absolute overhead of a pyro-vae step over the hand-written one, robust to machine drift.

Alternates single steps of the two (same batch, batch 128 by default) and compares medians, so a
change of machine speed during the run hits both alike. Prints ms per step and the difference.

    python benchmarks/step_overhead.py --steps 300 --path compiled
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_vae import ReferenceVAE, reference_step  # noqa: E402

from pyro_vae import VAE, TrainConfig  # noqa: E402
from pyro_vae.inference.steps import build_step  # noqa: E402
from pyro_vae.runtime.distributed import World  # noqa: E402
from pyro_vae.training.schedules import make_optimizer  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--path", default="compiled", choices=["eager", "fx", "compiled"])
    args = p.parse_args()
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((args.batch_size, 784), 0.13))
    vae = VAE()
    config = TrainConfig()
    step = build_step(vae, make_optimizer(vae, config), config.objective(), args.path, World())
    ref = ReferenceVAE()
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-3, fused=True)
    steps = {
        args.path: lambda: step(x, None),
        "reference": lambda: reference_step(ref, ref_opt, x),
    }
    times: dict[str, list[float]] = {k: [] for k in steps}
    for i in range(args.steps + 20):
        for k, run in steps.items():
            t0 = time.perf_counter()
            run()
            if i >= 20:  # the first steps trace, compile and warm the allocator
                times[k].append(time.perf_counter() - t0)
    a, b = (statistics.median(times[k]) * 1e3 for k in (args.path, "reference"))
    print(f"batch {args.batch_size}, CPU {torch.get_num_threads()} threads, median of {args.steps}")
    print(
        f"{args.path} {a:.3f} ms  reference (fused Adam) {b:.3f} ms  overhead {a - b:+.3f} ms  "
        f"ratio {a / b:.3f}x"
    )


if __name__ == "__main__":
    main()
