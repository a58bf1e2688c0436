"""The absolute overhead of pyro-vae's step over the hand-written one, robust to machine drift.

Alternates single steps of the two (same batch, batch 128 by default) and compares medians, so a
change of machine speed during the run hits both alike. Prints ms per step and the difference.

    python benchmarks/step_overhead.py --steps 300
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_vae import ReferenceVAE, reference_step  # noqa: E402

from pyro_vae import VAE  # noqa: E402
from pyro_vae.training import make_optimizer, train_step  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args()
    pyro.settings.set(module_local_params=True)
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((args.batch_size, 784), 0.13))
    vae = VAE()
    opt = make_optimizer(vae, 1e-3)
    ref = ReferenceVAE()
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-3, fused=True)
    steps = {
        "project": lambda: train_step(vae, opt, x, None),
        "reference": lambda: reference_step(ref, ref_opt, x),
    }
    times: dict[str, list[float]] = {k: [] for k in steps}
    for i in range(args.steps + 20):
        for k, step in steps.items():
            t0 = time.perf_counter()
            step()
            if i >= 20:  # the first steps warm the allocator and Pyro's first-call checks
                times[k].append(time.perf_counter() - t0)
    a, b = (statistics.median(times[k]) * 1e3 for k in ("project", "reference"))
    print(f"batch {args.batch_size}, CPU {torch.get_num_threads()} threads, median of {args.steps}")
    print(
        f"project {a:.3f} ms  reference (fused Adam) {b:.3f} ms  overhead {a - b:.3f} ms  "
        f"ratio {a / b:.3f}x"
    )


if __name__ == "__main__":
    main()
