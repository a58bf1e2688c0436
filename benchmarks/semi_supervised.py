"""MNIST test accuracy of the semi-supervised VAE (M2) with N labels, over several label draws.

For every N of ``--labels`` and every draw d < ``--draws`` it trains (or resumes, or reuses)

    pyro-vae train --num-classes 10 --labelled N --label-seed d --seed d --epochs E
                   --out OUT/<settings>/labels<N>/draw<d>  <the settings' options>

and prints one table: the test accuracy of q(y | x) after the last epoch (mean and standard
deviation over the draws, and each draw), beside Pyro's tutorial and the paper. No epoch is
picked by test accuracy (Pyro's tutorial reports the epoch of best validation accuracy).
``--baseline`` adds the classifier q(y | x) trained on the N labelled images alone (same
draws, same architecture). ``--evaluate`` runs ``pyro-vae evaluate`` on draw 0 (the
confusion matrix, and how often the digit classifier sees the digit each label asks for);
every run's class grid is in ``RUN/figures/class_grid.png``.

The settings (``--settings``):

- ``proposed``: what this branch proposes for >= 95% at 100 labels: q(y | x) a small CNN,
  16 labelled images in every batch of 128, alpha ten times the paper's (docs/semi_supervised.md);
- ``paper``: the paper's and Pyro's tutorial's networks and optimizer (784-500-50 softplus,
  q(y | x) one layer of 500, batch 200, Adam 4.2e-4), labelled images in the epoch's order like
  the others, the paper's alpha = 0.1 N;

and anything after ``--`` is passed to every ``pyro-vae train`` (it overrides the settings).
A run that is already there is resumed to ``--epochs`` or reused, so the table can be printed
again (``--print-only``) or extended with more draws.

    OMP_NUM_THREADS=1 python benchmarks/semi_supervised.py --data-dir ../shared/data \\
        --labels 100 --draws 3 --epochs 50 --baseline
    python benchmarks/semi_supervised.py --data-dir ../shared/data --settings paper --draws 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Published MNIST test accuracies (../shared/references/semi-supervised.md).
PYRO_TUTORIAL = {100: 93.19, 600: 94.37, 1000: 94.87, 3000: 95.82}
PYRO_CLASSIFIER_ALONE = {100: 77.12, 600: 87.16, 1000: 88.63, 3000: 91.08}
PAPER_M2 = {100: 88.03, 600: 95.06, 1000: 96.40, 3000: 96.08}

SETTINGS = {
    "proposed": ["--hidden-dims", "500", "--classifier", "conv", "--classifier-dims", "500"]
    + ["--labelled-per-batch", "16", "--alpha-scale", "10"],
    "paper": ["--hidden-dims", "500", "--classifier", "mlp", "--classifier-dims", "500"]
    + ["--batch-size", "200", "--lr", "4.2e-4"],
}
PAPER_ALPHA = 0.1  # times N, on the mean over the labelled images


def _sizes(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v]


def train_options(settings: list[str], num_train: int, labels: int) -> list[str]:
    """The settings' options, with --alpha-scale k turned into --alpha: k times the paper's
    0.1 N per labelled image an epoch shows (16 in each of the epoch's batches)."""
    out, scale, i = [], None, 0
    while i < len(settings):
        if settings[i] == "--alpha-scale":
            scale, i = float(settings[i + 1]), i + 2
            continue
        out.append(settings[i])
        i += 1
    if scale is not None:
        per_batch = int(out[out.index("--labelled-per-batch") + 1])
        batch = int(out[out.index("--batch-size") + 1]) if "--batch-size" in out else 128
        steps = -(-(num_train - labels) // (batch - per_batch))
        out += ["--alpha", f"{scale * PAPER_ALPHA * num_train / (per_batch * steps):.6g}"]
    return out


def run_dir(args: argparse.Namespace, labels: int, draw: int) -> Path:
    return Path(args.out) / args.settings / f"labels{labels}" / f"draw{draw}"


def train(args: argparse.Namespace, labels: int, draw: int) -> None:
    out = run_dir(args, labels, draw)
    rows = _metrics(out)
    if rows and rows[-1]["epoch"] >= args.epochs:
        return
    cmd = [sys.executable, "-m", "pyro_vae", "train", "--data-dir", args.data_dir]
    cmd += ["--out", str(out), "--epochs", str(args.epochs), "--no-progress"]
    if rows or (out / "checkpoint.pt").exists():
        cmd += ["--resume"]
    else:
        cmd += ["--num-classes", "10", "--labelled", str(labels), "--label-seed", str(draw)]
        cmd += ["--seed", str(draw)]
        cmd += train_options(SETTINGS[args.settings], 60_000, labels) + args.extra
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def _metrics(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def classifier_alone(args: argparse.Namespace, labels: int, draw: int) -> float:
    """Test accuracy of the run's q(y | x) architecture trained on its labelled images alone
    (cross-entropy, Adam 1e-3, dynamic binarization, ``--baseline-steps`` steps)."""
    import torch
    import torch.nn.functional as F

    from pyro_vae.data.images import ImageData
    from pyro_vae.data.labelled import draw_labelled
    from pyro_vae.data.pixels import to_pixels
    from pyro_vae.models.config import VAEConfig
    from pyro_vae.models.label_encoder import build_classifier
    from pyro_vae.models.likelihoods import BernoulliLikelihood
    from pyro_vae.runtime.rng import seeded

    config = json.loads((run_dir(args, labels, draw) / "config.json").read_text())
    vae_config = VAEConfig.from_dict(config["vae"])
    lik = BernoulliLikelihood()
    data = ImageData.load(args.data_dir, lik, "dynamic")
    idx = draw_labelled(data.train_y, labels, 10, draw)
    x, y = data.train_x[idx], data.train_y[idx]
    shape = vae_config.image_shape  # q(y | x) takes images [B, C, H, W]
    with seeded(draw):
        clf = build_classifier(vae_config)
        opt = torch.optim.Adam(clf.parameters(), lr=1e-3)
        for _ in range(args.baseline_steps):
            b = torch.randint(len(idx), (min(128, len(idx)),))
            pixels = to_pixels(x[b], "dynamic", lik).unflatten(-1, shape)
            loss = F.cross_entropy(clf(pixels), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        test = data.test_x.split(1000)  # pixels already (the fixed binarization)
        pred = torch.cat([clf(b.unflatten(-1, shape)).argmax(-1) for b in test])
    return 100 * (pred == data.test_y).double().mean().item()


def evaluate(args: argparse.Namespace, labels: int) -> None:
    out = run_dir(args, labels, 0)
    cmd = [sys.executable, "-m", "pyro_vae", "evaluate", str(out), "--data-dir", args.data_dir]
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} +- {sd:.2f}"


def table(args: argparse.Namespace, baselines: dict) -> list[dict]:
    rows = []
    head = (
        f"{'labels':>6} {'draws':>5} {'epochs':>6} {'test accuracy %':>16} {'per draw':<24}"
        f"{'alone %':>15} {'s/epoch':>8} {'Pyro':>7} {'alone':>7} {'paper':>7}"
    )
    print(f"\nsettings {args.settings}: q(y | x)'s MNIST test accuracy after the last epoch")
    print(head)
    for n in args.labels:
        finals, seconds, epochs = [], [], set()
        for d in range(args.draws):
            m = _metrics(run_dir(args, n, d))
            if m:
                finals.append(100 * m[-1]["test_accuracy"])
                seconds += [r["seconds"] for r in m]
                epochs.add(m[-1]["epoch"])
        alone = baselines.get(n, [])
        per_draw = ", ".join(f"{a:.2f}" for a in finals)
        s_epoch = f"{statistics.median(seconds):.1f}" if seconds else "-"
        print(
            f"{n:>6} {len(finals):>5} {'/'.join(map(str, sorted(epochs))) or '-':>6} "
            f"{_mean_sd(finals):>16} {per_draw:<24}{_mean_sd(alone):>15} {s_epoch:>8} "
            f"{PYRO_TUTORIAL.get(n, float('nan')):>7.2f} "
            f"{PYRO_CLASSIFIER_ALONE.get(n, float('nan')):>7.2f} "
            f"{PAPER_M2.get(n, float('nan')):>7.2f}"
        )
        rows.append({"labels": n, "accuracy": finals, "classifier_alone": alone})
    print(
        "Pyro: its tutorial (enumeration + auxiliary loss, mean of 5 draws, best-validation "
        "epoch); alone: a classifier on the labelled images only; paper: Kingma et al.'s M2"
    )
    return rows


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("PYRO_VAE_DATA_DIR", "data"))
    p.add_argument("--out", default="runs/semi")
    p.add_argument("--settings", choices=sorted(SETTINGS), default="proposed")
    p.add_argument("--labels", type=_sizes, default=[100], help="e.g. 100,600,1000,3000")
    p.add_argument("--draws", type=int, default=3, help="label draws (seeds 0, 1, ...)")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--print-only", action="store_true", help="train nothing: the table")
    p.add_argument("--baseline", action="store_true", help="also q(y | x) on the labels alone")
    p.add_argument("--baseline-steps", type=int, default=2000)
    p.add_argument("--evaluate", action="store_true", help="pyro-vae evaluate on draw 0")
    args = p.parse_args(argv)
    args.extra = extra
    t0 = time.time()
    baselines: dict[int, list[float]] = {}
    for n in args.labels:
        for d in range(args.draws):
            if not args.print_only:
                train(args, n, d)
            if args.baseline and _metrics(run_dir(args, n, d)):
                baselines.setdefault(n, []).append(classifier_alone(args, n, d))
        if args.evaluate:
            evaluate(args, n)
    rows = table(args, baselines)
    summary = Path(args.out) / args.settings / "summary.json"
    summary.parent.mkdir(parents=True, exist_ok=True)
    summary.write_text(json.dumps({"settings": args.settings, "rows": rows}, indent=2))
    print(f"wrote {summary} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
