"""The IWAE paper's table beside the runs of ``pyro-vae train --preset iwae-paper``.

    python benchmarks/iwae_paper.py runs/iwae-paper/vae-k1 runs/iwae-paper/iwae-k5 \\
        --figure docs/img/iwae_paper_curves.png

For each run directory: its objective, passes done out of the protocol's 3280, the test NLL
(K = 5000, from RUN/eval.json written by ``pyro-vae evaluate RUN --num-samples 5000``), the
test -ELBO of the last epoch, seconds per pass, and the paper's figure for that row (Burda,
Grosse & Salakhutdinov 2016, Table 1, MNIST, one stochastic layer, final values after 3280
passes). The figure draws the test -ELBO every pass and -L_100 (``--test-iw-samples 100``) at
the end of each stage, against passes, with the paper's final NLL for reference.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from matplotlib.figure import Figure

from pyro_vae.figures.run_figures import save_png

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
    ax.set_xlabel("passes over the training set (log scale); stages end at 1, 4, 13, 40, 121, 364")
    ax.set_ylabel("nats per test image")
    ax.set_title("IWAE paper protocol on MNIST: test bounds against passes (dotted: paper's NLL)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--figure", type=Path, default=None)
    args = p.parse_args()
    runs = [load(r) for r in args.runs]
    print(table(runs))
    if args.figure:
        save_png(figure(runs), args.figure)
        print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
