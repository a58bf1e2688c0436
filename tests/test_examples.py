"""Every script in examples/ runs end to end with tiny arguments, and none goes unlisted.

Each example takes ``--data-dir`` and ``--out``; the test adds both. Add one line to EXAMPLES
for each new example: the arguments that make it run in a few seconds on a CPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"

# Every example runs one epoch on the CPU, on a few hundred images.
TINY = "--epochs 1 --device cpu --train-subset 256"

# file name -> the tiny arguments (besides --data-dir and --out) that make it run in seconds
EXAMPLES: dict[str, list[str]] = {
    "vae.py": f"{TINY} --test-subset 256".split(),
    "cvae.py": f"{TINY} --test-subset 128".split(),
    "latent_2d.py": f"{TINY} --test-subset 200 --grid-size 5".split(),
    "swap_prior_likelihood.py": (
        f"{TINY} --test-subset 64 --num-samples 10 "
        "--combos normal:bernoulli,mog:continuous-bernoulli,normal:discretized-logistic"
    ).split(),
    "custom_prior.py": f"{TINY} --epochs 2 --test-subset 64 --z-dim 4 --num-samples 10".split(),
    "compare_elbo.py": (
        f"{TINY} --test-subset 64 --eval-every 1 --z-dim 4 --hidden 32 --num-samples 10 "
        "--nll-subset 16 --repeats 2 --grad-repeats 2 --grad-batch 8 --ks 1,5 --iw-subset 8"
    ).split(),
}


def test_every_example_is_listed():
    found = {p.name for p in EXAMPLES_DIR.glob("*.py")}
    unlisted = sorted(found - set(EXAMPLES))
    assert not unlisted, f"add these examples to EXAMPLES in {Path(__file__).name}: {unlisted}"
    missing = sorted(set(EXAMPLES) - found)
    assert not missing, f"EXAMPLES lists files that are not in examples/: {missing}"


@pytest.mark.mnist
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs(name, mnist_dir, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(EXAMPLES_DIR / name), "--data-dir", str(mnist_dir)]
    cmd += ["--out", str(out), *EXAMPLES[name]]
    # Examples run under the same rule as the tests: a warning is an error.
    env = {**os.environ, "PYTHONWARNINGS": "error", "MPLBACKEND": "Agg"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert out.is_dir() and any(out.rglob("*")), f"{name} wrote nothing into --out"
