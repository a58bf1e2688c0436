"""M1 + M2 (Kingma, Rezende, Mohamed & Welling 2014): the semi-supervised VAE on the latent
codes of a trained VAE, the paper's best model at 100 labels (96.67% in its Table 1).

M1 is any trained pyro-vae run (``--m1 RUN``, e.g. the IWAE-paper VAE, 784-200-200-50 tanh):
its guide's q(z1 | x) is the feature extractor. Every epoch the training images are binarized
afresh and encoded, and z1 ~ q(z1 | x) is drawn (the paper trains M2 on samples of M1's
posterior). M2 is the library's own semi-supervised VAE, ``VAE(num_classes=10,
classifier="mlp", image_shape=(1, 1, d))`` over the d-dimensional codes, with a user-given
likelihood: z1 ~ N(loc, softplus(raw) + 1e-3), both from M2's decoder. It is fitted by the
library's enumerated objective (``EnumELBO``: the 10 labels summed out in one batched pass,
alpha's classification term on the labelled codes) through the compiled step, with N labels
drawn class-balanced for draw d exactly as ``pyro-vae train --labelled N --label-seed d``
draws them, ``--labelled-per-batch`` of them in every batch. Test accuracy: q(y | z1) at the
posterior mean of each test image's code (the test images binarized once with a fixed seed),
after every epoch; no epoch is picked by test accuracy. Every epoch writes
OUT/labels<N>/draw<d>/metrics.jsonl and checkpoint.pt; ``--resume --epochs E`` continues each
draw to E epochs.

``--summary`` prints the draws' accuracy every 10 epochs; ``--class-grid`` draws each trained
draw's class-conditional samples (both train nothing).

    OMP_NUM_THREADS=1 python benchmarks/m1_m2.py --m1 results/semi-supervised/m1-iwae-vae-1811 \\
        --data-dir ../shared/data --labelled 100 --draws 5 --epochs 100 --active-units \\
        --out runs/m1m2

Measured (docs/semi_supervised.md), M1 the IWAE-paper VAE at 1811 passes: 95.24 +- 0.42% after
100 epochs over 5 draws with --active-units (its 15 active units); 92.98 +- 1.29% after 50
epochs over 3 draws on all 50 units.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from pyro import distributions as dist

from pyro_vae import VAE, TrainConfig, load_vae
from pyro_vae.data.labelled import draw_labelled
from pyro_vae.inference.objectives import EnumELBO, semi_supervised_alpha
from pyro_vae.inference.steps import build_step
from pyro_vae.runtime.distributed import World
from pyro_vae.training.schedules import make_optimizer

PAPER_M1_M2 = {100: 96.67, 600: 97.41, 1000: 97.60, 3000: 97.82}  # Table 1 (reference notes)
MIN_SCALE = 1e-3
GRID_PER_CLASS = 10  # --class-grid: samples per label


def gaussian_codes(out: torch.Tensor) -> dist.Distribution:
    """p(z1 | z2, y): a diagonal Gaussian, its loc and scale from M2's decoder."""
    loc, raw = out.chunk(2, dim=-1)
    return dist.Normal(loc, F.softplus(raw) + MIN_SCALE).to_event(1)


gaussian_codes.params_per_pixel = 2


def mnist(data_dir: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import MNIST

    ds = MNIST(data_dir, train=train, download=False)
    return ds.data.reshape(len(ds.data), -1).float() / 255, ds.targets.long()


@torch.no_grad()
def codes(m1: VAE, gray: torch.Tensor, seed: int, sample: bool) -> torch.Tensor:
    """M1's z1 for images binarized with ``seed``: a draw of q(z1 | x), or its mean."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in range(0, len(gray), 5000):
        x = torch.bernoulli(gray[s : s + 5000], generator=g)
        loc, scale = m1.encode(x)
        out.append(loc + scale * torch.randn(loc.shape, generator=g) if sample else loc)
    return torch.cat(out)


def build_m2(args: argparse.Namespace, d: int) -> VAE:
    """M2 over d-dimensional codes: the library's semi-supervised VAE, a user likelihood."""
    return VAE(
        z_dim=args.z_dim,
        hidden_dims=(args.hidden,),
        activation="softplus",
        num_classes=10,
        classifier="mlp",
        classifier_dims=(args.hidden,),
        image_shape=(1, 1, d),
        likelihood=gaussian_codes,
    )


@torch.no_grad()
def class_grid(args: argparse.Namespace, m1: VAE, data: dict, draw: int, out: Path) -> Path:
    """The class-conditional samples of a trained draw: y given, z2 ~ p(z2), the code
    E[z1 | z2, y] from M2 (0, M1's prior mean, on inactive units), then M1's decoder mean."""
    from pyro_vae.figures.plots import class_grid_figure

    if not (out / "checkpoint.pt").exists():
        raise SystemExit(
            f"error: {out} has no checkpoint.pt: train the draw first (drop --class-grid)"
        )
    m2 = build_m2(args, data["test"].shape[1])
    m2.load_state_dict(torch.load(out / "checkpoint.pt", weights_only=False)["m2"])
    m2.eval()
    torch.manual_seed(draw)
    labels = torch.arange(10).repeat_interleave(GRID_PER_CLASS)
    codes_ = m2.sample(y=labels)
    z1 = torch.zeros(len(labels), m1.config.z_dim)
    z1[:, data["units"] if data["units"] is not None else slice(None)] = codes_
    path = out / "class_grid.png"
    fig = class_grid_figure(m1.decode(z1), 10, GRID_PER_CLASS, image_shape=(1, 28, 28))
    fig.savefig(path)
    print(f"wrote {path}")
    return path


def train_draw(args: argparse.Namespace, m1: VAE, data: dict, draw: int, out: Path) -> dict:
    torch.manual_seed(draw)
    x_train, y_train, test_codes, y_test = data["x"], data["y"], data["test"], data["y_test"]
    d = test_codes.shape[1]
    labelled = draw_labelled(y_train, args.labelled, 10, draw)
    is_labelled = torch.zeros(len(y_train), dtype=torch.bool)
    is_labelled[labelled] = True
    unlabelled = torch.nonzero(~is_labelled)[:, 0]
    per_u = args.batch_size - args.labelled_per_batch
    batches = len(unlabelled) // per_u
    alpha = args.alpha_scale * semi_supervised_alpha(
        len(y_train), args.labelled_per_batch * batches
    )
    m2 = build_m2(args, d)
    config = TrainConfig(batch_size=args.batch_size, lr=args.lr)
    optimizer = make_optimizer(m2, config)
    rows, start = [], 1
    if args.resume and (out / "checkpoint.pt").exists():
        # Continues the draw (its weights and Adam's state); not bit-exact: the step's random
        # draws after a restart are not those the uninterrupted run would have taken.
        saved = torch.load(out / "checkpoint.pt", weights_only=False)
        m2.load_state_dict(saved["m2"])
        optimizer.load_state_dict(saved["optimizer"])
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        rows = rows[: saved["epoch"]]
        start = saved["epoch"] + 1
        print(f"draw {draw}: resumed after epoch {saved['epoch']}")
    step = build_step(m2, optimizer, EnumELBO(alpha=alpha), args.step, World())
    for epoch in range(start, args.epochs + 1):
        t0 = time.perf_counter()
        m2.train()
        z = codes(m1, x_train, seed=1000 * draw + epoch, sample=True)
        if data["units"] is not None:
            z = z[:, data["units"]]
        g = torch.Generator().manual_seed(1000 * draw + epoch)
        order = unlabelled[torch.randperm(len(unlabelled), generator=g)]
        picks = torch.randint(len(labelled), (batches * args.labelled_per_batch,), generator=g)
        cycle = labelled[picks]  # the labelled codes of the epoch's batches, drawn at random
        sums = torch.zeros(len(EnumELBO.stat_names) + 1)
        for i in range(batches):
            idx_l = cycle[i * args.labelled_per_batch : (i + 1) * args.labelled_per_batch]
            idx_u = order[i * per_u : (i + 1) * per_u]
            idx = torch.cat([idx_l, idx_u])
            y = torch.cat([y_train[idx_l], torch.full((per_u,), -1, dtype=torch.long)])
            values, _ = step(z[idx], y)
            sums += values
        m2.eval()
        with torch.no_grad():
            accuracy = (m2.classify(test_codes).argmax(-1) == y_test).float().mean().item()
        seen = batches * args.batch_size
        row = {
            "epoch": epoch,
            "test_accuracy": accuracy,
            "train_loss": sums[0].item() / seen,
            "seconds": time.perf_counter() - t0,
        }
        rows.append(row)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        state = {"m2": m2.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}
        torch.save(state, out / "checkpoint.tmp")
        (out / "checkpoint.tmp").replace(out / "checkpoint.pt")  # a whole checkpoint, or the last
        print(
            f"draw {draw} epoch {epoch:>3}/{args.epochs}  loss {row['train_loss']:.2f}  "
            f"test accuracy {100 * accuracy:.2f}%  {row['seconds']:.1f} s",
            flush=True,
        )
    (out / "config.json").write_text(
        json.dumps(
            {**vars(args), "draw": draw, "alpha": alpha, "code_dims": d, "m1": str(args.m1)},
            default=str,
        )
    )
    return rows[-1]


def summary(args: argparse.Namespace) -> list[dict]:
    """Prints the mean and spread over the draws of the test accuracy every 10 epochs (and at
    the last epoch all the draws reached); returns each draw's row at that epoch."""
    runs = {}
    for draw in range(args.first_draw, args.draws):
        path = args.out / f"labels{args.labelled}" / f"draw{draw}" / "metrics.jsonl"
        if not path.exists():
            raise SystemExit(f"error: {path} is missing: train draw {draw} first")
        runs[draw] = [json.loads(line) for line in path.read_text().splitlines()]
    last = min(len(rows) for rows in runs.values())
    print(f"{'epoch':>5}  {'mean':>6}  {'sd':>5}  " + "  ".join(f"draw {d}" for d in runs))
    for e in sorted({*range(10, last + 1, 10), last}):
        accs = [100 * rows[e - 1]["test_accuracy"] for rows in runs.values()]
        sd = statistics.stdev(accs) if len(accs) > 1 else float("nan")
        cells = "  ".join(f"{a:>6.2f}" for a in accs)
        print(f"{e:>5}  {statistics.mean(accs):>6.2f}  {sd:>5.2f}  {cells}")
    return [rows[last - 1] for rows in runs.values()]


def main(argv: list[str] | None = None) -> list[dict]:
    """The last epoch's metrics of every draw."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--m1", type=Path, required=True, help="a trained pyro-vae run: M1")
    p.add_argument("--data-dir", required=True, help="torchvision's MNIST folder")
    p.add_argument("--out", type=Path, default=Path("runs/m1m2"))
    p.add_argument("--labelled", type=int, default=100)
    p.add_argument("--draws", type=int, default=3, help="label draws 0 .. N-1")
    p.add_argument("--first-draw", type=int, default=0, help="start at this draw (parallel runs)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--labelled-per-batch", type=int, default=16)
    p.add_argument("--alpha-scale", type=float, default=10.0, help="times the paper's alpha")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--z-dim", type=int, default=50, help="M2's latent z2")
    p.add_argument("--hidden", type=int, default=500, help="M2's hidden layer and q(y | z1)'s")
    p.add_argument("--step", default="compiled", choices=["eager", "fx", "compiled"])
    p.add_argument(
        "--active-units",
        action="store_true",
        help="keep only M1's active units (Var_x E_q[z1 | x] > 0.01 over the training images)",
    )
    p.add_argument("--resume", action="store_true", help="continue each draw from OUT's checkpoint")
    p.add_argument("--train-subset", type=int, default=0, help="the first N images (0: all)")
    p.add_argument(
        "--summary",
        action="store_true",
        help="no training: the draws' test accuracy every 10 epochs, from OUT's metrics",
    )
    p.add_argument(
        "--class-grid",
        action="store_true",
        help="no training: each trained draw's class-conditional samples, OUT/.../class_grid.png",
    )
    args = p.parse_args(argv)
    if args.summary:
        return summary(args)
    m1, m1_ckpt = load_vae(args.m1)
    m1.eval()
    args.m1_epoch = m1_ckpt["epoch"]  # recorded in each draw's config.json, with the file's hash
    args.m1_sha256 = hashlib.sha256((args.m1 / "checkpoint.pt").read_bytes()).hexdigest()
    x, y = mnist(args.data_dir, train=True)
    x_test, y_test = mnist(args.data_dir, train=False)
    if args.train_subset:
        x, y = x[: args.train_subset], y[: args.train_subset]
    data = {"x": x, "y": y, "test": codes(m1, x_test, seed=0, sample=False), "y_test": y_test}
    data["units"] = None
    if args.active_units:
        data["units"] = torch.nonzero(codes(m1, x, seed=0, sample=False).var(0) > 0.01)[:, 0]
        data["test"] = data["test"][:, data["units"]]
        print(f"M1's active units: {len(data['units'])} of {m1.config.z_dim}")
    lasts = []
    for draw in range(args.first_draw, args.draws):
        out = args.out / f"labels{args.labelled}" / f"draw{draw}"
        if args.class_grid:
            class_grid(args, m1, data, draw, out)
            continue
        lasts.append(train_draw(args, m1, data, draw, out))
    if args.class_grid:
        return []
    finals = [100 * r["test_accuracy"] for r in lasts]
    spread = f" +- {statistics.stdev(finals):.2f}" if len(finals) > 1 else ""
    print(
        f"M1 + M2, {args.labelled} labels, {len(finals)} draws, {args.epochs} epochs: "
        f"test accuracy {statistics.mean(finals):.2f}{spread}% "
        f"({', '.join(f'{a:.2f}' for a in finals)}); "
        f"paper: {PAPER_M1_M2.get(args.labelled, 'n/a')}%"
    )
    return lasts


if __name__ == "__main__":
    main()
