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
    "own_model.py": f"{TINY} --test-subset 64 --test-iw-samples 10".split(),
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
    if name == "swap_prior_likelihood.py":
        check_swap_sections(proc.stdout)
    if name == "custom_prior.py":
        check_custom_prior(proc.stdout, out)
    if name == "own_model.py":
        check_own_model(out)


def check_own_model(out: Path) -> None:
    """The user's own model trained through the library: a checkpoint of its parameters (the
    served pyro.param among them) and a finite test -ELBO and -L_10."""
    import json
    import math

    import torch

    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert math.isfinite(row["test_neg_elbo"]) and math.isfinite(row["test_neg_L10"]), row
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["user_model"]["sites"] == ["content", "style"]
    assert "params.style_scale" in ckpt["model"]


def check_custom_prior(stdout: str, out: Path) -> None:
    """The custom-prior run resumed (one metrics line per epoch, epochs 1 and 2), printed a
    finite NLL and wrote the figures it names."""
    import json
    import math
    import re

    assert "-- restarting" in stdout, stdout
    lines = (out / "metrics.jsonl").read_text().splitlines()
    epochs = [json.loads(line)["epoch"] for line in lines]
    assert epochs == [1, 2], epochs
    nll = re.search(r"test NLL (\S+) \+- ", stdout)
    assert nll and math.isfinite(float(nll.group(1))), stdout
    written = [Path(line[6:]) for line in stdout.splitlines() if line.startswith("wrote ")]
    assert written and all(p.suffix == ".png" and p.stat().st_size > 0 for p in written), stdout


def check_swap_sections(stdout: str) -> None:
    """The swap table never puts the binarized Bernoulli row beside the 8-bit rows."""
    sections = {}
    for block in stdout.split("\n== ")[1:]:
        header, _, body = block.partition(" ==")
        rows = [line.split() for line in body.splitlines() if line[:1].isalpha()]
        sections[header] = [row for row in rows if len(row) >= 9]  # the table's rows
    assert set(sections) == {"8-bit MNIST", "binarized MNIST"}, stdout
    likelihoods = {k: {row[1] for row in rows if row[0] != "prior"} for k, rows in sections.items()}
    assert likelihoods["binarized MNIST"] == {"bernoulli"}, stdout
    assert likelihoods["8-bit MNIST"] == {"continuous-bernoulli", "discretized-logistic"}, stdout


def test_swap_sections_check_can_fail():
    """Negative control: a table mixing the datasets in one section is caught."""
    header = "prior likelihood data -ELBO KL NLL b/d b/d s/epoch KL used\n"
    row = "normal {} data 1 1 1 1 1 1 analytic\n"
    good = (
        f"\n== 8-bit MNIST ==\n{header}"
        + row.format("continuous-bernoulli")
        + row.format("discretized-logistic")
        + f"\n== binarized MNIST ==\n{header}"
        + row.format("bernoulli")
    )
    check_swap_sections(good)
    # the binarized Bernoulli row also among the 8-bit rows
    mixed = good.replace("\n== binarized", row.format("bernoulli") + "\n== binarized")
    with pytest.raises(AssertionError):
        check_swap_sections(mixed)
