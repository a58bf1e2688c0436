"""``pyro-vae``: train, evaluate, sample and plot from the shell.

Names given on the command line (priors, likelihoods, estimators, datasets) become objects in
the library's registries; this module only parses and reports. Bad input ends with a one-line
error and exit code 2, never a traceback, and leaves an existing run as it was.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pyro_vae.cli.args import (
    NONNEGATIVE,
    POSITIVE,
    Parser,
    UsageError,
    add_data_args,
    add_setting,
    at_least,
    data_options,
    port,
    positive_float,
    sizes,
    typed_options,
)
from pyro_vae.cli.train import add_train_parser, cmd_train
from pyro_vae.data.errors import DataError
from pyro_vae.evaluation.elbo import ESTIMATORS
from pyro_vae.inference.objectives import EnumELBO
from pyro_vae.inference.steps import NonFiniteError
from pyro_vae.runs.checkpoint import CheckpointError
from pyro_vae.runs.lock import RunInUseError
from pyro_vae.runs.options import TrainConfig
from pyro_vae.runtime.rng import seeded

# Errors a user can fix from the command line: reported in one line, exit code 2.
USER_ERRORS = (
    ValueError,
    DataError,
    CheckpointError,
    FileNotFoundError,
    NonFiniteError,
    RunInUseError,
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="pyro-vae",
        description="The VAE and conditional VAE as Pyro programs, fitted by SVI on MNIST.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add_train_parser(sub)

    e = sub.add_parser("evaluate", help="test -ELBO of a trained run; writes RUN_DIR/eval.json")
    e.add_argument("run_dir", help="a run directory written by 'pyro-vae train'")
    add_data_args(e, from_run=True)
    e.add_argument(
        "--elbo",
        choices=[*ESTIMATORS, "both"],
        default="both",
        help="estimator(s) of the test ELBO (default both)",
    )
    e.add_argument("--num-particles", type=POSITIVE, default=1)
    e.add_argument("--test-subset", type=NONNEGATIVE, default=0, help="use the first N test images")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument(
        "--num-samples",
        type=NONNEGATIVE,
        default=0,
        help="K importance samples per image for the test NLL -log p(x), e.g. 5000 (0: skip)",
    )
    e.add_argument(
        "--batch-size", type=POSITIVE, default=100, help="test images per NLL batch (default 100)"
    )
    e.add_argument(
        "--step",
        choices=["eager", "fx", "compiled"],
        default="eager",
        help="the NLL's chunks of samples: Pyro every chunk (eager), or one chunk traced once "
        "and replayed (fx) or compiled by inductor (compiled)",
    )
    e.add_argument(
        "--samples-per-class",
        type=NONNEGATIVE,
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
    add_data_args(c, from_run=True)
    c.add_argument("--test-subset", type=POSITIVE, default=1000, help="test images (default 1000)")
    c.add_argument("--repeats", type=at_least(2), default=20, help="repeated ELBO evaluations R")
    c.add_argument("--grad-batch", type=POSITIVE, default=100, help="fixed minibatch for gradients")
    c.add_argument("--grad-repeats", type=at_least(2), default=50, help="gradients per estimate")
    c.add_argument("--particles", type=sizes, default=(1, 10), help="e.g. 1,10 (default)")
    c.add_argument("--ks", type=sizes, default=(1, 5, 50, 500, 5000), help="K for the IW bound")
    c.add_argument("--iw-subset", type=POSITIVE, default=100, help="test images for the IW bound")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", default=None, help="output folder (default RUN_DIR)")
    _add_plot_parser(sub)
    _add_sample_parser(sub)
    _add_serve_parser(sub)
    return parser


def _evaluate_nll(args: argparse.Namespace, vae, data, device) -> dict:
    """The importance-sampled test NLL with K = args.num_samples, seeded like the ELBO."""

    from pyro_vae.inference.loglik import evaluate_log_likelihood

    with seeded(args.seed, device):
        return evaluate_log_likelihood(
            vae,
            data.test_batches(args.batch_size),
            args.num_samples,
            data_mode=data.data_mode,
            step=args.step,
        )


def cmd_evaluate(args: argparse.Namespace) -> None:

    from pyro_vae.runs.records import write_text_atomic
    from pyro_vae.runtime.device import resolve_device

    device = resolve_device(args.device)
    vae, ckpt, data = _load_run(args, device)
    report = _evaluation_report(args, vae, ckpt, data, device)
    # Beside a training run, which does not write it: replaced whole, and it names its epoch.
    write_text_atomic(Path(args.run_dir, "eval.json"), json.dumps(report, indent=2))
    _print_evaluation(report, vae, data)
    print(f"wrote {Path(args.run_dir, 'eval.json')}")


def _evaluation_report(args: argparse.Namespace, vae, ckpt: dict, data, device) -> dict:
    """eval.json's content: the test ELBOs, active units, and what the options ask for."""

    from pyro_vae.data.datasets import same_dataset
    from pyro_vae.evaluation.active_units import active_units
    from pyro_vae.evaluation.elbo import evaluate_elbo
    from pyro_vae.inference.units import dataset_name
    from pyro_vae.training.loop import EVAL_BATCH

    elbos = list(ESTIMATORS) if args.elbo == "both" else [args.elbo]
    if vae.semi_supervised:  # its labels are summed out where missing: TraceEnum_ELBO only
        elbos = [EnumELBO.name]
    results = []
    with seeded(args.seed, device):
        for name in elbos:
            batches = data.test_batches(EVAL_BATCH)
            results.append(
                evaluate_elbo(vae, batches, name, args.num_particles, data_mode=data.data_mode)
            )
    num_dims = vae.config.x_dim
    source = data.dataset.get("title", "MNIST")
    for r in results:
        r["dataset"] = dataset_name(r["data"], source)
    report = {
        "run_dir": str(args.run_dir),
        "epoch": ckpt["epoch"],
        "split": "test",
        "data_mode": data.data_mode,
        "data": results[0]["data"],
        "dataset": results[0]["dataset"],
        "num_dims": num_dims,
        "dequantization_nats": results[0]["dequantization_nats"],
        "seed": args.seed,
        # What the test set is (datasets.load_dataset's record; test_sha256 identifies it), and
        # whether it is not the run's own (--allow-other-dataset).
        "test_set": data.dataset,
        "other_dataset": not same_dataset(ckpt.get("dataset"), data.dataset),
        # neg_elbo, recon, kl, neg_log_likelihood: the model's nats on the data it was fed;
        # nats_per_image, bits_per_dim: the same for the dataset named by "dataset", with
        # D log 256 added for dequantized pixels (units.in_units).
        "units": "nats per image",
        "elbo": results,
    }
    # Active units (Burda et al. 2016), per layer: Var over the test images of E_q[z_u | x]
    # > 0.01 (stacked layers draw the layers below from the guide: seeded like the ELBO).
    with seeded(args.seed, device):
        report["active_units"] = active_units(vae, data.test_batches(EVAL_BATCH))
    if args.num_samples:
        report["log_likelihood"] = _evaluate_nll(args, vae, data, device)
        report["log_likelihood"]["dataset"] = dataset_name(report["data"], source)
    if vae.config.num_classes and args.samples_per_class:
        report["conditioning"] = _evaluate_conditioning(args, vae, device, data, ckpt)
    if vae.semi_supervised:
        report["classification"] = _evaluate_classifier(vae, data, device, args.seed)
    return report


def _print_evaluation(report: dict, vae, data) -> None:
    """The evaluation report as the table and lines ``pyro-vae evaluate`` prints."""

    from pyro_vae.data.datasets import describe as describe_dataset
    from pyro_vae.evaluation.active_units import describe_active_units
    from pyro_vae.inference.units import describe

    results = report["elbo"]
    num_dims = report["num_dims"]
    source = data.dataset.get("title", "MNIST")
    print(f"dataset: {describe_dataset(data.dataset)}")
    print(f"test data: {describe(report['data'], num_dims, source)}")
    # The KL column names the estimator per site where they differ (stacked latents: the
    # closed form only on the top layer).
    width = max(13, *(len(r["kl_kind"]) + 2 for r in results))
    print(
        f"{'estimator':<22}{'KL':<{width}}{'-ELBO':>9}{'recon':>9}{'KL term':>9}"
        f"{'bits/dim':>10}   (test, nats/image)"
    )
    for r in results:
        print(
            f"{r['estimator']:<22}{r['kl_kind']:<{width}}{r['neg_elbo']:>9.2f}"
            f"{r['recon']:>9.2f}{r['kl']:>9.2f}{r['bits_per_dim']:>10.4f}"
        )
    print(describe_active_units(report["active_units"]))
    if "log_likelihood" in report:
        ll = report["log_likelihood"]
        print(
            f"test NLL {_nll_of(ll)} "
            f"{ll['neg_log_likelihood']:.2f} +- {ll['std_error']:.2f} nats/image, "
            f"{ll['bits_per_dim']:.4f} +- {ll['std_error_bits_per_dim']:.4f} bits/dim "
            f"(importance sampling, K={ll['num_samples']}, {ll['num_images']} images, "
            f"{ll['seconds']:.1f} s)"
        )
        if ll["dequantization_nats"]:
            print(f"  bound on the 8-bit images: {ll['nats_per_image']:.2f} nats/image")
    if "classification" in report:
        from pyro_vae.evaluation.semi_supervised import format_accuracy

        c = report["classification"]
        print(f"test -ELBO with the labels hidden (-log p(x)): {c['neg_elbo_unlabelled']:.2f}")
        print(format_accuracy(c, [str(k) for k in range(vae.config.num_classes)]))
    if "conditioning" in report:
        from pyro_vae.evaluation.conditioning import format_conditioning

        c = report["conditioning"]
        print(format_conditioning(c, c["classifier"]))


def _nll_of(ll: dict) -> str:
    if ll.get("joint"):
        return "-log p(x, y)"
    return "-log p(x | y)" if ll["conditional"] else "-log p(x)"


def _load_run(args: argparse.Namespace, device, test_subset: int | None = None):
    """The run of ``args.run_dir`` on its own data, or on the data the options say."""
    from pyro_vae.runs.records import load_run

    return load_run(
        args.run_dir,
        args.data_dir,
        device,
        args.test_subset if test_subset is None else test_subset,
        dataset=data_options(args),
        allow_other_dataset=args.allow_other_dataset,
    )


def _check_outside_data(out: Path, ckpt: dict, given: dict | None = None) -> None:
    """A one-line error when ``out`` lies inside an image folder of the run's data (or of the
    data options ``given``): what is written there would become images of the dataset."""
    from pyro_vae.data.datasets import DatasetSpec, check_outside_data

    spec = DatasetSpec.of(TrainConfig.from_dict(ckpt["train_config"]), **(given or {}))
    check_outside_data(out, spec, "--out", ckpt.get("dataset"))


def _evaluate_conditioning(args: argparse.Namespace, vae, device, data, ckpt: dict) -> dict:
    """Classifier accuracy of samples per requested label, seeded like the ELBO; the classifier
    knows the data's classes (MNIST's digits by default)."""

    from pyro_vae.data.datasets import DatasetSpec
    from pyro_vae.evaluation.classifier import default_classifier_path, load_or_train_classifier
    from pyro_vae.evaluation.conditioning import conditioning_accuracy

    record = data.dataset
    path = Path(args.classifier or default_classifier_path(args.run_dir, record))
    spec = DatasetSpec.of(TrainConfig.from_dict(ckpt["train_config"]), **data_options(args))
    clf, info = load_or_train_classifier(path, args.data_dir, device, dataset=spec, record=record)
    with seeded(args.seed, device):
        result = conditioning_accuracy(vae, clf, args.samples_per_class)
    return {**result, "classifier": {"path": str(path), **info}}


def _evaluate_classifier(vae, data, device, seed: int) -> dict:
    """The semi-supervised VAE's q(y | x): test accuracy and confusion matrix, and the test
    -ELBO with the labels hidden (y summed out), seeded like the ELBO."""
    from pyro_vae.evaluation.elbo import evaluate_elbo
    from pyro_vae.evaluation.semi_supervised import hidden_labels, label_accuracy
    from pyro_vae.training.loop import EVAL_BATCH

    result = label_accuracy(vae, data.test_batches(EVAL_BATCH))
    with seeded(seed, device):
        batches = hidden_labels(data.test_batches(EVAL_BATCH))
        hidden = evaluate_elbo(vae, batches, EnumELBO.name, data_mode=data.data_mode)
    return {**result, "neg_elbo_unlabelled": hidden["neg_elbo"]}


def cmd_compare_elbo(args: argparse.Namespace) -> None:

    from pyro_vae.evaluation.compare import compare_estimators, format_table
    from pyro_vae.figures.compare import comparison_figure
    from pyro_vae.runtime.device import resolve_device

    device = resolve_device(args.device)
    vae, ckpt, data = _load_run(args, device)
    out = Path(args.out or args.run_dir)
    _check_outside_data(out, ckpt, data_options(args))
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
        data_mode=data.data_mode,
        seed=args.seed,
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare_elbo.json").write_text(json.dumps(result, indent=2))
    comparison_figure(result).savefig(out / "compare_elbo.png", dpi=120)
    print(format_table(result))
    print(f"wrote {out / 'compare_elbo.json'} and {out / 'compare_elbo.png'}")


def _add_plot_parser(sub) -> None:
    from pyro_vae.figures.run_figures import FIGURES, GRID_EXTENT, GRID_SIZE

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
    add_data_args(p, from_run=True)
    p.add_argument(
        "--test-subset",
        type=NONNEGATIVE,
        default=None,
        help="first N test images (default: the run's)",
    )
    p.add_argument(
        "--grid",
        choices=["square", "quantile"],
        default="square",
        help="z_dim = 2 manifolds: evenly spaced z, or N(0,1) quantiles over the same range",
    )
    p.add_argument(
        "--grid-extent",
        type=positive_float,
        default=GRID_EXTENT,
        help="grid spans prior mean +- E prior sd per axis ([-E, E] for N(0, I))",
    )
    p.add_argument("--grid-size", type=at_least(2), default=GRID_SIZE, help="points per grid axis")


def cmd_plot(args: argparse.Namespace) -> None:
    from pyro_vae.figures.run_figures import plot_run

    paths = plot_run(
        args.run_dir,
        args.data_dir,
        device=args.device,
        test_subset=args.test_subset,
        grid=args.grid,
        grid_extent=args.grid_extent,
        grid_size=args.grid_size,
        dataset=data_options(args),
        allow_other_dataset=args.allow_other_dataset,
    )
    for path in paths:
        print(f"wrote {path}")


def _add_sample_parser(sub) -> None:
    p = sub.add_parser("sample", help="write generated digits of one class (or from the prior)")
    p.add_argument("run_dir", help="a run directory written by 'pyro-vae train'")
    p.add_argument(
        "--label", type=int, default=None, help="digit to draw (conditional runs; default 0-9)"
    )
    p.add_argument("--num", type=POSITIVE, default=64, help="number of digits (default 64)")
    p.add_argument("--ncols", type=POSITIVE, default=8, help="digits per row (default 8)")
    p.add_argument("--out", default=None, help="PNG path (default RUN_DIR/figures/sample_*.png)")
    p.add_argument("--seed", type=int, default=0)
    add_setting(p, TrainConfig, "device")


def cmd_sample(args: argparse.Namespace) -> None:

    from pyro_vae.evaluation.conditioning import generate, labels_for_samples
    from pyro_vae.figures.plots import samples_figure
    from pyro_vae.runs.records import load_vae, run_image_shape
    from pyro_vae.runtime.device import resolve_device

    device = resolve_device(args.device)
    vae, ckpt = load_vae(args.run_dir, device)
    labels_for_samples(vae, args.num, args.label)  # bad --label/--num fail before any work
    if args.label is not None:
        title, name = f"Samples of digit {args.label}", f"sample_label{args.label}.png"
    elif vae.config.num_classes:
        title, name = "Samples (labels 0, 1, 2, ... in turn)", "sample_labels.png"
    else:
        title, name = "Samples from the prior", "sample_prior.png"
    out = Path(args.out) if args.out else Path(args.run_dir, "figures", name)
    _check_outside_data(out, ckpt)
    vae.eval()
    with seeded(args.seed, device):
        x = generate(vae, args.num, args.label)
    out.parent.mkdir(parents=True, exist_ok=True)
    shape = run_image_shape(ckpt)  # None for runs from before: square (MNIST's 28 x 28)
    samples_figure(x, ncols=args.ncols, title=title, image_shape=shape).savefig(out, dpi=120)
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
    add_data_args(p, from_run=True)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=port, default=7860, help="port (default 7860; 0: a free one)")
    p.add_argument(
        "--test-subset",
        type=NONNEGATIVE,
        default=None,
        help="first N test images (default: the run's)",
    )
    p.add_argument("--open", action="store_true", help="open the page in the default browser")


def cmd_serve(args: argparse.Namespace) -> None:
    import os

    from pyro_vae.app.serve import (
        serve,  # checks for Gradio (the [app] extra) before loading anything
    )

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
        dataset=data_options(args),
        allow_other_dataset=args.allow_other_dataset,
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
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    command = next((a for a in argv if a in COMMANDS), None)
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        print(f"pyro-vae{' ' + command if command else ''}: error: {e}", file=sys.stderr)
        return 2
    subparser = parser._subparsers._group_actions[0].choices[args.command]
    args.typed = typed_options(subparser, argv)
    import pyro

    # Process-wide settings belong to the entry point, and only for its duration: parameters
    # live in the modules (checkpoints are plain state dicts), not in Pyro's param store.
    with pyro.settings.context(module_local_params=True):
        try:
            COMMANDS[args.command](args)
        except USER_ERRORS as e:
            # One line, whatever the error: a library's own message may run to several.
            first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), repr(e))
            print(f"pyro-vae {args.command}: error: {first}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"pyro-vae {args.command}: interrupted", file=sys.stderr)
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
