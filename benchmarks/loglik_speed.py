"""The importance-sampled NLL with each way of running its chunks of samples, in one process.

    python benchmarks/loglik_speed.py --images 200 --num-samples 5000 --hidden-dims 200,200

Rounds alternate eager, fx and compiled (after one warm-up call each: tracing, compiling), on
an untrained model (only the time matters) and the same images; the median round is printed.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from pyro_vae import VAE
from pyro_vae.inference.loglik import evaluate_log_likelihood


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--num-samples", type=int, default=5000)
    p.add_argument("--hidden-dims", default="400")
    p.add_argument("--activation", default="softplus")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    hidden = tuple(int(h) for h in args.hidden_dims.split(","))
    vae = VAE(hidden_dims=hidden, activation=args.activation)
    x = torch.bernoulli(torch.full((args.images, 784), 0.13))
    batches = [(b, None) for b in x.split(100)]
    steps = ("eager", "fx", "compiled")
    for step in steps:  # warm-up
        evaluate_log_likelihood(vae, batches[:1], num_samples=args.num_samples, step=step)
    seconds: dict[str, list[float]] = {s: [] for s in steps}
    for _ in range(args.rounds):
        for step in steps:
            r = evaluate_log_likelihood(vae, batches, num_samples=args.num_samples, step=step)
            seconds[step].append(r["seconds"])
    print(
        f"K={args.num_samples}, {args.images} images, 784-{args.hidden_dims}-50, "
        f"{torch.get_num_threads()} thread(s)"
    )
    eager = statistics.median(seconds["eager"])
    for step in steps:
        s = statistics.median(seconds[step])
        print(f"{step:<9} {s:8.2f} s  {s / eager:5.2f}x eager")


if __name__ == "__main__":
    main()
