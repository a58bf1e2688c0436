"""Training by SVI: the objective of the model and guide traces, minimized with fused Adam.

A step (``step.py``) computes the loss on the device and the epoch's metric sums stay there;
the host reads them once per epoch (and, for the progress bar, every ``PROGRESS_EVERY``
steps, without waiting on a GPU). Every epoch's data order and noise come from the seed, the
epoch and the process's rank (``distributed.py``), so a resumed run draws exactly what an
uninterrupted one would, and N processes under torchrun train one model on shards of each
batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from pyro_vae.data.datasets import DatasetSpec, check_outside_data, check_run_data
from pyro_vae.data.images import ImageData
from pyro_vae.evaluation.elbo import evaluate_elbo
from pyro_vae.inference.loglik import evaluate_log_likelihood
from pyro_vae.inference.objectives import OBJECTIVES
from pyro_vae.inference.steps import NonFiniteError, build_step, parameters_finite, resolve_step
from pyro_vae.models.config import VAEConfig
from pyro_vae.models.vae import VAE, labels_for
from pyro_vae.runs.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from pyro_vae.runs.lock import hold_run
from pyro_vae.runs.options import TrainConfig, resume_settings
from pyro_vae.runs.records import (
    append_metrics,
    check_fits,
    load_state,
    read_metrics,
    write_config,
    write_metrics,
)
from pyro_vae.runtime.device import resolve_device, synchronize
from pyro_vae.runtime.distributed import World, epoch_order, epoch_seed
from pyro_vae.runtime.rng import seeded
from pyro_vae.training.schedules import (
    current_lr,
    load_optimizer_state,
    make_optimizer,
    make_scheduler,
    optimizer_state,
    scheduler_state,
    stage_boundaries,
)

# The progress bar's running loss is read back from the device this often.
PROGRESS_EVERY = 25
EVAL_BATCH = 1000
# Test images per importance-sampled batch (loglik chunks over K within it).
IW_BATCH = 100


def _epoch_line(m: dict, epochs: int) -> str:
    line = (
        f"epoch {m['epoch']:>3}/{epochs}  train -ELBO {m['train_neg_elbo']:.2f} "
        f"(recon {m['train_recon']:.2f}, KL {m['train_kl']:.2f})  "
        f"test -ELBO {m['test_neg_elbo']:.2f} "
        f"(recon {m['test_recon']:.2f}, KL {m['test_kl']:.2f})  "
    )
    for key in sorted(k for k in m if k.startswith("test_neg_L")):
        line += f"test -L_{key[len('test_neg_L') :]} {m[key]:.2f}  "
    return line + f"[{m['objective']}, KL {m['kl_kind']}, nats/image]  {m['seconds']:.1f} s"


def _start_decoder_bias(vae: VAE, data: ImageData) -> None:
    """The IWAE paper's start: the decoder's output bias at the logit of the training set's
    mean pixel (clipped to [0.001, 0.999]), so the first steps do not spend themselves on it."""
    if vae.likelihood.params_per_pixel != 1:
        raise ValueError("decoder_bias 'data-mean' needs a likelihood with one output per pixel")
    mean = data.train_x.double().mean(0).div(255).clamp(0.001, 0.999)
    with torch.no_grad():
        vae.model.decoder.net[-1].bias.copy_(torch.logit(mean).to(vae.model.decoder.net[-1].bias))


def train(
    vae: VAE | VAEConfig | None,
    config: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    write_figures: bool = True,
    world: World | None = None,
    preset: dict | None = None,
) -> list[dict]:
    """Trains a VAE and fills the run directory ``config.out``; returns every epoch's metrics.

    ``vae``: a built :class:`VAE`, with any prior and likelihood objects, trained in place (and
    moved to ``config.device``); or a :class:`VAEConfig` of registry names, built here from
    ``config.seed``. With ``resume=True`` the run in ``config.out`` continues to
    ``config.epochs``: pass the VAE rebuilt with the run's objects (or None for a run of
    registry names); ``config`` may change only the fields in ``RESUMABLE`` (the check is
    ``runs.options.resume_settings``, the CLI's too).

    ``world``: this process's place in a torchrun job (``distributed.init_world``); one process
    by default. ``preset``: what a preset set (recorded in config.json). Torch's RNG is seeded
    inside ``torch.random.fork_rng``, so the caller's RNG state is left as it was. Works in both
    of Pyro's modes and changes neither.

    One writer per run directory: the call holds ``config.out``'s lock (``runlock.py``; rank 0
    under torchrun) from before the run is read until it returns, and raises RunInUseError on
    every rank when another process holds it. ``config.out`` may not lie inside a ``folder:``
    dataset.
    """
    world = world or World()
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a run directory; choose another --out")
    check_outside_data(out, DatasetSpec.of(config))
    # One writer per run: held before the run is read for resume, until the figures are out.
    with hold_run(out, world):
        return _train(vae, config, out, world, resume, progress, log, write_figures, preset)


def _train(
    vae: VAE | VAEConfig | None,
    config: TrainConfig,
    out: Path,
    world: World,
    resume: bool,
    progress: bool,
    log: Callable[[str], None],
    write_figures: bool,
    preset: dict | None,
) -> list[dict]:
    """train()'s work, with the run directory's lock held (by rank 0)."""
    ckpt = None
    if resume:
        ckpt = load_checkpoint(out)
        saved = VAEConfig.from_dict(ckpt["vae_config"])
        given = {name: getattr(config, name) for name in TrainConfig.__dataclass_fields__}
        config = resume_settings(TrainConfig.from_dict(ckpt["train_config"]), given)
        check_outside_data(out, DatasetSpec.of(config))
        if isinstance(vae, VAE):
            check_fits(vae, saved, ckpt.get("objects"))
        elif vae is not None and vae != saved:
            raise ValueError(
                "a resumed run keeps its model; the VAEConfig passed differs from the run's "
                "(pass None to use the run's)"
            )
        else:
            vae = saved
    elif (out / CHECKPOINT_NAME).exists():
        raise ValueError(
            f"{out} already holds a run; pass --resume to continue it or choose another --out"
        )
    elif vae is None:
        raise ValueError("give the VAE (or a VAEConfig) to train; None is only for resume=True")
    device = resolve_device(config.device)
    if isinstance(vae, VAEConfig):
        # The initial weights too come from the seed, not from the caller's RNG state.
        with seeded(config.seed, device):
            vae = VAE.from_config(vae)
    data = ImageData.load(
        config.data_dir,
        vae.likelihood,
        config.data_mode,
        device,
        train_subset=config.train_subset,
        test_subset=config.test_subset,
        dataset=DatasetSpec.of(config),
    )
    check_run_data(vae.config.x_dim, data, ckpt)
    # What Pyro's validation would check every step, checked once for the whole dataset (its
    # binarization draws come from a seeded block, not from the caller's generator).
    with seeded(config.seed, device):
        data.validate(vae.config.num_classes)
    if config.data_mode == "auto":
        config.data_mode = data.data_mode
    steps_per_epoch = data.num_batches(config.batch_size)
    kind = resolve_step(config.step, device, steps_per_epoch * config.epochs, world.size)
    record = {
        "vae_config": vae.config.to_dict(),
        "train_config": config.to_dict(),
        "objects": vae.custom_objects(),
        "world_size": world.size,
        "dataset": data.dataset,
    }
    with seeded(config.seed, device):
        vae.to(device)
        if ckpt is None and config.decoder_bias == "data-mean":
            _start_decoder_bias(vae, data)
        optimizer = make_optimizer(vae, config, capturable=kind == "cudagraph")
        scheduler = make_scheduler(optimizer, config)
        metrics: list[dict] = []
        start_epoch = 0
        if ckpt is not None:
            load_state(vae, ckpt["model"], out)
            load_optimizer_state(optimizer, ckpt["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(ckpt["scheduler"])
            start_epoch = ckpt["epoch"]
            before = ckpt.get("world_size", 1)
            if before != world.size:
                log(
                    f"resuming a run trained on {before} process(es) on {world.size}: the "
                    "per-process noise streams differ from an uninterrupted run's"
                )
            # Drops epochs the checkpoint does not have (a crash between the two writes).
            metrics = read_metrics(out, up_to=start_epoch)
            world.barrier()  # every rank has read the file before rank 0 rewrites it
            if world.is_main:
                write_metrics(out, metrics)
            if start_epoch >= config.epochs:
                log(f"{out} already has {start_epoch} epochs; raise --epochs to train further")
        elif world.is_main:
            write_config(
                out,
                {
                    "vae": record["vae_config"],
                    "train": record["train_config"],
                    "objects": record["objects"],
                    **({"preset": preset} if preset else {}),
                    "dataset": record["dataset"],
                },
            )
            write_metrics(out, [])
        step = build_step(
            vae,
            optimizer,
            config,
            kind,
            world,
            log if world.is_main else None,
            auto=config.step == "auto",
        )
        tensorboard = None
        if config.tensorboard and world.is_main:
            from pyro_vae.training.tensorboard import TensorBoardLog

            tensorboard = TensorBoardLog(out / "tensorboard")
        for epoch in range(start_epoch + 1, config.epochs + 1):
            # This epoch's order and this rank's noise: from the seed alone, so resume is exact.
            torch.manual_seed(epoch_seed(config.seed, epoch, world.rank))
            m = _run_epoch(vae, step, data, config, epoch, progress and world.is_main, world)
            m["lr"] = current_lr(optimizer)
            m["step"] = getattr(step, "kind", kind)  # "eager" after an untraceable fall-back
            if scheduler is not None:
                scheduler.step()
            if world.is_main:
                # The row first: a crash between the two leaves a row past the checkpoint,
                # which resume drops, never a checkpoint without its row.
                append_metrics(out, m)
                save_checkpoint(
                    out / CHECKPOINT_NAME,
                    {
                        **record,
                        "model": vae.state_dict(),
                        "optimizer": optimizer_state(optimizer),
                        "scheduler": scheduler_state(scheduler),
                        "epoch": epoch,
                    },
                )
                log(_epoch_line(m, config.epochs))
                if tensorboard is not None:
                    tensorboard.log_epoch(vae, data, m)
            world.barrier()
            metrics.append(m)
        if tensorboard is not None:
            tensorboard.close()
        if write_figures and world.is_main:
            from pyro_vae.figures.run_figures import write_run_figures

            write_run_figures(vae, data, metrics, out / "figures")
        world.barrier()
    return metrics


def _run_epoch(
    vae: VAE,
    step: Callable,
    data: ImageData,
    config: TrainConfig,
    epoch: int,
    progress: bool,
    world: World,
) -> dict:
    device = data.train_x.device
    vae.train()
    sums = torch.zeros(4, device=device)  # loss, recon, KL, images: this rank's
    bad = torch.zeros((), dtype=torch.bool, device=device)
    running = _RunningLoss(device) if progress else None
    order = epoch_order(data.num_train, config.seed, epoch, device)
    t0 = time.perf_counter()
    bar = tqdm(
        data.train_batches(config.batch_size, order, world if world.size > 1 else None),
        total=data.num_batches(config.batch_size),
        desc=f"epoch {epoch}/{config.epochs}",
        disable=None if progress else True,  # None: no bar when stderr is not a terminal
        leave=False,
        unit="step",
    )
    full_batches = data.num_train // config.batch_size  # the rest is the last, smaller one
    traced_before = getattr(step, "trace_seconds", 0.0)
    for i, (x, y) in enumerate(bar):
        try:
            # Every rank knows whether the global batch is full: they take the same path.
            values, flag = step(x, labels_for(vae, y), full=i < full_batches)
        except ValueError:
            # The eager step's validation rejects a NaN parameter: say it as the traced one does.
            if not parameters_finite(vae):
                bad = torch.ones_like(bad)
                break
            raise
        sums[:3] += values
        sums[3] += x.shape[0]
        bad |= flag
        if running is not None and i % PROGRESS_EVERY == 0:
            shown = running.update(sums)
            if shown is not None:
                bar.set_postfix(neg_elbo=f"{shown:.2f}")
    bar.close()
    synchronize(device)
    # Tracing (and compiling) happens once, in the first epoch: timed apart from the steps.
    trace_seconds = getattr(step, "trace_seconds", 0.0) - traced_before
    seconds = time.perf_counter() - t0 - trace_seconds
    # Once per epoch: every rank's sums and flags together, then one host read.
    summed = world.all_reduce(torch.cat([sums, bad.float().reshape(1)]).double())
    loss_sum, recon_sum, kl_sum, seen, flags = summed.tolist()
    if flags or not parameters_finite(vae):
        raise NonFiniteError(
            f"training stopped in epoch {epoch}: the loss, a gradient or a parameter became NaN "
            f"or infinite; the checkpoint of epoch {epoch - 1} is kept. Try a lower --lr "
            f"(this run: {config.lr:g})"
        )
    vae.eval()
    t1 = time.perf_counter()
    test = _evaluate(vae, data, config, world, epoch)
    m = {
        "epoch": epoch,
        "objective": OBJECTIVES[config.elbo],
        "estimator": test["estimator"],
        "num_particles": config.num_particles,
        "kl_kind": "monte-carlo" if config.elbo == "iwae" else test["kl_kind"],
        "train_loss": loss_sum / seen,
        "train_neg_elbo": (recon_sum + kl_sum) / seen,
        "train_recon": recon_sum / seen,
        "train_kl": kl_sum / seen,
        "test_neg_elbo": test["neg_elbo"],
        "test_recon": test["recon"],
        "test_kl": test["kl"],
        # The test -ELBO as a bound on the dataset's -log P (units.in_units), and its data.
        "test_bits_per_dim": test["bits_per_dim"],
        "data": test["data"],
        "seconds": seconds,
        "trace_seconds": trace_seconds,
        "units": "nats per image",
    }
    for k, result in test["iw"].items():
        m[f"test_neg_L{k}"] = result["neg_log_likelihood"]  # -L_K: the IW bound, K samples
    m["eval_seconds"] = time.perf_counter() - t1  # after the test set, IW bound included
    return m


def _evaluate(vae: VAE, data: ImageData, config: TrainConfig, world: World, epoch: int) -> dict:
    """The test -ELBO (the run's estimator; Trace_ELBO for an IWAE run) on this rank's part of
    the test set, summed over the ranks; and the test -L_K, in ``iw``, for K = the IWAE run's
    particles every epoch and K = ``test_iw_samples`` at the end of every stage of a staged
    schedule (every epoch with a constant rate) and at the last epoch."""
    part = torch.tensor_split(torch.arange(data.test_x.shape[0]), world.size)[world.rank]
    x, y = data.test_x[part.to(data.test_x.device)], data.test_y[part.to(data.test_y.device)]
    batches = [(x[s : s + EVAL_BATCH], y[s : s + EVAL_BATCH]) for s in range(0, len(x), EVAL_BATCH)]
    estimator = "meanfield" if config.elbo == "meanfield" else "trace"
    particles = 1 if config.elbo == "iwae" else config.num_particles
    test = evaluate_elbo(
        vae, batches, estimator, particles, binarize=data.data_mode, all_reduce=world.all_reduce
    )
    ks = [config.num_particles] if config.elbo == "iwae" else []
    stage_end = config.lr_schedule == "constant" or epoch in stage_boundaries()
    if config.test_iw_samples and (stage_end or epoch == config.epochs):
        ks.append(config.test_iw_samples)
    test["iw"] = {}
    for k in sorted(set(ks)):
        small = [(x[s : s + IW_BATCH], y[s : s + IW_BATCH]) for s in range(0, len(x), IW_BATCH)]
        test["iw"][k] = evaluate_log_likelihood(vae, small, k, all_reduce=world.all_reduce)
    return test


class _RunningLoss:
    """The progress bar's running -ELBO per image, read without stalling a GPU: on CUDA the
    sums are copied to pinned memory asynchronously and shown once the copy has landed."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.host = torch.zeros(4, pin_memory=True)
            self.event: torch.cuda.Event | None = None

    def update(self, sums: torch.Tensor) -> float | None:
        if not self.cuda:
            loss, _, _, seen = sums.tolist()
            return loss / max(seen, 1)
        shown = None
        if self.event is not None and self.event.query():
            loss, _, _, seen = self.host.tolist()
            shown = loss / max(seen, 1)
        if self.event is None or self.event.query():
            self.host.copy_(sums, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        return shown
