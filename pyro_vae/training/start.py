"""Opening a training run: a new one, or a checkpoint resumed exactly.

``start_run`` turns what the caller gave (a VAE or its config, or the user's own model and
guide as a :class:`~pyro_vae.models.user_model.UserModel`; the settings, resume or not) into
a :class:`Run`: the model on its device, the data (checked once against the likelihood),
the objective, the optimizer and schedule (restored from the checkpoint when resuming), the
step, the run directory's record and the epochs already done. The loop (``loop.py``) then
only trains, scores and saves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pyro_vae.data.datasets import DatasetSpec, check_outside_data, check_run_data
from pyro_vae.data.images import ImageData
from pyro_vae.data.labelled import draw_labelled, labelled_record
from pyro_vae.inference.objectives import Objective
from pyro_vae.inference.steps import EagerStep, TracedStep, build_step, resolve_step
from pyro_vae.models.config import VAEConfig
from pyro_vae.models.user_model import UserModel
from pyro_vae.models.vae import VAE
from pyro_vae.runs.checkpoint import CHECKPOINT_NAME, load_checkpoint
from pyro_vae.runs.options import (
    TrainConfig,
    check_semi_supervised,
    resolve_alpha,
    resolve_elbo,
    resume_settings,
)
from pyro_vae.runs.records import (
    check_fits,
    check_fits_user_model,
    load_state,
    read_metrics,
    write_config,
    write_metrics,
)
from pyro_vae.runtime.device import resolve_device
from pyro_vae.runtime.distributed import World
from pyro_vae.runtime.rng import seeded
from pyro_vae.training.schedules import load_optimizer_state, make_optimizer, make_scheduler


@dataclass
class Run:
    """A training run while it trains: what every epoch reads and updates."""

    vae: VAE | UserModel
    config: TrainConfig
    out: Path
    world: World
    device: torch.device
    data: ImageData
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    step: EagerStep | TracedStep | None  # built last, once the state is restored
    record: dict  # what every checkpoint holds besides the state dicts
    start_epoch: int = 0
    metrics: list[dict] = field(default_factory=list)
    tensorboard: object | None = None  # training.tensorboard.TensorBoardLog


Model = VAE | UserModel


def _model_and_settings(
    vae: Model | VAEConfig | None, config: TrainConfig, out: Path, resume: bool
) -> tuple[Model | VAEConfig, TrainConfig, dict | None]:
    """The model (or its config), the settings and the checkpoint (None for a new run)."""
    if not resume:
        if (out / CHECKPOINT_NAME).exists():
            raise ValueError(
                f"{out} already holds a run; pass --resume to continue it or choose another --out"
            )
        if vae is None:
            raise ValueError(
                "give the VAE (or a VAEConfig, or a UserModel) to train; None is only for "
                "resume=True"
            )
        if not isinstance(vae, VAE | VAEConfig | UserModel):
            raise TypeError(
                f"train takes a VAE, a VAEConfig or a UserModel, got {type(vae).__name__}; "
                "wrap your own model and guide as pyro_vae.UserModel(model, guide)"
            )
        return vae, config, None
    ckpt = load_checkpoint(out)
    given = {name: getattr(config, name) for name in TrainConfig.__dataclass_fields__}
    config = resume_settings(TrainConfig.from_dict(ckpt["train_config"]), given)
    check_outside_data(out, DatasetSpec.of(config))
    if "user_model" in ckpt or isinstance(vae, UserModel):
        check_fits_user_model(vae, ckpt, out)
        return vae, config, ckpt
    saved = VAEConfig.from_dict(ckpt["vae_config"])
    if isinstance(vae, VAE):
        check_fits(vae, saved, ckpt.get("objects"))
    elif vae is not None and vae != saved:
        raise ValueError(
            "a resumed run keeps its model; the VAEConfig passed differs from the run's "
            "(pass None to use the run's)"
        )
    return vae if isinstance(vae, VAE) else saved, config, ckpt


def _load_data(vae: Model, config: TrainConfig, device: torch.device, ckpt: dict | None):
    data = ImageData.load(
        config.data_dir,
        vae.likelihood,
        config.data_mode,
        device,
        train_subset=config.train_subset,
        test_subset=config.test_subset,
        dataset=DatasetSpec.of(config),
    )
    check_run_data(vae.config, data, ckpt)
    # What Pyro's validation would check every step, checked once for the whole dataset (its
    # binarization draws come from a seeded block, not from the caller's generator).
    with seeded(config.seed, device):
        data.validate(vae.config.num_classes)
    if config.data_mode == "auto":
        config.data_mode = data.data_mode
    if config.labelled:
        _keep_labels(data, config, vae.config.num_classes, ckpt)
    return data


def _keep_labels(data: ImageData, config: TrainConfig, num_classes: int, ckpt: dict | None):
    """The semi-supervised run's labelled images (``data.labelled``), drawn from the seed; a
    resumed run must draw the ones it recorded."""
    idx = draw_labelled(data.train_y, config.labelled, num_classes, config.label_seed)
    record = labelled_record(idx, data.train_y, num_classes, config.label_seed)
    saved = (ckpt or {}).get("labelled")
    if saved is not None and saved["sha256"] != record["sha256"]:
        raise ValueError(
            "--resume drew other labelled images than the run's (the training labels "
            "changed); resume with the run's data"
        )
    data.keep_labels(idx, config.labelled_per_batch)
    data.labelled_record = record


def start_decoder_bias(vae: Model, data: ImageData) -> None:
    """The IWAE paper's start: the decoder's output bias at the logit of the training set's
    mean pixel (clipped to [0.001, 0.999]), so the first steps do not spend themselves on it."""
    if not isinstance(vae, VAE):
        raise ValueError(
            f"decoder_bias 'data-mean' sets a VAE's decoder; {vae.name!r} is your own model "
            "(initialize it yourself and drop --decoder-bias)"
        )
    if vae.likelihood.params_per_pixel != 1:
        raise ValueError("decoder_bias 'data-mean' needs a likelihood with one output per pixel")
    if vae.config.network != "mlp":
        raise ValueError(
            f"decoder_bias 'data-mean' sets the MLP's per-pixel output bias; the "
            f"{vae.config.network} network has none (drop --decoder-bias, or use --network mlp)"
        )
    mean = data.train_x.double().mean(0).div(255).clamp(0.001, 0.999)
    bias = vae.model.decoder.net[-1].bias
    with torch.no_grad():
        bias.copy_(torch.logit(mean).to(bias))


def _restore(run: Run, ckpt: dict, log: Callable[[str], None]) -> None:
    """Weights, optimizer, schedule and metrics rows of the checkpoint's epoch."""
    load_state(run.vae, ckpt["model"], run.out)
    load_optimizer_state(run.optimizer, ckpt["optimizer"])
    if run.scheduler is not None:
        run.scheduler.load_state_dict(ckpt["scheduler"])
    run.start_epoch = ckpt["epoch"]
    before = ckpt.get("world_size", 1)
    if before != run.world.size:
        log(
            f"resuming a run trained on {before} process(es) on {run.world.size}: the "
            "per-process noise streams differ from an uninterrupted run's"
        )
    # Drops epochs the checkpoint does not have (a crash between the two writes).
    run.metrics = read_metrics(run.out, up_to=run.start_epoch)
    run.world.barrier()  # every rank has read the file before rank 0 rewrites it
    if run.world.is_main:
        write_metrics(run.out, run.metrics)
    if run.start_epoch >= run.config.epochs:
        log(f"{run.out} already has {run.start_epoch} epochs; raise --epochs to train further")


def _write_new_run(run: Run, preset: dict | None) -> None:
    if run.world.is_main:
        r = run.record
        model = {"vae": r["vae_config"]} if "vae_config" in r else {"user_model": r["user_model"]}
        write_config(
            run.out,
            {
                **model,
                "train": r["train_config"],
                "objects": r["objects"],
                **({"preset": preset} if preset else {}),
                "dataset": r["dataset"],
                **({"labelled": r["labelled"]} if "labelled" in r else {}),
            },
        )
        write_metrics(run.out, [])


def start_run(
    vae: Model | VAEConfig | None,
    config: TrainConfig,
    out: Path,
    world: World,
    *,
    resume: bool,
    log: Callable[[str], None],
    preset: dict | None = None,
) -> Run:
    """The run ``train`` trains (see there); call with the run directory's lock held and
    inside a seeded block (every epoch then seeds its own stream)."""
    vae, config, ckpt = _model_and_settings(vae, config, out, resume)
    device = resolve_device(config.device)
    check_semi_supervised(config, vae if isinstance(vae, VAEConfig) else vae.config)
    if isinstance(vae, VAEConfig):
        # The initial weights too come from the seed, not from the caller's RNG state.
        with seeded(config.seed, device):
            vae = VAE.from_config(vae)
    data = _load_data(vae, config, device, ckpt)
    # What the run trains on, resolved and recorded: the objective, and M2's classification
    # weight (the paper's unless given).
    config.elbo = resolve_elbo(config.elbo, vae.semi_supervised)
    if vae.semi_supervised:
        per_epoch = data.labelled_per_epoch(config.batch_size)
        config.alpha = resolve_alpha(config, data.num_train, per_epoch)
    total_steps = data.num_batches(config.batch_size) * config.epochs
    kind = resolve_step(config.step, device, total_steps, world.size)
    vae.to(device)
    if isinstance(vae, UserModel):
        # Its pyro.param statements become parameters before the optimizer is made (and
        # before a checkpoint's weights load into them), on the device.
        n = min(config.batch_size, len(data.test_x))
        vae.setup(data.test_x[:n], data.test_y[:n]).to(device)
    if ckpt is None and config.decoder_bias == "data-mean":
        start_decoder_bias(vae, data)
    optimizer = make_optimizer(vae, config, capturable=kind.capturable_optimizer)
    which = "user_model" if isinstance(vae, UserModel) else "vae_config"
    record = {
        which: vae.config.to_dict(),
        "train_config": config.to_dict(),
        "objects": vae.custom_objects(),
        "world_size": world.size,
        "dataset": data.dataset,
    }
    if config.labelled:
        record["labelled"] = data.labelled_record
    run = Run(
        vae, config, out, world, device, data, config.objective(vae.semi_supervised), optimizer,
        make_scheduler(optimizer, config), step=None, record=record,
    )  # fmt: skip
    if ckpt is not None:
        _restore(run, ckpt, log)
    else:
        _write_new_run(run, preset)
    # After the restore: DDP broadcasts rank 0's weights when it wraps the loss.
    run.step = build_step(
        vae, optimizer, run.objective, kind, world, log if world.is_main else None,
        auto=config.step == "auto",
    )  # fmt: skip
    if config.tensorboard and world.is_main:
        from pyro_vae.training.tensorboard import TensorBoardLog

        run.tensorboard = TensorBoardLog(out / "tensorboard")
    return run
