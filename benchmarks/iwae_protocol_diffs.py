"""How much each difference between ``--preset iwae-paper`` and the authors' code moves the
test bounds, over the protocol's first stages.

    OMP_NUM_THREADS=1 python benchmarks/iwae_protocol_diffs.py --data-dir ../shared/data \\
        --passes 13 --out runs/iwae-protocol-diffs

The preset follows the paper's text where it and the authors' Theano code differ, and makes
three choices of its own (shared/references/iwae-protocol.md; docs/results.md). Each variant
below switches one of them to the code's choice, everything else as the preset has it; the
same seed gives every variant the same initial weights, data order and binarization:

- ``preset``: ``pyro-vae train --preset iwae-paper`` as it runs (run with ``--seeds`` more
  than one: the spread between seeds is what a difference must exceed to be seen);
- ``beta1-0.99``: Adam's beta_1 = 0.99, the code's (the paper's text and the preset: 0.9);
- ``exp-scale``: the encoder's scale exp(linear), the code's (the preset: softplus(linear)
  + 1e-4, which cannot overflow);
- ``authors-adam``: the code's hand-written Adam, second moments starting at ones and eps
  added to sqrt(v) with the bias corrections in the step size (torch's: zeros, eps after the
  correction);
- ``rounded-rates``: the code's stage rates 1e-4 * round(10^(1 - i/7), 1) (the preset: the
  exact 1e-3 * 10^(-i/7));
- ``code``: all four together.

Every run is the library's own run directory (``start_run``, the library's training epoch,
test metrics and checkpoint), with the variant's optimizer, schedule or encoder head put in
before the first step. It prints the test -ELBO and -L_100 at each stage end of every run. A
finished run directory is read, not trained again; an unfinished one is started afresh.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import torch
from pyro.nn import PyroModule

from pyro_vae import VAE, TrainConfig, VAEConfig, seeded
from pyro_vae.inference.steps import build_step, resolve_step
from pyro_vae.models.networks import Encoder
from pyro_vae.runs.lock import hold_run
from pyro_vae.runs.presets import preset_values
from pyro_vae.runtime.distributed import World, epoch_seed
from pyro_vae.training.loop import save_epoch, test_metrics, train_epoch
from pyro_vae.training.schedules import NUM_STAGES, stage_boundaries
from pyro_vae.training.start import start_run

VARIANTS = ("preset", "beta1-0.99", "exp-scale", "authors-adam", "rounded-rates", "code")
# What each variant changes: (beta_1 = 0.99, exp scale head, the authors' Adam, rounded rates).
CHANGES = {
    "preset": (False, False, False, False),
    "beta1-0.99": (True, False, False, False),
    "exp-scale": (False, True, False, False),
    "authors-adam": (False, False, True, False),
    "rounded-rates": (False, False, False, True),
    "code": (True, True, True, True),
}
IW_SAMPLES = 100


def rounded_rate(stage: int) -> float:
    """The authors' code's rate of stage i = 0..7: 1e-4 * round(10^(1 - i/7), 1)."""
    return 1e-4 * round(10 ** (1 - stage / 7), 1)


def exact_rate(stage: int) -> float:
    """The preset's rate of stage i: 1e-3 * 10^(-i/7)."""
    return 1e-3 * 10 ** (-stage / 7)


def stage_of_pass(p: int) -> int:
    """The stage (0-based) of 1-based pass p; the last stage runs on."""
    return min(sum(1 for end in stage_boundaries() if p > end), NUM_STAGES - 1)


class AuthorsAdam(torch.optim.Optimizer):
    """Adam as the authors' optimizers.py writes it: m from zeros, v from ones, and the step
    lr * sqrt(1 - beta_2^t) / (1 - beta_1^t) * m / (sqrt(v) + eps)."""

    def __init__(self, params, lr: float, betas: tuple[float, float], eps: float) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 - torch's signature
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            b1, b2 = group["betas"]
            for p in params:
                state = self.state[p]
                if not state:
                    state["t"] = 0
                    state["m"] = torch.zeros_like(p)
                    state["v"] = torch.ones_like(p)
            t = self.state[params[0]]["t"] + 1
            ms = [self.state[p]["m"] for p in params]
            vs = [self.state[p]["v"] for p in params]
            grads = [p.grad for p in params]
            torch._foreach_lerp_(ms, grads, 1 - b1)
            torch._foreach_mul_(vs, b2)
            torch._foreach_addcmul_(vs, grads, grads, 1 - b2)
            denom = torch._foreach_sqrt(vs)
            torch._foreach_add_(denom, group["eps"])
            size = group["lr"] * math.sqrt(1 - b2**t) / (1 - b1**t)
            torch._foreach_addcdiv_(params, ms, denom, -size)
            for p in params:
                self.state[p]["t"] = t


class ExpScaleEncoder(PyroModule):
    """The preset's encoder network with the code's head: scale = exp(linear)."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.z_dim = encoder.z_dim
        self.net = encoder.net  # the same weights: state_dict keys as the preset's

    def forward(self, x: torch.Tensor, y_onehot: torch.Tensor | None = None):  # noqa: ANN201
        loc, raw = self.net(x.flatten(-3)).split(self.z_dim, dim=-1)
        return loc, raw.exp()


def preset_configs(
    args: argparse.Namespace, out: Path, seed: int, beta1: float
) -> tuple[VAEConfig, TrainConfig]:
    """The preset's configs as ``pyro-vae train --preset iwae-paper`` makes them, for
    ``args.passes`` passes with ``--test-iw-samples 100`` (and a smaller data set for a test)."""
    values = preset_values("iwae-paper")
    train = {
        **values["train"],
        "epochs": args.passes,
        "betas": (beta1, values["train"]["betas"][1]),
        "seed": seed,
        "data_dir": str(args.data_dir),
        "out": str(out),
        "device": "cpu",
        "step": args.step,
        "test_iw_samples": IW_SAMPLES,
    }
    if args.train_subset:
        train["train_subset"] = args.train_subset
    if args.test_subset:
        train["test_subset"] = args.test_subset
    return VAEConfig(**values["vae"]), TrainConfig(**train)


def run_variant(variant: str, seed: int, args: argparse.Namespace) -> list[dict]:
    out = args.out / f"{variant}-seed{seed}"
    metrics_file = out / "metrics.jsonl"
    if metrics_file.exists():
        rows = [json.loads(line) for line in metrics_file.read_text().splitlines()]
        if len(rows) >= args.passes:
            return rows[: args.passes]
        shutil.rmtree(out)  # unfinished: the variant's optimizer state is not resumable
    beta1_code, exp_head, authors_adam, rounded = CHANGES[variant]
    vae_config, config = preset_configs(args, out, seed, 0.99 if beta1_code else 0.9)
    world = World()
    with hold_run(out, world), seeded(config.seed, torch.device("cpu")):
        vae = VAE.from_config(vae_config)  # the preset's initial weights for this seed
        if exp_head:
            vae.guide.encoder = ExpScaleEncoder(vae.guide.encoder)
        run = start_run(vae, config, out, world, resume=False, log=lambda s: None)
        if authors_adam:
            run.optimizer = AuthorsAdam(vae.parameters(), config.lr, config.betas, config.eps)
        if rounded or authors_adam:
            base = rounded_rate if rounded else exact_rate
            run.scheduler = torch.optim.lr_scheduler.LambdaLR(
                run.optimizer, lambda done: base(stage_of_pass(done + 1)) / config.lr
            )
        if authors_adam:
            kind = resolve_step(config.step, run.device, 0)
            run.step = build_step(vae, run.optimizer, run.objective, kind, world)
        for epoch in range(1, config.epochs + 1):
            torch.manual_seed(epoch_seed(config.seed, epoch, world.rank))
            m = train_epoch(run, epoch, progress=False)
            m.update(test_metrics(run, epoch))
            save_epoch(run, m, lambda line: print(f"{variant} seed {seed}: {line}", flush=True))
    return run.metrics


def main(argv: list[str] | None = None) -> dict[tuple[str, int], list[dict]]:
    """Runs (or reads) every variant's run and prints the table; returns each run's metrics."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--data-dir", required=True, help="folder holding MNIST/raw")
    p.add_argument("--out", type=Path, default=Path("runs/iwae-protocol-diffs"))
    p.add_argument("--passes", type=int, default=13, help="passes per run (13: stages 0-2)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds of every variant")
    p.add_argument(
        "--preset-seeds", nargs="+", type=int, default=[0, 1, 2],
        help="seeds of the preset itself (its spread between seeds)",
    )  # fmt: skip
    p.add_argument("--step", default="compiled", choices=("eager", "fx", "compiled"))
    p.add_argument("--train-subset", type=int, default=0, help=argparse.SUPPRESS)  # tests
    p.add_argument("--test-subset", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.passes < 1:
        p.error("--passes must be at least 1")
    ends = [e for e in stage_boundaries() if e <= args.passes]
    if args.passes not in ends:
        ends.append(args.passes)
    jobs = [("preset", s) for s in args.preset_seeds] if "preset" in args.variants else []
    jobs += [(v, s) for v in args.variants if v != "preset" for s in args.seeds]
    results = {job: run_variant(*job, args) for job in jobs}
    print_table(results, ends)
    return results


def print_table(results: dict[tuple[str, int], list[dict]], ends: list[int]) -> None:
    head = "".join(f"  {f'-ELBO@{e}':>10} {f'-L100@{e}':>10}" for e in ends)
    print(f"\n{'variant':<15}{'seed':>5}{head}   (test set, nats per image)")
    key = f"test_neg_L{IW_SAMPLES}"
    for (variant, seed), rows in results.items():
        cells = "".join(
            f"  {rows[e - 1]['test_neg_elbo']:>10.2f} {rows[e - 1][key]:>10.2f}" for e in ends
        )
        print(f"{variant:<15}{seed:>5}{cells}")
    base = [rows for (v, _), rows in results.items() if v == "preset"]
    if not base:
        return
    last = ends[-1] - 1
    ref = [rows[last][key] for rows in base]
    mean = sum(ref) / len(ref)
    spread = math.sqrt(sum((r - mean) ** 2 for r in ref) / (len(ref) - 1)) if len(ref) > 1 else None
    print(
        f"\npreset -L100 after {ends[-1]} passes: mean {mean:.2f} over {len(ref)} seed(s)"
        + (f", sd between seeds {spread:.2f}" if spread is not None else "")
    )
    paired = {s: rows for (v, s), rows in results.items() if v == "preset"}
    for (variant, seed), rows in results.items():
        if variant != "preset":
            line = f"{variant:<15} seed {seed}: {rows[last][key] - mean:+.2f} nats against it"
            if seed in paired:  # the same initial weights, data order and noise
                line += f", {rows[last][key] - paired[seed][last][key]:+.2f} against seed {seed}"
            print(line)


if __name__ == "__main__":
    main()
    sys.exit(0)
