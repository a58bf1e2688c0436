"""The IWAE paper's table beside the runs of ``pyro-vae train --preset iwae-paper``.

    python benchmarks/iwae_paper.py runs/iwae-paper/vae-k1 runs/iwae-paper/iwae-k5 \\
        --figure docs/img/iwae_paper_curves.png

For each run directory: its objective, passes done out of the protocol's 3280, the test NLL
(K = 5000, from RUN/eval.json written by ``pyro-vae evaluate RUN --num-samples 5000``), the
test -ELBO of the last epoch, seconds per pass, and the paper's figure for that row (Burda,
Grosse & Salakhutdinov 2016, Table 1, MNIST, one stochastic layer, final values after 3280
passes). Then the stage-by-stage curve: the test -ELBO and -L_100 (``--test-iw-samples
100``) at the end of each stage, and -L_5 for an IWAE run with k = 5. The figure draws the
test -ELBO every pass and -L_100 at the stage ends, against passes, with the paper's final NLL
for reference.

With ``--data-dir`` it also loads each run's trained VAE and measures two things the
protocol leaves open (docs/results.md, "Where the protocol differs"):

- the active units (Var_x E_q[z_u | x] > 0.01) on the 10,000 test images, as ``pyro-vae
  evaluate`` counts them, and on the first 500 training images, as the authors' code does;
- the test set's binarization: pyro-vae binarizes the test images once with a fixed seed, the
  paper afresh; ``--binarizations N`` gives -L_K (``--iw-samples K``, default 100) on the
  fixed binarization and on N - 1 others, and their spread.

    python benchmarks/iwae_paper.py results/iwae-paper/vae-k1 --data-dir ../shared/data \
        --binarizations 5
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import torch
from matplotlib.figure import Figure

from pyro_vae import evaluate_log_likelihood, load_vae
from pyro_vae.data.datasets import load_dataset
from pyro_vae.data.pixels import TEST_DATA_SEED, to_pixels
from pyro_vae.evaluation.active_units import active_units
from pyro_vae.figures.run_figures import save_png
from pyro_vae.training.schedules import stage_boundaries

# Table 1: test NLL (k = 5000) after the full protocol.
PAPER = {("Trace_ELBO", 1): 86.76, ("Trace_ELBO", 5): 86.47, ("IWAE", 5): 85.54}
PASSES = 3280


def load(run: Path) -> dict:
    config = json.loads((run / "config.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # eval.json is the latest `pyro-vae evaluate`; eval-EPOCH.json files keep earlier ones.
    evaluations = {}
    for path in sorted(run.glob("eval*.json")):
        report = json.loads(path.read_text())
        nll = report.get("log_likelihood")
        if nll and nll["num_samples"] == 5000 and nll["num_images"] == 10000:
            elbos = report.get("elbo", [])
            trace = [e["neg_elbo"] for e in elbos if e["estimator"] == "Trace_ELBO"]
            evaluations[report["epoch"]] = {
                **nll,
                "epoch": report["epoch"],
                "neg_elbo": trace[0] if trace else None,
            }
    nll = evaluations[max(evaluations)] if evaluations else None
    return {
        "name": run.name,
        "config": config["train"],
        "metrics": rows,
        "nll": nll,
        "evaluations": [evaluations[e] for e in sorted(evaluations)],
    }


def paper_value(run: dict) -> float | None:
    c = run["config"]
    objective = "IWAE" if c["elbo"] == "iwae" else "Trace_ELBO"
    return PAPER.get((objective, c["num_particles"]))


def table(runs: list[dict]) -> str:
    lines = [
        "| run | objective | passes (of 3280) | test NLL, K = 5000 | test −ELBO | s / pass | "
        "paper's NLL (3280 passes) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        c, last = r["config"], r["metrics"][-1]
        k = c["num_particles"]
        objective = f"IWAE, k = {k}" if c["elbo"] == "iwae" else f"VAE, k = {k}"
        nll = r["nll"]
        shown = f"{nll['neg_log_likelihood']:.2f} ± {nll['std_error']:.2f}" if nll else "–"
        if nll and nll.get("epoch") not in (None, last["epoch"]):
            shown += f" (after {nll['epoch']})"
        # The test -ELBO of `pyro-vae evaluate` at the evaluated epoch, else the last epoch's.
        at_nll = nll and nll.get("neg_elbo") is not None and nll["epoch"] == last["epoch"]
        neg_elbo = nll["neg_elbo"] if at_nll else last["test_neg_elbo"]
        seconds = sum(m["seconds"] for m in r["metrics"]) / len(r["metrics"])
        paper = paper_value(r)
        lines.append(
            f"| `{r['name']}` | {objective} | {last['epoch']} | {shown} | "
            f"{neg_elbo:.2f} | {seconds:.1f} | "
            f"{paper if paper is not None else '–'} |"
        )
    return "\n".join(lines)


def stage_table(runs: list[dict]) -> str:
    """The test bounds at the end of each stage that the runs reached, one column per bound."""
    columns = []  # (run, metric key, header)
    for r in runs:
        keys = ["test_neg_elbo", "test_neg_L100"]
        k = r["config"]["num_particles"]
        if r["config"]["elbo"] == "iwae" and k not in (1, 100):
            keys.insert(1, f"test_neg_L{k}")
        header = {"test_neg_elbo": "−ELBO", "test_neg_L100": "−L_100"}
        columns += [(r, key, f"{r['name']} {header.get(key, f'−L_{k}')}") for key in keys]
    lines = [
        "| passes | learning rate | " + " | ".join(c[2] for c in columns) + " |",
        "|---:|---:|" + "---:|" * len(columns),
    ]
    for end in stage_boundaries():
        rows = [r["metrics"][end - 1] if len(r["metrics"]) >= end else None for r, _, _ in columns]
        if all(row is None for row in rows):
            break
        lr = next(row["lr"] for row in rows if row is not None)
        cells = [
            f"{row[key]:.2f}" if row is not None and key in row else "–"
            for row, (_, key, _) in zip(rows, columns, strict=True)
        ]
        lines.append(f"| {end} | {lr:.1e} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def binarized(x: torch.Tensor, likelihood, seed: int) -> torch.Tensor:  # noqa: ANN001
    """uint8 images binarized as every run's test set is (seed TEST_DATA_SEED), or another."""
    return to_pixels(x, "dynamic", likelihood, generator=torch.Generator().manual_seed(seed))


def trained_measures(
    run: Path, data_dir: Path, binarizations: int, iw_samples: int, step: str = "compiled"
) -> str:
    """Active units on the test set and on the first 500 training images; -L_K on
    ``binarizations`` binarizations of the test set (the first the fixed one of every run)."""
    vae, _ = load_vae(run)
    vae.eval()
    raw = load_dataset("mnist", data_dir)
    lik = vae.likelihood

    def chunks(x: torch.Tensor, y: torch.Tensor, n: int) -> list:
        return [(x[s : s + n], y[s : s + n]) for s in range(0, len(x), n)]

    lines = [f"{run.name}:"]
    with torch.no_grad():
        test = binarized(raw.test_x, lik, TEST_DATA_SEED)
        au_test = active_units(vae, chunks(test, raw.test_y, 1000))
        train500 = binarized(raw.train_x[:500], lik, TEST_DATA_SEED)
        au_train = active_units(vae, chunks(train500, raw.train_y[:500], 500))
    lines.append(
        f"  active units: {au_test['active']} of {au_test['num_units']} on the "
        f"{au_test['num_images']} test images, {au_train['active']} on the first 500 training "
        "images (the authors' code's measure)"
    )
    if binarizations:
        values = []
        for seed in range(TEST_DATA_SEED, TEST_DATA_SEED + binarizations):
            x = test if seed == TEST_DATA_SEED else binarized(raw.test_x, lik, seed)
            with torch.random.fork_rng():
                torch.manual_seed(0)  # the same importance samples' noise for every binarization
                result = evaluate_log_likelihood(
                    vae, chunks(x, raw.test_y, 100), iw_samples, step=step
                )
            values.append(result["neg_log_likelihood"])
            lines.append(
                f"  test binarization seed {seed}"
                + (" (the fixed one)" if seed == TEST_DATA_SEED else "")
                + f": -L_{iw_samples} {values[-1]:.3f} ± {result['std_error']:.3f}"
            )
        if len(values) > 1:
            sd = statistics.stdev(values)
            lines.append(
                f"  over {len(values)} binarizations: mean {statistics.fmean(values):.3f}, sd "
                f"{sd:.3f} (standard error of the mean {sd / math.sqrt(len(values)):.3f}); the "
                f"fixed one {values[0] - statistics.fmean(values):+.3f} from the mean"
            )
    return "\n".join(lines)


def figure(runs: list[dict]) -> Figure:
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    for r in runs:
        epochs = [m["epoch"] for m in r["metrics"]]
        line = ax.plot(epochs, [m["test_neg_elbo"] for m in r["metrics"]], lw=1.2)[0]
        staged = [m for m in r["metrics"] if "test_neg_L100" in m]
        ax.plot(
            [m["epoch"] for m in staged],
            [m["test_neg_L100"] for m in staged],
            "o--",
            color=line.get_color(),
            ms=4,
        )
        line.set_label(f"{r['name']}: test -ELBO (line), -L_100 at stage ends (dots)")
        if r["evaluations"]:
            ax.plot(
                [e["epoch"] for e in r["evaluations"]],
                [e["neg_log_likelihood"] for e in r["evaluations"]],
                "*",
                color=line.get_color(),
                ms=10,
                label=f"{r['name']}: test NLL, K = 5000",
            )
        paper = paper_value(r)
        if paper is not None:
            ax.axhline(paper, color=line.get_color(), ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel(
        "passes over the training set (log scale); stages end at 1, 4, 13, 40, 121, 364, 1093, 3280"
    )
    ax.set_ylabel("nats per test image")
    ax.set_title("IWAE paper protocol on MNIST: test bounds against passes (dotted: paper's NLL)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--figure", type=Path, default=None)
    p.add_argument("--data-dir", type=Path, default=None, help="MNIST: measure the trained VAEs")
    p.add_argument("--binarizations", type=int, default=0, help="test binarizations for -L_K")
    p.add_argument("--iw-samples", type=int, default=100, help="K of -L_K (default 100)")
    p.add_argument("--step", default="compiled", choices=("eager", "fx", "compiled"))
    args = p.parse_args(argv)
    if args.binarizations and args.data_dir is None:
        p.error("--binarizations needs --data-dir (the test images to binarize)")
    runs = [load(r) for r in args.runs]
    print(table(runs))
    print()
    print(stage_table(runs))
    if args.data_dir is not None:
        for r in args.runs:
            measures = trained_measures(
                r, args.data_dir, args.binarizations, args.iw_samples, args.step
            )
            print(measures)
    if args.figure:
        save_png(figure(runs), args.figure)
        print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
