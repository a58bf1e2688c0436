"""Training by SVI: the objective of the model and guide traces, minimized with fused Adam.

``train`` reads as the loop it is: open the run (``start.py``), then every epoch trains,
scores the test set and saves. A step (``inference/steps.py``) computes the loss on the
device and the epoch's metric sums stay there; the host reads them once per epoch (and, for
the progress bar, every ``PROGRESS_EVERY`` steps, without waiting on a GPU). Every epoch's
data order and noise come from the seed, the epoch and the process's rank
(``runtime/distributed.py``), so a resumed run draws exactly what an uninterrupted one would,
and N processes under torchrun train one model on shards of each batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from pyro_vae.data.datasets import DatasetSpec, check_outside_data
from pyro_vae.evaluation.elbo import evaluate_elbo
from pyro_vae.evaluation.semi_supervised import hidden_labels, label_accuracy
from pyro_vae.inference.loglik import evaluate_log_likelihood
from pyro_vae.inference.steps import NonFiniteError, parameters_finite
from pyro_vae.models.config import VAEConfig
from pyro_vae.models.user_model import UserModel
from pyro_vae.models.vae import VAE, labels_for
from pyro_vae.runs.checkpoint import CHECKPOINT_NAME, save_checkpoint
from pyro_vae.runs.lock import hold_run
from pyro_vae.runs.options import TrainConfig
from pyro_vae.runs.records import append_metrics
from pyro_vae.runtime.device import resolve_device, synchronize
from pyro_vae.runtime.distributed import World, epoch_seed
from pyro_vae.runtime.rng import seeded
from pyro_vae.training.schedules import (
    current_lr,
    kl_weight_at,
    optimizer_state,
    scheduler_state,
    stage_boundaries,
)
from pyro_vae.training.start import Run, start_run

# The progress bar's running loss is read back from the device this often.
PROGRESS_EVERY = 25
EVAL_BATCH = 1000
# Test images per importance-sampled batch (loglik chunks over K within it).
IW_BATCH = 100


def train(
    vae: VAE | VAEConfig | UserModel | None,
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
    ``config.seed``; or your own Pyro model and guide as a :class:`UserModel` (trained in
    place; its ``pyro.param`` statements found on a first batch; no figures, which need a
    VAE's encoder and decoder). With ``resume=True`` the run in ``config.out`` continues to
    ``config.epochs``: pass the VAE rebuilt with the run's objects (or None for a run of
    registry names); ``config`` may change only the resumable settings (the check is
    ``runs.options.resume_settings``, the CLI's too).

    ``world``: this process's place in a torchrun job (``distributed.init_world``); one process
    by default. ``preset``: what a preset set (recorded in config.json). Torch's RNG is seeded
    inside ``torch.random.fork_rng``, so the caller's RNG state is left as it was. Works in both
    of Pyro's modes and changes neither.

    One writer per run directory: the call holds ``config.out``'s lock (``runs/lock.py``; rank
    0 under torchrun) from before the run is read until it returns, and raises RunInUseError on
    every rank when another process holds it. ``config.out`` may not lie inside a ``folder:``
    dataset.
    """
    world = world or World()
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a run directory; choose another --out")
    check_outside_data(out, DatasetSpec.of(config))
    # One writer per run: held before the run is read for resume, until the figures are out.
    with hold_run(out, world), seeded(config.seed, resolve_device(config.device)):
        run = start_run(vae, config, out, world, resume=resume, log=log, preset=preset)
        for epoch in range(run.start_epoch + 1, run.config.epochs + 1):
            # This epoch's order and this rank's noise: from the seed alone, so resume is exact.
            torch.manual_seed(epoch_seed(run.config.seed, epoch, world.rank))
            m = train_epoch(run, epoch, progress and world.is_main)
            m.update(test_metrics(run, epoch))
            save_epoch(run, m, log)
        finish_run(run, write_figures, log)
    return run.metrics


def _kl_weight(run: Run, step: int) -> float:
    return kl_weight_at(step, run.config.kl_weight, run.config.kl_warmup)


def train_epoch(run: Run, epoch: int, progress: bool) -> dict:
    """One pass over this rank's shards of the training set; the epoch's training metrics."""
    vae, data, config, world, step = run.vae, run.data, run.config, run.world, run.step
    vae.train()
    names = run.objective.stat_names
    # loss, the objective's sums (recon, KL, ...), images: this rank's
    sums = torch.zeros(len(names) + 2, device=run.device)
    bad = torch.zeros((), dtype=torch.bool, device=run.device)
    running = _RunningLoss(run.device) if progress else None
    per_epoch = data.num_batches(config.batch_size)
    order = data.epoch_order(config.seed, epoch, config.batch_size)
    first = (epoch - 1) * per_epoch  # the run's global step at this epoch's first batch
    warming = config.kl_warmup > first
    vae.kl_weight = _kl_weight(run, first)
    t0, traced_before = time.perf_counter(), getattr(step, "trace_seconds", 0.0)
    bar = tqdm(
        data.train_batches(config.batch_size, order, world if world.size > 1 else None),
        total=per_epoch,
        desc=f"epoch {epoch}/{config.epochs}",
        disable=None if progress else True,  # None: no bar when stderr is not a terminal
        leave=False,
        unit="step",
    )
    full_batches = len(order) // config.batch_size  # the rest is the last, smaller one
    for i, (x, y) in enumerate(bar):
        if warming and i:
            vae.kl_weight = _kl_weight(run, first + i)  # a fill_ in place: no host read
        try:
            # Every rank knows whether the global batch is full: they take the same path.
            values, flag = step(x, labels_for(vae, y), full=i < full_batches)
        except ValueError:
            # The eager step's validation rejects a NaN parameter: say it as the traced one does.
            if not parameters_finite(vae):
                bad = torch.ones_like(bad)
                break
            raise
        sums[:-1] += values
        sums[-1] += x.shape[0]
        bad |= flag
        if running is not None and i % PROGRESS_EVERY == 0:
            shown = running.update(sums)
            if shown is not None:
                bar.set_postfix(neg_elbo=f"{shown:.2f}")
    bar.close()
    synchronize(run.device)
    # Tracing (and compiling) happens once, in the first epoch: timed apart from the steps.
    trace_seconds = getattr(step, "trace_seconds", 0.0) - traced_before
    seconds = time.perf_counter() - t0 - trace_seconds
    # Once per epoch: every rank's sums and flags together, then one host read.
    summed = world.all_reduce(torch.cat([sums, bad.float().reshape(1)]).double())
    loss_sum, *stat_sums, seen, flags = summed.tolist()
    stats = dict(zip(names, stat_sums, strict=True))
    recon_sum, kl_sum = stats["recon"], stats["kl"]
    if flags or not parameters_finite(vae):
        raise NonFiniteError(
            f"training stopped in epoch {epoch}: the loss, a gradient or a parameter became NaN "
            f"or infinite; the checkpoint of epoch {epoch - 1} is kept. Try a lower --lr "
            f"(this run: {config.lr:g})"
        )
    return {
        "epoch": epoch,
        "objective": run.objective.label,
        "num_particles": config.num_particles,
        "train_loss": loss_sum / seen,  # the objective trained, KL weight and all
        "train_neg_elbo": (recon_sum + kl_sum) / seen,  # the ELBO, unweighted
        "train_recon": recon_sum / seen,
        "train_kl": kl_sum / seen,
        "kl_weight": _kl_weight(run, first + per_epoch - 1),
        "seconds": seconds,
        "trace_seconds": trace_seconds,
        "lr": current_lr(run.optimizer),
        "step": step.kind,  # "eager" after an untraceable fall-back
        **semi_supervised_train_metrics(stats, seen),
    }


def semi_supervised_train_metrics(stats: dict[str, float], seen: float) -> dict:
    """The epoch's -ELBO on the labelled and on the unlabelled training images apart, and the
    mean -log q(y | x) of the labelled ones, from an EnumELBO step's sums (nothing without)."""
    if "labelled" not in stats:
        return {}
    labelled = stats["labelled"]
    neg_elbo = stats["recon"] + stats["kl"]
    m = {"train_labelled": labelled}
    if labelled:
        m["train_neg_elbo_labelled"] = stats["labelled_neg_elbo"] / labelled  # -log p(x, y)
        m["train_classification"] = stats["classification"] / labelled
    if seen > labelled:
        m["train_neg_elbo_unlabelled"] = (neg_elbo - stats["labelled_neg_elbo"]) / (
            seen - labelled
        )  # -log p(x): y summed out
    return m


def test_metrics(run: Run, epoch: int) -> dict:
    """The test -ELBO (the run's estimator; Trace_ELBO for an IWAE run) on this rank's part of
    the test set, summed over the ranks; and the test -L_K for K = the IWAE run's particles
    every epoch and K = ``test_iw_samples`` at the end of every stage of a staged schedule
    (every epoch with a constant rate) and at the last epoch. Unweighted, whatever beta."""
    vae, data, config, world = run.vae, run.data, run.config, run.world
    vae.eval()
    t0 = time.perf_counter()
    part = torch.tensor_split(torch.arange(data.test_x.shape[0]), world.size)[world.rank]
    x, y = data.test_x[part.to(data.test_x.device)], data.test_y[part.to(data.test_y.device)]
    batches = [(x[s : s + EVAL_BATCH], y[s : s + EVAL_BATCH]) for s in range(0, len(x), EVAL_BATCH)]
    test = evaluate_elbo(
        vae,
        batches,
        run.objective.test_estimate(),
        data_mode=data.data_mode,
        all_reduce=world.all_reduce,
    )
    m = {
        "estimator": test["estimator"],
        "kl_kind": test["kl_kind"],
        "kl_estimators": test["estimators"],  # latent site -> analytic or monte-carlo
        "test_neg_elbo": test["neg_elbo"],
        "test_recon": test["recon"],
        "test_kl": test["kl"],
        # The test -ELBO as a bound on the dataset's -log P (units.in_units), and its data.
        "test_bits_per_dim": test["bits_per_dim"],
        "data": test["data"],
        "units": "nats per image",
    }
    if vae.semi_supervised:
        m.update(semi_supervised_test_metrics(run, batches))
    ks = {run.objective.test_bound_samples} - {0}
    stage_end = config.lr_schedule == "constant" or epoch in stage_boundaries()
    if config.test_iw_samples and (stage_end or epoch == config.epochs):
        ks.add(config.test_iw_samples)
    for k in sorted(ks):
        small = [(x[s : s + IW_BATCH], y[s : s + IW_BATCH]) for s in range(0, len(x), IW_BATCH)]
        result = evaluate_log_likelihood(vae, small, k, all_reduce=world.all_reduce)
        m[f"test_neg_L{k}"] = result["neg_log_likelihood"]  # -L_K: the IW bound, K samples
    m["eval_seconds"] = time.perf_counter() - t0  # the test set, IW bound included
    return m


def semi_supervised_test_metrics(run: Run, batches: list) -> dict:
    """The test accuracy of q(y | x), and the test -ELBO with the labels hidden (y summed
    out: a bound on -log p(x), beside test_neg_elbo's -log p(x, y))."""
    accuracy = label_accuracy(run.vae, batches, all_reduce=run.world.all_reduce)
    hidden = evaluate_elbo(
        run.vae,
        hidden_labels(batches),
        run.objective.test_estimate(),
        data_mode=run.data.data_mode,
        all_reduce=run.world.all_reduce,
    )
    return {"test_accuracy": accuracy["accuracy"], "test_neg_elbo_unlabelled": hidden["neg_elbo"]}


def save_epoch(run: Run, m: dict, log: Callable[[str], None]) -> None:
    """The epoch's metrics row and checkpoint (rank 0), then the schedule's step."""
    if run.scheduler is not None:
        run.scheduler.step()
    if run.world.is_main:
        # The row first: a crash between the two leaves a row past the checkpoint, which
        # resume drops, never a checkpoint without its row.
        append_metrics(run.out, m)
        save_checkpoint(
            run.out / CHECKPOINT_NAME,
            {
                **run.record,
                "model": run.vae.state_dict(),
                "optimizer": optimizer_state(run.optimizer),
                "scheduler": scheduler_state(run.scheduler),
                "epoch": m["epoch"],
            },
        )
        log(epoch_line(m, run.config.epochs))
        if run.tensorboard is not None:
            run.tensorboard.log_epoch(run.vae, run.data, m)
    run.world.barrier()
    run.metrics.append(m)


def finish_run(run: Run, write_figures: bool, log: Callable[[str], None] = print) -> None:
    if run.tensorboard is not None:
        run.tensorboard.close()
    if write_figures and run.world.is_main:
        if isinstance(run.vae, VAE):
            from pyro_vae.figures.run_figures import write_run_figures

            write_run_figures(run.vae, run.data, run.metrics, run.out / "figures")
        else:
            log(f"note: no figures for {run.vae.name!r}: they need a VAE's encoder and decoder")
    run.world.barrier()


def epoch_line(m: dict, epochs: int) -> str:
    """The line printed after each epoch."""
    line = (
        f"epoch {m['epoch']:>3}/{epochs}  train -ELBO {m['train_neg_elbo']:.2f} "
        f"(recon {m['train_recon']:.2f}, KL {m['train_kl']:.2f})  "
    )
    if m.get("kl_weight", 1.0) != 1.0:
        line += f"loss {m['train_loss']:.2f} (KL weight {m['kl_weight']:.3g})  "
    line += (
        f"test -ELBO {m['test_neg_elbo']:.2f} "
        f"(recon {m['test_recon']:.2f}, KL {m['test_kl']:.2f})  "
    )
    for key in sorted(k for k in m if k.startswith("test_neg_L")):
        line += f"test -L_{key[len('test_neg_L') :]} {m[key]:.2f}  "
    if "test_accuracy" in m:
        line += f"test accuracy {m['test_accuracy']:.2%}  "
        parts = [
            f"{what} {m[key]:.2f}"
            for what, key in (
                ("labelled", "train_neg_elbo_labelled"),
                ("unlabelled", "train_neg_elbo_unlabelled"),
                ("test unlabelled", "test_neg_elbo_unlabelled"),
            )
            if key in m
        ]
        line += f"-ELBO {', '.join(parts)}  "
    return line + f"[{m['objective']}, KL {m['kl_kind']}, nats/image]  {m['seconds']:.1f} s"


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
