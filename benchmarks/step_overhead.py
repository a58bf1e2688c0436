"""The absolute overhead of a pyro-vae step over the hand-written one, robust to machine drift.

Alternates single steps of the two (same batch, batch 128 by default) and compares medians, so a
change of machine speed during the run hits both alike. Prints ms per step and the difference.

    python benchmarks/step_overhead.py --steps 300 --path compiled

``--preset iwae-paper`` takes that protocol's network (784-200-200-50, tanh), batch (20) and
Adam eps for both steps, and prints what the steps alone cost per pass over its 59,600
images; ``--run DIR`` puts beside it the seconds per pass that run recorded (the median of
its last ``--last`` epochs in DIR/metrics.jsonl), to see whether anything but the steps slows
a pass down.

    OMP_NUM_THREADS=1 python benchmarks/step_overhead.py --preset iwae-paper --steps 1000 \\
        --run runs/iwae-paper/vae-k1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_vae import ReferenceVAE, reference_step  # noqa: E402

from pyro_vae import VAE, TrainConfig  # noqa: E402
from pyro_vae.inference.steps import build_step  # noqa: E402
from pyro_vae.runs.presets import preset_values  # noqa: E402
from pyro_vae.runtime.distributed import World  # noqa: E402
from pyro_vae.training.schedules import make_optimizer  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--path", default="compiled", choices=["eager", "fx", "compiled"])
    p.add_argument("--preset", choices=["iwae-paper"], help="that protocol's network and batch")
    p.add_argument("--run", type=Path, help="a run of the preset: its recorded seconds per pass")
    p.add_argument("--last", type=int, default=50, help="epochs of --run to take (default 50)")
    args = p.parse_args()
    torch.manual_seed(0)
    if args.preset:
        preset = preset_values(args.preset)
        vae_kw, train_kw = preset["vae"], preset["train"]
        args.batch_size = train_kw["batch_size"]
        vae = VAE(**{k: vae_kw[k] for k in ("z_dim", "hidden_dims", "activation")})
        config = TrainConfig(batch_size=args.batch_size, eps=train_kw["eps"])
        ref = ReferenceVAE(
            z_dim=vae_kw["z_dim"], hidden=vae_kw["hidden_dims"], activation=vae_kw["activation"]
        )
        ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-3, eps=train_kw["eps"], fused=True)
    else:
        vae, config = VAE(), TrainConfig()
        ref = ReferenceVAE()
        ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-3, fused=True)
    x = torch.bernoulli(torch.full((args.batch_size, 784), 0.13))
    step = build_step(vae, make_optimizer(vae, config), config.objective(), args.path, World())
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
    if args.preset:
        steps_per_pass = -(-preset["train"]["train_subset"] // args.batch_size)
        alone = a * steps_per_pass / 1e3
        print(f"the steps alone: {alone:.2f} s per pass ({steps_per_pass} steps)")
    if args.run:
        rows = [json.loads(line) for line in (args.run / "metrics.jsonl").read_text().splitlines()]
        last = rows[-args.last :]
        train = statistics.median(r["seconds"] for r in last)
        evals = statistics.median(r.get("eval_seconds", 0.0) for r in last)
        print(
            f"{args.run}: epochs {last[0]['epoch']}..{last[-1]['epoch']}, median {train:.2f} s "
            f"training + {evals:.2f} s test -ELBO per pass"
        )


if __name__ == "__main__":
    main()
