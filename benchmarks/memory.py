"""Peak memory of a training run with each step kind: eager (the reference), fx and compiled.

    python benchmarks/memory.py --data-dir ../shared/data --epochs 3
    python benchmarks/memory.py --data-dir DATA --device cuda --steps eager,fx,compiled,cudagraph
    python benchmarks/memory.py --data-dir DATA --model semi --epochs 2 --train-subset 20000

Each step kind trains the same run (``pyro_vae.train``: MNIST, batch 128, seed 0; the VAE
``--model``: the default MLP VAE, the conv VAE, two stochastic layers or the semi-supervised
VAE with 100 labels) in a fresh process, so one kind's allocations cannot hide in another's.
Printed per kind: the peak resident set size of the process (``ru_maxrss``), its ratio to
eager's, the resident size after each epoch and its growth from the first epoch to the last.
On CUDA also ``torch.cuda.max_memory_allocated``. Target (the fast-step issue): fx and compiled
at most 1.15x eager's peak, and flat across epochs (no autograd graph outlives its step).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

TARGET_RATIO = 1.15

# --model: the VAE and the run's extra options.
MODELS = {
    "default": ({}, {}),
    "conv": ({"network": "conv"}, {}),
    "stacked": ({"latent_dims": (100, 50), "hidden_dims": (200, 200), "activation": "tanh"}, {}),
    "semi": (
        {"num_classes": 10, "classifier": "conv", "hidden_dims": (500,)},
        {"labelled": 100, "labelled_per_batch": 16},
    ),
}


def resident_mb() -> float:
    """The process's resident set size now (VmRSS), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(args: argparse.Namespace) -> None:
    import pyro
    import torch

    from pyro_vae import TrainConfig, VAEConfig, train

    per_epoch: list[float] = []

    def log(line: str) -> None:
        if line.startswith("epoch "):
            per_epoch.append(resident_mb())

    vae_options, run_options = MODELS[args.model]
    with tempfile.TemporaryDirectory() as out, pyro.settings.context(module_local_params=True):
        config = TrainConfig(
            **run_options,
            train_subset=args.train_subset,
            data_dir=args.data_dir,
            out=str(Path(out) / "run"),
            epochs=args.epochs,
            batch_size=args.batch_size,
            step=args.child,
            device=args.device,
        )
        train(VAEConfig(**vae_options), config, progress=False, log=log, write_figures=False)
    result = {
        "kind": args.child,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "per_epoch_mb": per_epoch,
    }
    if torch.cuda.is_available() and args.device.startswith("cuda"):
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(result))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("PYRO_VAE_DATA_DIR", "data"))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", default="eager,fx,compiled", help="step kinds, comma-separated")
    p.add_argument("--model", choices=sorted(MODELS), default="default")
    p.add_argument("--train-subset", type=int, default=0, help="first N training images")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    import torch

    results = []
    for kind in args.steps.split(","):
        cmd = [sys.executable, __file__, "--child", kind]
        for flag in ("data_dir", "epochs", "batch_size", "device", "model", "train_subset"):
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.exit(f"{kind} failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(lines[-1][len("RESULT ") :]))
    print(
        f"device: {args.device}; torch {torch.__version__}; {args.epochs} epochs of MNIST"
        f"{' (first ' + str(args.train_subset) + ' images)' if args.train_subset else ''}, "
        f"batch {args.batch_size}, the {args.model} VAE; one fresh process per step kind"
    )
    eager = next((r["peak_mb"] for r in results if r["kind"] == "eager"), None)
    cuda = any("cuda_peak_mb" in r for r in results)
    head = f"{'step':<10} {'peak RSS MB':>11} {'x eager':>8} {'growth MB':>9}  RSS after each epoch"
    print(head + ("  cuda peak MB" if cuda else ""))
    for r in results:
        ratio = r["peak_mb"] / eager if eager else float("nan")
        growth = r["per_epoch_mb"][-1] - r["per_epoch_mb"][0]
        epochs = " ".join(f"{v:.0f}" for v in r["per_epoch_mb"])
        line = f"{r['kind']:<10} {r['peak_mb']:>11.0f} {ratio:>7.2f}x {growth:>+9.0f}  {epochs}"
        if cuda:
            line += f"  {r.get('cuda_peak_mb', float('nan')):.0f}"
        print(line)
    print(f"target: fx and compiled at most {TARGET_RATIO}x eager's peak, flat across epochs")


if __name__ == "__main__":
    main()
