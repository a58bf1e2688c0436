"""``pyro-vae train``: its options, presets, and resuming a run.

Under torchrun (``WORLD_SIZE`` > 1) the command joins the process group for its duration; rank
0 fetches MNIST first, the others wait and read it, and only rank 0 writes and prints.
"""

from __future__ import annotations

import argparse

from pyro_vae.cli.args import (
    DATA_OPTIONS,
    NONNEGATIVE,
    POSITIVE,
    add_data_args,
    betas,
    positive_float,
    shown,
    sizes,
)
from pyro_vae.models.config import VAEConfig
from pyro_vae.models.likelihoods import LIKELIHOODS
from pyro_vae.models.networks import ACTIVATIONS
from pyro_vae.models.priors import PRIORS
from pyro_vae.runs.checkpoint import load_checkpoint
from pyro_vae.runs.options import (
    DATA_MODES,
    DECODER_BIAS_INITS,
    ELBO_CHOICES,
    LR_SCHEDULES,
    RESUMABLE,
    STEP_CHOICES,
    TrainConfig,
)
from pyro_vae.runs.presets import PRESETS, preset_values

# train's options: the config field each sets (its dest), in which config.
VAE_OPTIONS = (
    "z_dim",
    "hidden_dims",
    "activation",
    "num_classes",
    "prior",
    "likelihood",
    "prior_components",
    "likelihood_scale",
)
TRAIN_OPTIONS = (
    "epochs",
    "batch_size",
    "lr",
    "betas",
    "eps",
    "lr_schedule",
    "elbo",
    "num_particles",
    "data_mode",
    "seed",
    "train_subset",
    "test_subset",
    "decoder_bias",
    "test_iw_samples",
    "step",
    "tensorboard",
    *DATA_OPTIONS,
)
# What --resume accepts besides itself: the library's RESUMABLE fields and --no-progress
# (everything else is the run's). --data-dir, --device and --out always come from the command
# line; the others only when typed.
RESUME_OPTIONS = (*RESUMABLE, "no_progress")
_ALWAYS_GIVEN = ("data_dir", "device", "out")
_RESUME_FLAGS = ", ".join(f"--{k.replace('_', '-')}" for k in RESUMABLE if k != "out")


def _num_classes(s: str) -> int | str:
    return "auto" if s == "auto" else NONNEGATIVE(s)


_num_classes.__name__ = "integer >= 0 or auto"
_AUTO_CLASSES = ("num_classes", "auto")  # on resume: the run's number of classes


def add_train_parser(sub) -> None:
    t = sub.add_parser(
        "train",
        help="train a VAE on MNIST and fill a run directory",
        description="Trains a VAE (or, with --num-classes, a conditional VAE) and writes its run "
        "directory: config.json, metrics.jsonl, checkpoint.pt, figures/. Under torchrun "
        "(--nproc-per-node N) it trains one model on N processes.",
    )
    add_data_args(t)
    t.add_argument("--out", default="runs/vae", help="run directory (default runs/vae)")
    t.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="a published protocol: sets its network, optimizer, schedule, batch and epochs "
        "(iwae-paper: Burda et al. 2016, Table 1); options typed as well override it",
    )
    t.add_argument("--epochs", type=POSITIVE, default=10, help="epochs in all (default 10)")
    t.add_argument(
        "--batch-size", type=POSITIVE, default=128, help="global minibatch size (default 128)"
    )
    t.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate (1e-3)")
    t.add_argument("--adam-betas", dest="betas", type=betas, default=(0.9, 0.999))
    t.add_argument("--adam-eps", dest="eps", type=positive_float, default=1e-8)
    t.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        default="constant",
        help="staged: stage i = 0..7 runs 3^i epochs at lr * 10^(-i/7) (the IWAE paper's)",
    )
    t.add_argument(
        "--elbo",
        choices=ELBO_CHOICES,
        default="trace",
        help="trace = Trace_ELBO (Monte Carlo KL), meanfield = TraceMeanField_ELBO (analytic "
        "KL), iwae = the importance-weighted bound L_K with K = --num-particles",
    )
    t.add_argument("--num-particles", type=POSITIVE, default=1, help="particles (K), vectorized")
    t.add_argument(
        "--data-mode",
        "--binarize",  # its old name
        dest="data_mode",
        choices=DATA_MODES,
        default="auto",
        help="how pixels become data. auto: dynamic for bernoulli, none (the raw 8-bit values) "
        "for discretized-logistic, dequantize ((k + u) / 256, fresh per batch) for the others",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--z-dim", type=POSITIVE, default=50, help="latent dimension (default 50)")
    t.add_argument("--hidden-dims", type=sizes, default=(400,), help="e.g. 400 or 200,200")
    t.add_argument("--activation", choices=sorted(ACTIVATIONS), default="softplus")
    t.add_argument(
        "--num-classes",
        type=_num_classes,
        default=0,
        help="10 = conditional VAE on digits; auto = the number of classes in the data",
    )
    t.add_argument("--prior", choices=sorted(PRIORS), default="normal")
    t.add_argument("--prior-components", type=POSITIVE, default=10, help="K for mog and vamp")
    t.add_argument("--likelihood", choices=sorted(LIKELIHOODS), default="bernoulli")
    t.add_argument(
        "--likelihood-scale",
        type=positive_float,
        default=None,
        help="fixed scale for gaussian/laplace (default: learned per pixel)",
    )
    t.add_argument(
        "--train-subset", type=NONNEGATIVE, default=0, help="use the first N training images"
    )
    t.add_argument("--test-subset", type=NONNEGATIVE, default=0, help="use the first N test images")
    t.add_argument(
        "--decoder-bias",
        choices=DECODER_BIAS_INITS,
        default="default",
        help="data-mean: start the decoder's output bias at the logit of the mean pixel",
    )
    t.add_argument(
        "--test-iw-samples",
        type=NONNEGATIVE,
        default=0,
        help="also the test -L_K with this K at each stage's end (staged schedule; every epoch "
        "otherwise) and at the last epoch, e.g. 100 (0: off)",
    )
    t.add_argument(
        "--step",
        choices=STEP_CHOICES,
        default="auto",
        help="eager: Pyro every step; fx/compiled: traced once, replayed (compiled by "
        "inductor); cudagraph: CUDA graph. auto: cudagraph on a GPU, compiled on a CPU for "
        "runs of 2000+ steps, else eager",
    )
    t.add_argument(
        "--tensorboard",
        action="store_true",
        help="also log scalars and image grids to RUN_DIR/tensorboard (pip install -e "
        '".[tensorboard]")',
    )
    t.add_argument(
        "--resume",
        action="store_true",
        help=f"continue the run in --out to --epochs; only {_RESUME_FLAGS} may be given (the "
        "run keeps the rest)",
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bar")


def configs_from_args(args: argparse.Namespace) -> tuple[VAEConfig, TrainConfig, dict]:
    """The run's configs from the flags: the preset's values, then every option typed.

    Returns the configs and the preset record for config.json (what it set, what was
    overridden)."""
    values = {k: getattr(args, k) for k in (*VAE_OPTIONS, *TRAIN_OPTIONS)}
    record: dict = {}
    if args.preset:
        preset = preset_values(args.preset)
        merged = {**preset["vae"], **preset["train"]}
        overridden = sorted(k for k in merged if k in args.typed)
        values.update({k: v for k, v in merged.items() if k not in args.typed})
        record = {"name": args.preset, "set": merged, "overridden": overridden}
    vae = VAEConfig(**{**{k: values[k] for k in VAE_OPTIONS}, **_fit_data(args, values)})
    train = TrainConfig(
        data_dir=args.data_dir,
        out=args.out,
        device=args.device,
        preset=args.preset,
        **{k: values[k] for k in TRAIN_OPTIONS},
    )
    return vae, train, record


def _fit_data(args: argparse.Namespace, values: dict) -> dict:
    """x_dim (and num_classes for auto) from the data; a one-line error when the classes do
    not fit a conditional VAE."""
    from pyro_vae.data.datasets import DatasetSpec, check_num_classes, peek_dataset

    spec = DatasetSpec.of(args)
    (h, w), classes = peek_dataset(spec, args.data_dir)
    num_classes = values["num_classes"]
    if num_classes == "auto":  # asks for a conditional VAE: unlabelled data fail the check
        num_classes = max(len(classes), 1)
    check_num_classes(spec.dataset, classes, num_classes)
    return {"x_dim": h * w, "num_classes": num_classes}


def resume_config(args: argparse.Namespace) -> TrainConfig:
    """The run's own training settings with the RESUMABLE options given; a one-line error for
    any other option typed with another value."""
    ckpt = load_checkpoint(args.out)
    saved = {
        **VAEConfig.from_dict(ckpt["vae_config"]).to_dict(),
        **TrainConfig.from_dict(ckpt["train_config"]).to_dict(),
    }
    for k in ("hidden_dims", "betas"):
        saved[k] = tuple(saved[k])
    differ = []
    for name in sorted(args.typed - set(RESUME_OPTIONS) - {"resume"}):
        given = getattr(args, name)
        if given != saved.get(name) and (name, given) not in (("data_mode", "auto"), _AUTO_CLASSES):
            flag = "--" + {"betas": "adam_betas", "eps": "adam_eps"}.get(name, name)
            flag = flag.replace("_", "-")
            differ.append(f"{flag} {shown(given)} (the run has {shown(saved.get(name))})")
    if differ:
        raise ValueError(
            f"--resume keeps the run's settings, but {', '.join(differ)}; drop "
            f"{'it' if len(differ) == 1 else 'them'} (only {_RESUME_FLAGS} may change), or "
            "train a new run with another --out"
        )
    train_fields = {k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__}
    given = {k: getattr(args, k) for k in RESUMABLE if k in _ALWAYS_GIVEN or k in args.typed}
    return TrainConfig.from_dict({**train_fields, **given})


def cmd_train(args: argparse.Namespace) -> None:
    from pyro_vae.runtime.distributed import close_world, init_world, launched_by_torchrun
    from pyro_vae.training.loop import train

    world = None
    if launched_by_torchrun():
        world, args.device = init_world(args.device)
    try:
        if world is not None:
            _fetch_data_on_rank_zero(args, world)
        if args.resume:
            config, vae, record = resume_config(args), None, {}
        else:
            vae, config, record = configs_from_args(args)
        log = print if world is None or world.is_main else (lambda s: None)
        train(
            vae,
            config,
            resume=args.resume,
            progress=not args.no_progress,
            log=log,
            world=world,
            preset=record,
        )
        if world is None or world.is_main:
            print(f"run written to {args.out}")
    finally:
        if world is not None:
            close_world(world)


def _fetch_data_on_rank_zero(args: argparse.Namespace, world) -> None:  # noqa: ANN001 - World
    """Rank 0 reads the data (downloading it if missing) while the others wait, then they do."""
    from pyro_vae.data.datasets import DatasetSpec, load_dataset

    if world.is_main:
        spec = resume_config(args) if args.resume else args
        load_dataset(DatasetSpec.of(spec), args.data_dir)
    world.barrier()
