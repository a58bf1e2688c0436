"""The training step, eager or traced.

``ELBOLoss`` is the VAE's objective as a torch module (Pyro's ELBO-as-module pattern): its
``forward(x, y)`` runs the Pyro guide and the replayed model and returns the loss with the
epoch's metric sums. Two steps drive it:

- :class:`EagerStep` runs Pyro every step, with Pyro's validation on: the reference. Wrapped in
  ``DistributedDataParallel`` it is the multi-process step (``distributed.py``).
- a :class:`TracedStep` traces forward *and* backward once per input shape with ``make_fx``
  into a graph of aten operations (``step_graph.py``), checks it against the eager step, then
  replays that graph every step with fresh random draws (the draws are graph operations), and
  hands the gradients to the fused Adam step. Pyro's messenger stack, trace building,
  PyroModule parameter statements and validation's host reads are paid once, at tracing. The
  kinds differ only in what replays the graph: :class:`FXStep` replays it as is,
  :class:`CompiledStep` compiles it by inductor (fused C++ on a CPU, Triton on a GPU),
  :class:`CUDAGraphStep` captures it with the optimizer step in a CUDA graph.

Step kinds are classes in ``STEP_KINDS`` (``@register_step``), each saying what it needs (a
GPU, one process, a capturable optimizer); ``resolve_step`` picks one for a run. Adding a kind
is one class with a ``_finish`` (what replays the checked graph) and the decorator.

Validation's guarantee moves, it is not dropped: the traced graph is built with validation off
(a data-dependent Python ``if`` cannot live in a graph), and instead the whole dataset is checked
against the likelihood's support once, on load, and the labels once per dataset
(``ImageData.validate``); the graph itself flags a non-finite loss or gradient on the device,
read once per epoch. User-facing calls (``vae.model(x, y)``, classic SVI) keep Pyro's
validation as it is: tracing changes no setting outside its own block.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor, nn

from pyro_vae.inference.objectives import Objective, make_objective
from pyro_vae.inference.step_graph import (
    CHECK_SEED,
    UntraceableError,
    check_against_eager,
    eager_reference,
    one_line,
    split_parameters,
    trace_step,
    user_frame,
)
from pyro_vae.inference.tracing import compile_graph
from pyro_vae.models.user_model import UserModel
from pyro_vae.models.vae import VAE

__all__ = ["UntraceableError"]  # raised by the traced steps; defined beside the graph


class NonFiniteError(RuntimeError):
    """The loss, a gradient or a parameter became NaN or infinite during training."""


class ELBOLoss(nn.Module):
    """The negative objective of ``vae`` on a batch, as a module (what DDP wraps).

    ``objective``: an :class:`~pyro_vae.inference.objectives.Objective`, or its registry name
    with ``num_particles``. ``forward(x, y)`` returns ``(loss * loss_scale, sum of -E_q log
    p(x|z), sum of KL, ...)``: the loss is summed over the batch's images and differentiable
    (the training objective, weights and all); the sums (the objective's ``stat_names``) are
    the unweighted ELBO's (detached).
    """

    def __init__(
        self,
        vae: VAE | UserModel,
        objective: Objective | str = "trace",
        num_particles: int = 1,
        loss_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.vae = vae
        if isinstance(objective, str):
            objective = make_objective(objective, num_particles)
        self.objective = objective
        self.loss_scale = loss_scale

    def forward(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, ...]:
        t = self.objective.terms(self.vae.model, self.vae.guide, x, y)
        return t.loss * self.loss_scale, *self.objective.stat_sums(t)


def parameters_finite(module: nn.Module) -> bool:
    """True when every parameter is finite (one host read)."""
    flags = [p.detach().isfinite().all() for p in module.parameters()]
    return bool(torch.stack(flags).all()) if flags else True


STEP_KINDS: dict[str, type] = {}


def register_step(cls: type) -> type:
    """Class decorator: ``cls.name`` becomes a choice of ``--step``."""
    STEP_KINDS[cls.name] = cls
    return cls


class StepKind:
    """What a kind of step needs; subclasses set these."""

    name: ClassVar[str]
    needs_cuda: ClassVar[bool] = False  # runs only on a GPU
    one_process: ClassVar[bool] = False  # has no place for a gradient all-reduce
    capturable_optimizer: ClassVar[bool] = False  # Adam(capturable=True): its state on device


@register_step
class EagerStep(StepKind):
    """Pyro's model and guide run every step; returns [loss, recon sum, KL sum, ...] (the
    objective's ``stat_names``) and a non-finite flag, both on the device (no host read).

    ``loss`` is an :class:`ELBOLoss`, or one wrapped in ``DistributedDataParallel`` whose
    gradient hooks average over the ranks during ``backward``; ``loss_scale`` is the factor
    the module multiplied the loss by (the world size under DDP), taken out of the metrics.
    """

    name = "eager"
    kind = "eager"

    def __init__(
        self, loss: nn.Module, optimizer: torch.optim.Optimizer, loss_scale: float = 1.0
    ) -> None:
        self.loss = loss
        self.optimizer = optimizer
        self.loss_scale = loss_scale

    def __call__(self, x: Tensor, y: Tensor | None, full: bool = True) -> tuple[Tensor, Tensor]:
        self.optimizer.zero_grad(set_to_none=True)
        loss, *stats = self.loss(x, y)
        loss.backward()
        self.optimizer.step()
        value = loss.detach() / self.loss_scale
        return torch.stack([value, *stats]), ~value.isfinite()


class TracedStep(StepKind):
    """The step traced once (per input shape) and replayed; see the module docstring.

    Batches of any other size than the first one traced (the epoch's last, smaller batch) take
    ``fallback``, the eager step, so there is one graph per run, not two. ``all_reduce``: in a
    multi-process run, sums the gradients over the ranks (one collective over a flat buffer)
    before the optimizer step.

    Before its first update the step checks itself: the model must trace, and the graph must
    give the eager step's loss and gradients on the same draws. If not, ``auto=True`` logs one
    line and trains with the eager step from then on; otherwise it raises
    :class:`UntraceableError`. Either way nothing has been trained yet.
    """

    def __init__(
        self,
        loss: nn.Module,
        optimizer: torch.optim.Optimizer,
        fallback: Callable | None = None,
        all_reduce: Callable[[Tensor], None] | None = None,
        log: Callable[[str], None] | None = None,
        auto: bool = False,
    ) -> None:
        if self.one_process and all_reduce is not None:
            raise ValueError(
                f"the {self.name} step is for one process; under torchrun use --step compiled"
            )
        self.loss, self.optimizer = loss, optimizer
        self.fallback = fallback or EagerStep(loss, optimizer)
        self.all_reduce, self.log, self.auto = all_reduce, log, auto
        self.replays = self.name  # what replays the graph ("fx" if compiling failed under auto)
        self.params: list[Tensor] = []
        self.constants: list[Tensor] = []
        self.shape: tuple | None = None
        self.graph: Callable | None = None
        self.untraceable = ""  # why the step fell back to eager for good ("" while traced)
        self.trace_seconds = 0.0

    @property
    def kind(self) -> str:
        """What the run's full batches take: this kind, or "eager" after a fall-back."""
        return "eager" if self.untraceable else self.replays

    def _finish(self, gm: torch.fx.GraphModule, x: Tensor, y: Tensor | None) -> Callable:
        """What replays the checked graph: the graph itself, compiled, or captured."""
        raise NotImplementedError

    def _agree(self, reason: str, device: torch.device) -> str:
        """Every rank falls back, or none: one collective on the first step only."""
        if self.all_reduce is None:
            return reason
        flag = torch.tensor([1.0 if reason else 0.0], device=device)
        self.all_reduce(flag)
        return reason or ("another process could not trace the step" if flag.item() else "")

    def _refuse(self, reason: str, where: str) -> None:
        place = f" in {where}" if where else ""
        message = f"the {self.name} step cannot run this model{place} ({reason})"
        if not self.auto:
            raise UntraceableError(f"{message}; train it with --step eager (step='eager')")
        self.untraceable = message
        if self.log:
            self.log(f"note: {message}; using the eager step")

    def _build(self, x: Tensor, y: Tensor | None) -> None:
        t0 = time.perf_counter()
        # The eager step runs first, so an error of the model itself surfaces as it would
        # under --step eager, not as a tracing failure. (In Pyro's default mode this first
        # run is also where Pyro's param store sets requires_grad on every parameter.)
        expected = eager_reference(self.loss, x, y, CHECK_SEED)
        self.params, self.constants = split_parameters(self.loss)
        reason = where = ""
        try:
            gm = trace_step(self.loss, x, y)
        except Exception as e:  # noqa: BLE001 - any failure to trace is reported in one line
            reason, where = one_line(e), user_frame(e)
        else:
            reason = check_against_eager(gm, self.loss, x, y, CHECK_SEED, expected)
        reason = self._agree(reason, x.device)
        if reason:
            self._refuse(reason, where)
        else:
            self.graph = self._finish(gm, x, y)
            self.shape = (tuple(x.shape), None if y is None else tuple(y.shape))
        self.trace_seconds += time.perf_counter() - t0
        if self.log and not reason:
            self.log(f"traced the training step ({self.replays}) in {self.trace_seconds:.1f} s")

    def _replay(self, x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            metrics, bad, *grads = self.graph(
                self.params, self.constants, x, *([y] if y is not None else [])
            )
        if self.all_reduce is not None:
            flat = torch._utils._flatten_dense_tensors(grads)
            self.all_reduce(flat)
            grads = torch._utils._unflatten_dense_tensors(flat, grads)
        for p, g in zip(self.params, grads, strict=True):
            p.grad = g
        self.optimizer.step()
        return metrics, bad

    def __call__(self, x: Tensor, y: Tensor | None, full: bool = True) -> tuple[Tensor, Tensor]:
        """``full``: the global batch has ``--batch-size`` images (false for an epoch's last,
        smaller one, which takes the eager fallback on every rank alike)."""
        shape = (tuple(x.shape), None if y is None else tuple(y.shape))
        if self.untraceable or not full or (self.graph is not None and shape != self.shape):
            return self.fallback(x, y)
        if self.graph is None:
            self._build(x, y)
            if self.untraceable:
                return self.fallback(x, y)
        return self._replay(x, y)


@register_step
class FXStep(TracedStep):
    """The graph replayed node by node: the same draws as the eager step (its exact
    reference, and the fallback where no compiler is available)."""

    name = "fx"

    def _finish(self, gm: torch.fx.GraphModule, x: Tensor, y: Tensor | None) -> Callable:
        return gm


@register_step
class CompiledStep(TracedStep):
    """The graph compiled by inductor; under ``auto`` a failed compile replays it instead."""

    name = "compiled"

    def _finish(self, gm: torch.fx.GraphModule, x: Tensor, y: Tensor | None) -> Callable:
        try:
            return compile_graph(
                gm, self.params, self.constants, x, *([y] if y is not None else [])
            )
        except Exception as e:  # noqa: BLE001 - no compiler here: replay the graph instead
            if not self.auto:
                raise
            if self.log:
                self.log(f"could not compile the step ({type(e).__name__}); replaying it")
            self.replays = "fx"
            return gm


@register_step
class CUDAGraphStep(TracedStep):
    """The graph and the fused Adam step captured in one CUDA graph (``cuda_graph.py``)."""

    name = "cudagraph"
    needs_cuda = True
    one_process = True  # the captured graph holds the optimizer step: no place for a collective
    capturable_optimizer = True

    def _finish(self, gm: torch.fx.GraphModule, x: Tensor, y: Tensor | None) -> Callable:
        from pyro_vae.inference.cuda_graph import CapturedStep

        return CapturedStep(gm, self.params, self.constants, self.optimizer, x, y)

    def _replay(self, x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        return self.graph(x, y)


def _no_buffer_sync() -> dict:
    """The buffers are constants (the prior's N(0, I), one-hot labels): no sync before every
    forward. torch >= 2.13 names the option forward_sync_buffers (broadcast_buffers warns)."""
    from torch.nn.parallel import DistributedDataParallel

    names = inspect.signature(DistributedDataParallel.__init__).parameters
    key = "forward_sync_buffers" if "forward_sync_buffers" in names else "broadcast_buffers"
    return {key: False}


# "auto" compiles the step on a CPU when the run has at least this many steps: compiling costs
# about 30 s the first time (5 s from inductor's cache) and saves ~3 ms a step at batch 128.
AUTO_COMPILE_MIN_STEPS = 2000


def resolve_step(
    step: str, device: torch.device, total_steps: int, world_size: int = 1
) -> type[StepKind]:
    """The step kind a run takes. "auto": the CUDA graph on a GPU (one process), the compiled
    graph otherwise, but eager on a CPU for runs too short to pay for compiling."""
    if step == "auto":
        if device.type == "cuda":
            step = "cudagraph" if world_size == 1 else "compiled"
        else:
            step = "compiled" if total_steps >= AUTO_COMPILE_MIN_STEPS else "eager"
    if step not in STEP_KINDS:
        raise ValueError(f"unknown step {step!r}; choose auto or one of {sorted(STEP_KINDS)}")
    kind = STEP_KINDS[step]
    if kind.needs_cuda and device.type != "cuda":
        raise ValueError(f"--step {step} needs a CUDA device; use --step compiled on a CPU")
    if kind.one_process and world_size > 1:
        raise ValueError(
            f"--step {step} is for one process; under torchrun use --step compiled (the "
            "gradients are all-reduced between the replayed graph and the optimizer step)"
        )
    return kind


def build_step(
    vae: VAE | UserModel,
    optimizer: torch.optim.Optimizer,
    objective: Objective,
    kind: type[StepKind] | str,
    world,  # noqa: ANN001 - runtime.distributed.World
    log: Callable[[str], None] | None = None,
    auto: bool = False,
) -> EagerStep | TracedStep:
    """The step of a run: ``kind`` from :func:`resolve_step`, ``world`` its processes.

    Several processes: the eager step runs through ``DistributedDataParallel`` (loss scaled by
    the world size, since DDP averages and the ELBO is a sum over images); a traced step sums
    the gradients with one all-reduce before the optimizer step. Either way each rank's
    gradient is the single-process gradient on the union of the ranks' shards.
    """
    kind = STEP_KINDS[kind] if isinstance(kind, str) else kind
    eager = ELBOLoss(vae, objective, loss_scale=world.size)
    if world.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        device = next(vae.parameters()).device
        wrapped = DistributedDataParallel(
            eager, device_ids=[device.index] if device.type == "cuda" else None, **_no_buffer_sync()
        )
        fallback = EagerStep(wrapped, optimizer, loss_scale=world.size)
    else:
        fallback = EagerStep(eager, optimizer)
    if kind is EagerStep:
        return fallback
    return kind(
        ELBOLoss(vae, objective),
        optimizer,
        fallback=fallback,
        all_reduce=world.all_reduce if world.size > 1 else None,
        log=log,
        auto=auto,
    )
