"""One process against N under torchrun: seconds per epoch and test -ELBO after the same epochs.

    python benchmarks/ddp_scaling.py --data-dir ../shared/data --nproc 2 --device cpu --epochs 3
    python benchmarks/ddp_scaling.py --data-dir DATA --nproc 4 --device cuda --epochs 5   # GPUs

Trains the same run (same --batch-size, the global batch; same seed) once with one process and
once with ``torchrun --standalone --nproc-per-node N``, then prints each epoch's seconds and
test -ELBO from the two runs' metrics.jsonl. On a CPU every process gets ``--threads`` torch
threads (default: the machine's cores / N, and the same total for the one process).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def run(cmd: list[str], threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--step", default="eager", help="the training step (eager, fx, compiled)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads per process")
    args = p.parse_args()
    cores = os.cpu_count() or 1
    per_proc = args.threads or max(1, cores // args.nproc)
    common = [
        "train", "--data-dir", args.data_dir, "--device", args.device, "--epochs",
        str(args.epochs), "--batch-size", str(args.batch_size), "--step", args.step,
        "--no-progress",
    ]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        one, many = Path(tmp) / "one", Path(tmp) / "many"
        run([sys.executable, "-m", "pyro_vae", *common, "--out", str(one)], per_proc * args.nproc)
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        torchrun += [f"--nproc-per-node={args.nproc}", "-m", "pyro_vae"]
        run([*torchrun, *common, "--out", str(many)], per_proc)
        a, b = metrics(one), metrics(many)
    print(
        f"{args.device}, global batch {args.batch_size}, step {args.step}; 1 process x "
        f"{per_proc * args.nproc} thread(s) against {args.nproc} x {per_proc}"
    )
    print(f"{'epoch':>5} {'1 proc s':>9} {f'{args.nproc} proc s':>9} {'speed-up':>9} "
          f"{'1 proc -ELBO':>13} {f'{args.nproc} proc -ELBO':>13}")  # fmt: skip
    for x, y in zip(a, b, strict=True):
        print(
            f"{x['epoch']:>5} {x['seconds']:>9.2f} {y['seconds']:>9.2f} "
            f"{x['seconds'] / y['seconds']:>8.2f}x {x['test_neg_elbo']:>13.2f} "
            f"{y['test_neg_elbo']:>13.2f}"
        )


if __name__ == "__main__":
    main()
