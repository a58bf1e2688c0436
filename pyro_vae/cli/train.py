"""``pyro-vae train``: its options, presets, and resuming a run.

Under torchrun (``WORLD_SIZE`` > 1) the command joins the process group for its duration; rank
0 fetches MNIST first, the others wait and read it, and only rank 0 writes and prints.
"""

from __future__ import annotations

import argparse

from pyro_vae.cli.args import DATA_OPTIONS, add_data_args, add_setting, add_settings
from pyro_vae.models.config import VAEConfig
from pyro_vae.models.label_encoder import DEFAULT_CLASSIFIER, NO_CLASSIFIER
from pyro_vae.runs.checkpoint import load_checkpoint
from pyro_vae.runs.options import (
    RESUME_FLAGS,
    TrainConfig,
    check_semi_supervised,
    resume_settings,
)
from pyro_vae.runs.presets import preset_values
from pyro_vae.runs.records import refuse_user_model_run
from pyro_vae.runtime.settings import option_names

# train's options: every option of the table (runtime.settings), in VAEConfig and TrainConfig.
VAE_OPTIONS = option_names(VAEConfig)
TRAIN_OPTIONS = option_names(TrainConfig)
# Options before the model's and the training's: the data, the run directory, the preset.
_FIRST = ("data_dir", "device", *DATA_OPTIONS, "out", "preset")
# On --resume these come from the command line even when not typed (their defaults); the other
# options only when typed.
_ALWAYS_GIVEN = ("data_dir", "device", "out")


def add_train_parser(sub) -> None:
    t = sub.add_parser(
        "train",
        help="train a VAE on MNIST and fill a run directory",
        description="Trains a VAE (or, with --num-classes, a conditional VAE) and writes its run "
        "directory: config.json, metrics.jsonl, checkpoint.pt, figures/. Under torchrun "
        "(--nproc-per-node N) it trains one model on N processes.",
    )
    add_data_args(t)
    for name in ("out", "preset"):
        add_setting(t, TrainConfig, name)
    add_settings(
        t.add_argument_group("training (TrainConfig)"),
        TrainConfig,
        [k for k in TRAIN_OPTIONS if k not in _FIRST],
    )
    add_settings(t.add_argument_group("model (VAEConfig)"), VAEConfig)
    t.add_argument(
        "--resume",
        action="store_true",
        help=f"continue the run in --out to --epochs; only {RESUME_FLAGS} may be given (the "
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
    if "latent_dims" in args.typed and "z_dim" not in args.typed:
        values["z_dim"] = None  # the top layer typed: z_dim follows it, not a preset's
    fitted = _fit_data(args, values)
    if values["classifier"] == "auto":  # q(y | x) exactly when labels go missing
        values["classifier"] = DEFAULT_CLASSIFIER if values["labelled"] else NO_CLASSIFIER
    vae = VAEConfig(**{**{k: values[k] for k in VAE_OPTIONS}, **fitted})
    train = TrainConfig(**{k: values[k] for k in TRAIN_OPTIONS})
    check_semi_supervised(train, vae)
    return vae, train, record


def _fit_data(args: argparse.Namespace, values: dict) -> dict:
    """The image shape (and num_classes for auto) from the data; a one-line error when the
    classes do not fit a conditional VAE."""
    from pyro_vae.data.datasets import DatasetSpec, check_num_classes, peek_dataset

    spec = DatasetSpec.of(args)
    shape, classes = peek_dataset(spec, args.data_dir)
    num_classes = values["num_classes"]
    if num_classes == "auto":  # asks for a conditional VAE: unlabelled data fail the check
        num_classes = max(len(classes), 1)
    check_num_classes(spec.dataset, classes, num_classes)
    return {"image_shape": shape, "num_classes": num_classes}


def resume_config(args: argparse.Namespace) -> TrainConfig:
    """The run's own training settings with the resumable options given; a one-line error for
    any other option typed with another value (``runs.options.resume_settings``)."""
    ckpt = load_checkpoint(args.out)
    refuse_user_model_run(ckpt, args.out)
    changes = {
        k: getattr(args, k)
        for k in (*TRAIN_OPTIONS, *VAE_OPTIONS)
        if k in args.typed or k in _ALWAYS_GIVEN
    }
    return resume_settings(
        TrainConfig.from_dict(ckpt["train_config"]),
        changes,
        VAEConfig.from_dict(ckpt["vae_config"]),
    )


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
