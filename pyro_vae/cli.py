"""``pyro-vae``: train, evaluate, sample and plot from the shell.

Names given on the command line (priors, likelihoods, estimators) become objects in the
library's registries; this module only parses and reports. Bad input ends with a one-line
error and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .checkpoint import CheckpointError, seeded
from .config import TrainConfig, VAEConfig
from .data import DATA_ENV, DataNotFoundError, default_data_dir
from .likelihoods import LIKELIHOODS
from .networks import ACTIVATIONS
from .priors import PRIORS

# Errors a user can fix from the command line: reported in one line, exit code 2.
USER_ERRORS = (ValueError, DataNotFoundError, CheckpointError, FileNotFoundError)


def _hidden(s: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in s.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 400 or 512,256, got {s!r}") from None


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        default=default_data_dir(),
        help=f"folder holding MNIST/raw (downloaded if missing); default ${DATA_ENV} or ./data",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyro-vae",
        description="The VAE and conditional VAE as Pyro programs, fitted by SVI on MNIST.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a VAE on MNIST and fill a run directory")
    _add_data_args(t)
    t.add_argument("--out", default="runs/vae", help="run directory (default runs/vae)")
    t.add_argument("--epochs", type=int, default=10, help="epochs in all (default 10)")
    t.add_argument("--batch-size", type=int, default=128, help="minibatch size (default 128)")
    t.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    t.add_argument(
        "--elbo",
        choices=["trace", "meanfield"],
        default="trace",
        help="trace = Trace_ELBO (Monte Carlo KL), meanfield = TraceMeanField_ELBO (analytic KL)",
    )
    t.add_argument("--num-particles", type=int, default=1, help="ELBO particles, vectorized")
    t.add_argument(
        "--binarize",
        choices=["auto", "dynamic", "threshold", "none"],
        default="auto",
        help="auto: dynamic for bernoulli, grayscale (none) for other likelihoods",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--z-dim", type=int, default=50, help="latent dimension (default 50)")
    t.add_argument("--hidden-dims", type=_hidden, default=(400,), help="e.g. 400 or 512,256")
    t.add_argument("--activation", choices=sorted(ACTIVATIONS), default="softplus")
    t.add_argument("--num-classes", type=int, default=0, help="10 = conditional VAE on digits")
    t.add_argument("--prior", choices=sorted(PRIORS), default="normal")
    t.add_argument("--prior-components", type=int, default=10, help="K for mog and vamp")
    t.add_argument("--likelihood", choices=sorted(LIKELIHOODS), default="bernoulli")
    t.add_argument(
        "--likelihood-scale",
        type=float,
        default=None,
        help="fixed scale for gaussian/laplace (default: learned per pixel)",
    )
    t.add_argument("--train-subset", type=int, default=0, help="use the first N training images")
    t.add_argument("--test-subset", type=int, default=0, help="use the first N test images")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    e = sub.add_parser("evaluate", help="test -ELBO of a trained run; writes RUN_DIR/eval.json")
    e.add_argument("run_dir", help="a run directory written by 'pyro-vae train'")
    _add_data_args(e)
    e.add_argument(
        "--elbo",
        choices=["trace", "meanfield", "both"],
        default="both",
        help="estimator(s) of the test ELBO (default both)",
    )
    e.add_argument("--num-particles", type=int, default=1)
    e.add_argument("--test-subset", type=int, default=0, help="use the first N test images")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument(
        "--num-samples",
        type=int,
        default=0,
        help="K importance samples per image for the test NLL -log p(x), e.g. 5000 (0: skip)",
    )
    e.add_argument(
        "--batch-size", type=int, default=100, help="test images per NLL batch (default 100)"
    )
    e.add_argument(
        "--samples-per-class",
        type=int,
        default=1000,
        help="conditional runs: generated digits per label for the classifier check (0: skip)",
    )
    e.add_argument(
        "--classifier",
        default=None,
        help="digit classifier file, trained there if missing (default: RUN_DIR/../"
        "digit_classifier.pt)",
    )

    c = sub.add_parser(
        "compare-elbo",
        help="Trace_ELBO vs TraceMeanField_ELBO on a run: variance, gradient noise, IW bound",
    )
    c.add_argument("run_dir", help="a run directory written by 'pyro-vae train'")
    _add_data_args(c)
    c.add_argument("--test-subset", type=int, default=1000, help="test images (default 1000)")
    c.add_argument("--repeats", type=int, default=20, help="repeated ELBO evaluations R")
    c.add_argument("--grad-batch", type=int, default=100, help="fixed minibatch for gradients")
    c.add_argument("--grad-repeats", type=int, default=50, help="gradients per estimate")
    c.add_argument("--particles", type=_hidden, default=(1, 10), help="e.g. 1,10 (default)")
    c.add_argument("--ks", type=_hidden, default=(1, 5, 50, 500, 5000), help="K for the IW bound")
    c.add_argument("--iw-subset", type=int, default=100, help="test images for the IW bound")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", default=None, help="output folder (default RUN_DIR)")
    _add_plot_parser(sub)
    _add_sample_parser(sub)
    _add_serve_parser(sub)
    return parser


def cmd_train(args: argparse.Namespace) -> None:
    from .train import train

    vae_config = VAEConfig(
        z_dim=args.z_dim,
        hidden_dims=args.hidden_dims,
        activation=args.activation,
        num_classes=args.num_classes,
        prior=args.prior,
        likelihood=args.likelihood,
        prior_components=args.prior_components,
        likelihood_scale=args.likelihood_scale,
    )
    config = TrainConfig(
        data_dir=args.data_dir,
        out=args.out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        elbo=args.elbo,
        num_particles=args.num_particles,
        binarize=args.binarize,
        seed=args.seed,
        device=args.device,
        train_subset=args.train_subset,
        test_subset=args.test_subset,
    )
    train(vae_config, config, resume=args.resume, progress=not args.no_progress)
    print(f"run written to {args.out}")


def _evaluate_nll(args: argparse.Namespace, vae, data, device) -> dict:
    """The importance-sampled test NLL with K = args.num_samples, seeded like the ELBO."""

    from .loglik import evaluate_log_likelihood

    if args.num_samples < 0 or args.batch_size < 1:
        raise ValueError("--num-samples must be >= 0 and --batch-size >= 1")
    with seeded(args.seed, device):
        return evaluate_log_likelihood(vae, data.test_batches(args.batch_size), args.num_samples)


def cmd_evaluate(args: argparse.Namespace) -> None:

    from .checkpoint import load_run
    from .evaluate import evaluate_elbo
    from .train import EVAL_BATCH, resolve_device

    device = resolve_device(args.device)
    vae, ckpt, data = load_run(args.run_dir, args.data_dir, device, args.test_subset)
    elbos = ["trace", "meanfield"] if args.elbo == "both" else [args.elbo]
    results = []
    with seeded(args.seed, device):
        for name in elbos:
            r = evaluate_elbo(vae, data.test_batches(EVAL_BATCH), name, args.num_particles)
            results.append(r)
    report = {
        "run_dir": str(args.run_dir),
        "epoch": ckpt["epoch"],
        "split": "test",
        "binarize": data.binarize,
        "seed": args.seed,
        "units": "nats per image",
        "elbo": results,
    }
    if args.num_samples:
        report["log_likelihood"] = _evaluate_nll(args, vae, data, device)
    if vae.config.num_classes and args.samples_per_class:
        report["conditioning"] = _evaluate_conditioning(args, vae, device)
    Path(args.run_dir, "eval.json").write_text(json.dumps(report, indent=2))
    print(f"{'estimator':<22}{'KL':<13}{'-ELBO':>9}{'recon':>9}{'KL term':>9}   (test, nats/image)")
    for r in results:
        print(
            f"{r['estimator']:<22}{r['kl_kind']:<13}{r['neg_elbo']:>9.2f}{r['recon']:>9.2f}"
            f"{r['kl']:>9.2f}"
        )
    if args.num_samples:
        ll = report["log_likelihood"]
        print(
            f"test NLL {'-log p(x | y)' if ll['conditional'] else '-log p(x)'} "
            f"{ll['neg_log_likelihood']:.2f} +- {ll['std_error']:.2f} "
            f"nats/image (importance sampling, K={ll['num_samples']}, {ll['num_images']} images, "
            f"{ll['seconds']:.1f} s)"
        )
    if "conditioning" in report:
        from .conditioning import format_conditioning

        c = report["conditioning"]
        print(format_conditioning(c, c["classifier"]))
    print(f"wrote {Path(args.run_dir, 'eval.json')}")


def _evaluate_conditioning(args: argparse.Namespace, vae, device) -> dict:
    """Classifier accuracy of samples per requested digit, seeded like the ELBO."""

    from .classifier import default_classifier_path, load_or_train_classifier
    from .conditioning import conditioning_accuracy

    if args.samples_per_class < 0:
        raise ValueError("--samples-per-class must be >= 0 (0 skips the classifier check)")
    path = Path(args.classifier) if args.classifier else default_classifier_path(args.run_dir)
    clf, info = load_or_train_classifier(path, args.data_dir, device)
    with seeded(args.seed, device):
        result = conditioning_accuracy(vae, clf, args.samples_per_class)
    return {**result, "classifier": {"path": str(path), **info}}


def cmd_compare_elbo(args: argparse.Namespace) -> None:

    from .checkpoint import load_run
    from .compare import compare_estimators, format_table
    from .compare_plots import comparison_figure
    from .train import resolve_device

    device = resolve_device(args.device)
    vae, ckpt, data = load_run(args.run_dir, args.data_dir, device, args.test_subset)
    with seeded(args.seed, device):
        result = compare_estimators(
            vae,
            data.test_x,
            data.test_y,
            repeats=args.repeats,
            grad_batch=args.grad_batch,
            grad_repeats=args.grad_repeats,
            particles=args.particles,
            ks=args.ks,
            iw_subset=args.iw_subset,
        )
    result["protocol"].update(
        run_dir=str(args.run_dir),
        epoch=ckpt["epoch"],
        split="test",
        binarize=data.binarize,
        seed=args.seed,
    )
    out = Path(args.out or args.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare_elbo.json").write_text(json.dumps(result, indent=2))
    comparison_figure(result).savefig(out / "compare_elbo.png", dpi=120)
    print(format_table(result))
    print(f"wrote {out / 'compare_elbo.json'} and {out / 'compare_elbo.png'}")


def _add_plot_parser(sub) -> None:
    from .figures import FIGURES, GRID_EXTENT, GRID_SIZE

    files = "\n".join(
        f"  {f.name:<20} {f.shows}" + (f"  [{f.when}]" if f.when else "") for f in FIGURES
    )
    p = sub.add_parser(
        "plot",
        help="write a run's figures (PNG) into RUN_DIR/figures",
        description="Reloads a trained run and writes its figures into RUN_DIR/figures.",
        epilog=f"files written into RUN_DIR/figures:\n{files}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", help="a run directory written by 'pyro-vae train'")
    _add_data_args(p)
    p.add_argument(
        "--test-subset", type=int, default=None, help="first N test images (default: the run's)"
    )
    p.add_argument(
        "--grid",
        choices=["square", "quantile"],
        default="square",
        help="z_dim = 2 manifolds: evenly spaced z, or N(0,1) quantiles over the same range",
    )
    p.add_argument(
        "--grid-extent",
        type=float,
        default=GRID_EXTENT,
        help="grid spans prior mean +- E prior sd per axis ([-E, E] for N(0, I))",
    )
    p.add_argument("--grid-size", type=int, default=GRID_SIZE, help="points per grid axis")


def cmd_plot(args: argparse.Namespace) -> None:
    from .figures import plot_run

    paths = plot_run(
        args.run_dir,
        args.data_dir,
        device=args.device,
        test_subset=args.test_subset,
        grid=args.grid,
        grid_extent=args.grid_extent,
        grid_size=args.grid_size,
    )
    for path in paths:
        print(f"wrote {path}")


def _add_sample_parser(sub) -> None:
    p = sub.add_parser("sample", help="write generated digits of one class (or from the prior)")
    p.add_argument("run_dir", help="a run directory written by 'pyro-vae train'")
    p.add_argument(
        "--label", type=int, default=None, help="digit to draw (conditional runs; default 0-9)"
    )
    p.add_argument("--num", type=int, default=64, help="number of digits (default 64)")
    p.add_argument("--ncols", type=int, default=8, help="digits per row (default 8)")
    p.add_argument("--out", default=None, help="PNG path (default RUN_DIR/figures/sample_*.png)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")


def cmd_sample(args: argparse.Namespace) -> None:

    from .checkpoint import load_vae
    from .conditioning import generate, labels_for_samples
    from .plots import samples_figure
    from .train import resolve_device

    if args.ncols < 1:
        raise ValueError(f"--ncols must be at least 1, got {args.ncols}")
    device = resolve_device(args.device)
    vae, _ = load_vae(args.run_dir, device)
    labels_for_samples(vae, args.num, args.label)  # bad --label/--num fail before any work
    vae.eval()
    with seeded(args.seed, device):
        x = generate(vae, args.num, args.label)
    if args.label is not None:
        title, name = f"Samples of digit {args.label}", f"sample_label{args.label}.png"
    elif vae.config.num_classes:
        title, name = "Samples (labels 0, 1, 2, ... in turn)", "sample_labels.png"
    else:
        title, name = "Samples from the prior", "sample_prior.png"
    out = Path(args.out) if args.out else Path(args.run_dir, "figures", name)
    out.parent.mkdir(parents=True, exist_ok=True)
    samples_figure(x, ncols=args.ncols, title=title).savefig(out, dpi=120)
    print(f"wrote {out}")


def _add_serve_parser(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="explore a run's latent space live in the browser (needs the [app] extra)",
        description="Serves a page to decode points of the latent space, draw a digit and score "
        "it, and interpolate between test images. Binds to 127.0.0.1 unless --host says "
        "otherwise; never creates a share link; no analytics.",
    )
    p.add_argument("run_dir", help="a run directory written by 'pyro-vae train'")
    _add_data_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860; 0: a free one)")
    p.add_argument(
        "--test-subset", type=int, default=None, help="first N test images (default: the run's)"
    )
    p.add_argument("--open", action="store_true", help="open the page in the default browser")


def cmd_serve(args: argparse.Namespace) -> None:
    import os

    from .serve import serve  # checks for Gradio (the [app] extra) before loading anything

    # Gradio reads this; the page switches analytics off by itself as well.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    serve(
        args.run_dir,
        args.data_dir,
        device=args.device,
        host=args.host,
        port=args.port,
        test_subset=args.test_subset,
        open_browser=args.open,
    )


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "compare-elbo": cmd_compare_elbo,
    "plot": cmd_plot,
    "sample": cmd_sample,
    "serve": cmd_serve,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import pyro

    # Process-wide settings belong to the entry point: parameters live in the modules
    # (checkpoints are plain state dicts), not in Pyro's global param store.
    pyro.settings.set(module_local_params=True)
    try:
        COMMANDS[args.command](args)
    except USER_ERRORS as e:
        print(f"pyro-vae {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pyro-vae {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
