"""The training step, eager or traced.

``ELBOLoss`` is the VAE's objective as a torch module (Pyro's ELBO-as-module pattern): its
``forward(x, y)`` runs the Pyro guide and the replayed model and returns the loss with the
epoch's metric sums. Two steps drive it:

- :class:`EagerStep` runs Pyro every step, with Pyro's validation on: the reference. Wrapped in
  ``DistributedDataParallel`` it is the multi-process step (``distributed.py``).
- :class:`TracedStep` traces forward *and* backward once per input shape with
  ``make_fx`` into a graph of aten operations, then replays that graph every step with fresh
  random draws (the draws are graph operations), and hands the gradients to the fused Adam
  step. Pyro's messenger stack, trace building, PyroModule parameter statements and
  validation's host reads are paid once, at tracing. The graph is replayed as is (``fx``),
  compiled by inductor (``compiled``: fused C++ on a CPU, Triton on a GPU), or on CUDA
  captured with the optimizer step in a CUDA graph (``cudagraph``).

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

import pyro
import torch
from torch import Tensor, nn
from torch.fx.experimental.proxy_tensor import make_fx

from pyro_vae.inference.objectives import objective_terms
from pyro_vae.inference.tracing import compile_graph, tracing_context
from pyro_vae.models.vae import VAE

STEPS = ("eager", "fx", "compiled", "cudagraph")


class NonFiniteError(RuntimeError):
    """The loss, a gradient or a parameter became NaN or infinite during training."""


class ELBOLoss(nn.Module):
    """The negative objective of ``vae`` on a batch, as a module (what DDP wraps).

    ``objective``: "trace" (Trace_ELBO), "meanfield" (TraceMeanField_ELBO) or "iwae" (the
    importance-weighted bound L_K, K = ``num_particles``). ``forward(x, y)`` returns
    ``(loss * loss_scale, sum of -E_q log p(x|z), sum of KL)``: the loss is summed over the
    batch's images and differentiable; the two sums are the metrics' (detached).
    """

    def __init__(
        self, vae: VAE, objective: str = "trace", num_particles: int = 1, loss_scale: float = 1.0
    ) -> None:
        super().__init__()
        self.vae = vae
        self.objective = objective
        self.num_particles = num_particles
        self.loss_scale = loss_scale

    def forward(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        t = objective_terms(
            self.vae.model,
            self.vae.guide,
            x,
            y,
            objective=self.objective,
            num_particles=self.num_particles,
        )
        return t.loss * self.loss_scale, -t.log_lik.sum().detach(), t.kl.sum().detach()


def parameters_finite(module: nn.Module) -> bool:
    """True when every parameter is finite (one host read)."""
    flags = [p.detach().isfinite().all() for p in module.parameters()]
    return bool(torch.stack(flags).all()) if flags else True


class EagerStep:
    """Pyro's model and guide run every step; returns [loss, recon sum, KL sum] and a
    non-finite flag, both on the device (no host read).

    ``loss`` is an :class:`ELBOLoss`, or one wrapped in ``DistributedDataParallel`` whose
    gradient hooks average over the ranks during ``backward``; ``loss_scale`` is the factor
    the module multiplied the loss by (the world size under DDP), taken out of the metrics.
    """

    kind = "eager"

    def __init__(
        self, loss: nn.Module, optimizer: torch.optim.Optimizer, loss_scale: float = 1.0
    ) -> None:
        self.loss = loss
        self.optimizer = optimizer
        self.loss_scale = loss_scale

    def __call__(self, x: Tensor, y: Tensor | None, full: bool = True) -> tuple[Tensor, Tensor]:
        self.optimizer.zero_grad(set_to_none=True)
        loss, recon, kl = self.loss(x, y)
        loss.backward()
        self.optimizer.step()
        value = loss.detach() / self.loss_scale
        return torch.stack([value, recon, kl]), ~value.isfinite()


class UntraceableError(ValueError):
    """The model cannot run as a traced step (data-dependent Python, or a graph that does not
    reproduce the eager step); the message names the place and suggests ``--step eager``."""


def split_parameters(loss: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
    """(trainable, constant) tensors in the order the traced graph takes them: parameters
    with ``requires_grad``, then frozen parameters and buffers (inputs without a gradient)."""
    params = list(loss.parameters())
    trainable = [p for p in params if p.requires_grad]
    constant = [p for p in params if not p.requires_grad] + list(loss.buffers())
    return trainable, constant


def _state_names(loss: nn.Module) -> list[str]:
    named = list(loss.named_parameters())
    return (
        [n for n, p in named if p.requires_grad]
        + [n for n, p in named if not p.requires_grad]
        + [n for n, _ in loss.named_buffers()]
    )


def trace_step(loss: nn.Module, x: Tensor, y: Tensor | None) -> torch.fx.GraphModule:
    """The forward and backward of ``loss`` on inputs shaped like ``x``, ``y`` as one graph.

    The graph takes ``(trainable, constant, x[, y])`` (:func:`split_parameters`) and returns
    ``(metrics [3], bad [] bool, *grads)``: ``metrics`` = [loss, recon sum, KL sum], ``bad``
    true when the loss or a gradient is not finite, one gradient per trainable parameter.
    Traced with fake tensors: nothing is computed and any data-dependent Python ``if`` or host
    read fails here, at tracing, rather than leaving a sync in the graph. Tensors the model
    reaches outside its parameters and buffers (a user's distribution, a closure) are
    constants of the graph. Replay it under ``torch.no_grad()``: it computes its gradients
    itself, and with grad mode on every replay would also record an autograd graph.
    """
    names = _state_names(loss)
    trainable, constant = split_parameters(loss)
    conditional = y is not None

    def step(params: list[Tensor], constants: list[Tensor], x: Tensor, *y: Tensor):
        state = dict(zip(names, [*params, *constants], strict=True))
        with torch.enable_grad():
            value, recon, kl = torch.func.functional_call(loss, state, (x, y[0] if y else None))
            grads = torch.autograd.grad(value, params, allow_unused=True) if params else ()
        grads = [
            torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)
        ]
        finite = torch.stack([value.isfinite(), *(g.isfinite().all() for g in grads)]).all()
        return (torch.stack([value.detach(), recon, kl]), ~finite, *grads)

    params = [p.detach().requires_grad_(True) for p in trainable]
    constants = [c.detach() for c in constant]
    inputs = (params, constants, x, *([y] if conditional else []))
    with tracing_context():
        return make_fx(step, tracing_mode="fake", _allow_non_fake_inputs=True)(*inputs)


def _user_frame(error: BaseException) -> str:
    """Where in the user's code tracing failed: the innermost frame outside torch, Pyro and
    this package, as ``function (file:line)``; "" when the failure is in library code."""
    import os
    import traceback

    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # pyro_vae/
    skip = tuple(os.path.dirname(path) + os.sep for path in (torch.__file__, pyro.__file__)) + (
        package + os.sep,
    )
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        if not frame.filename.startswith(skip) and not frame.filename.startswith("<"):
            return f"{frame.name} ({os.path.basename(frame.filename)}:{frame.lineno})"
    return ""


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:200]


# The random state of the build-time check (forked: it draws nothing from the run's stream).
CHECK_SEED = 20240511


def _differs(a: Tensor, b: Tensor) -> bool:
    """More than float rounding apart (the graph runs the eager step's own aten ops)."""
    scale = b.detach().abs().max().item() if b.numel() else 0.0
    return not torch.allclose(a, b, rtol=1e-3, atol=1e-5 * (scale + 1e-6), equal_nan=True)


def _devices(x: Tensor) -> list[int]:
    return [x.device.index or 0] if x.device.type == "cuda" else []


def eager_reference(
    loss: nn.Module, x: Tensor, y: Tensor | None, seed: int
) -> tuple[Tensor, list[Tensor]]:
    """The eager loss metrics and gradients from ``seed`` (on a forked RNG: the run's stream
    is untouched). Runs the model as the eager step does, errors and all."""
    with torch.random.fork_rng(devices=_devices(x)):
        torch.manual_seed(seed)
        value, recon, kl = loss(x, y)
        # After the forward: in Pyro's default mode the param store sets requires_grad then.
        trainable, _ = split_parameters(loss)
        grads = torch.autograd.grad(value, trainable, allow_unused=True) if trainable else ()
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(trainable, grads, strict=True)]
    return torch.stack([value.detach(), recon, kl]), grads


def check_against_eager(
    gm: Callable, loss: nn.Module, x: Tensor, y: Tensor | None, seed: int, expected: tuple
) -> str:
    """Runs the traced graph from ``seed``; returns "" when its loss and gradients are
    ``expected`` (:func:`eager_reference` from the same seed), else what differs. This catches
    what tracing cannot refuse: a value the user's code computed in Python and the graph froze
    (Python's ``random``, numpy), which would train with wrong gradients."""
    trainable, constant = split_parameters(loss)
    with torch.random.fork_rng(devices=_devices(x)), torch.no_grad():
        torch.manual_seed(seed)
        got, _, *grads = gm(trainable, constant, x, *([y] if y is not None else []))
    metrics, expected_grads = expected
    if _differs(got, metrics):
        return f"traced loss {got[0].item():.6g}, eager {metrics[0].item():.6g} on the same draws"
    if any(_differs(g, e) for g, e in zip(grads, expected_grads, strict=True)):
        return "its traced gradients differ from the eager step's on the same draws"
    return ""


class TracedStep:
    """The step traced once (per input shape) and replayed; see the module docstring.

    ``backend``: "fx" (replay the graph), "compiled" (inductor) or "cudagraph" (CUDA only:
    graph and fused Adam replayed from one CUDA graph capture). Batches of any other size than
    the first one traced (the epoch's last, smaller batch) take ``fallback``, the eager step,
    so there is one graph per run, not two. ``all_reduce``: in a multi-process run, sums the
    gradients over the ranks (one collective over a flat buffer) before the optimizer step.

    Before its first update the step checks itself: the model must trace, and the graph must
    give the eager step's loss and gradients on the same draws. If not, ``auto=True`` logs one
    line and trains with the eager step from then on; otherwise it raises
    :class:`UntraceableError`. Either way nothing has been trained yet.
    """

    def __init__(
        self,
        loss: nn.Module,
        optimizer: torch.optim.Optimizer,
        backend: str = "compiled",
        fallback: Callable | None = None,
        all_reduce: Callable[[Tensor], None] | None = None,
        log: Callable[[str], None] | None = None,
        auto: bool = False,
    ) -> None:
        if backend not in ("fx", "compiled", "cudagraph"):
            raise ValueError(f"unknown traced backend {backend!r}; use fx, compiled or cudagraph")
        if backend == "cudagraph" and all_reduce is not None:
            # The captured graph holds the optimizer step: there is no place for the collective.
            raise ValueError(
                "the cudagraph step is for one process; under torchrun use --step compiled"
            )
        self.loss = loss
        self.optimizer = optimizer
        self.backend = backend
        self.fallback = fallback or EagerStep(loss, optimizer)
        self.auto = auto
        self.all_reduce = all_reduce
        self.log = log
        self.params: list[Tensor] = []
        self.constants: list[Tensor] = []
        self.shape: tuple | None = None
        self.graph: Callable | None = None
        self.untraceable = ""  # why the step fell back to eager for good ("" while traced)
        self.trace_seconds = 0.0

    @property
    def kind(self) -> str:
        """What the run's full batches take: the backend, or "eager" after a fall-back."""
        return "eager" if self.untraceable else self.backend

    def _agree(self, reason: str) -> str:
        """Every rank falls back, or none: one collective on the first step only."""
        if self.all_reduce is None:
            return reason
        flag = torch.tensor([1.0 if reason else 0.0], device=self.constants_device)
        self.all_reduce(flag)
        return reason or ("another process could not trace the step" if flag.item() else "")

    def _build(self, x: Tensor, y: Tensor | None) -> None:
        t0 = time.perf_counter()
        self.constants_device = x.device
        # The eager step runs first, so an error of the model itself surfaces as it would
        # under --step eager, not as a tracing failure. (In Pyro's default mode this first
        # run is also where Pyro's param store sets requires_grad on every parameter.)
        seed = CHECK_SEED
        expected = eager_reference(self.loss, x, y, seed)
        self.params, self.constants = split_parameters(self.loss)
        reason = where = ""
        try:
            gm = trace_step(self.loss, x, y)
        except Exception as e:  # noqa: BLE001 - any failure to trace is reported in one line
            reason, where = _one_line(e), _user_frame(e)
        else:
            reason = check_against_eager(gm, self.loss, x, y, seed, expected)
        reason = self._agree(reason)
        if reason:
            place = f" in {where}" if where else ""
            message = f"the {self.backend} step cannot run this model{place} ({reason})"
            if not self.auto:
                raise UntraceableError(f"{message}; train it with --step eager (step='eager')")
            self.untraceable = message
            if self.log:
                self.log(f"note: {message}; using the eager step")
            self.trace_seconds += time.perf_counter() - t0
            return
        if self.backend == "fx":
            self.graph = gm
        elif self.backend == "compiled":
            try:
                inputs = (x, *([y] if y is not None else []))
                self.graph = compile_graph(gm, self.params, self.constants, *inputs)
            except Exception as e:  # noqa: BLE001 - no compiler here: replay the graph instead
                if not self.auto:
                    raise
                if self.log:
                    self.log(f"could not compile the step ({type(e).__name__}); replaying it")
                self.backend, self.graph = "fx", gm
        else:
            from pyro_vae.inference.cuda_graph import CapturedStep

            self.graph = CapturedStep(gm, self.params, self.constants, self.optimizer, x, y)
        self.shape = (tuple(x.shape), None if y is None else tuple(y.shape))
        self.trace_seconds += time.perf_counter() - t0
        if self.log:
            self.log(f"traced the training step ({self.backend}) in {self.trace_seconds:.1f} s")

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
        if self.backend == "cudagraph":
            return self.graph(x, y)
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


def resolve_step(step: str, device: torch.device, total_steps: int, world_size: int = 1) -> str:
    """The step a run takes. "auto": the CUDA graph on a GPU (one process), the compiled graph
    otherwise, but eager on a CPU for runs too short to pay for compiling."""
    if step == "auto":
        if device.type == "cuda":
            return "cudagraph" if world_size == 1 else "compiled"
        return "compiled" if total_steps >= AUTO_COMPILE_MIN_STEPS else "eager"
    if step == "cudagraph" and device.type != "cuda":
        raise ValueError("--step cudagraph needs a CUDA device; use --step compiled on a CPU")
    if step == "cudagraph" and world_size > 1:
        raise ValueError(
            "--step cudagraph is for one process; under torchrun use --step compiled (the "
            "gradients are all-reduced between the replayed graph and the optimizer step)"
        )
    return step


def build_step(
    vae: VAE,
    optimizer: torch.optim.Optimizer,
    config,  # noqa: ANN001 - TrainConfig (config.py imports nothing from here)
    kind: str,
    world,  # noqa: ANN001 - distributed.World
    log: Callable[[str], None] | None = None,
    auto: bool = False,
) -> Callable:
    """The step of a run: ``kind`` from :func:`resolve_step`, ``world`` its processes.

    Several processes: the eager step runs through ``DistributedDataParallel`` (loss scaled by
    the world size, since DDP averages and the ELBO is a sum over images); a traced step sums
    the gradients with one all-reduce before the optimizer step. Either way each rank's
    gradient is the single-process gradient on the union of the ranks' shards.
    """
    eager = ELBOLoss(vae, config.elbo, config.num_particles, loss_scale=world.size)
    if world.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        device = next(vae.parameters()).device
        wrapped = DistributedDataParallel(
            eager, device_ids=[device.index] if device.type == "cuda" else None, **_no_buffer_sync()
        )
        fallback = EagerStep(wrapped, optimizer, loss_scale=world.size)
    else:
        fallback = EagerStep(eager, optimizer)
    if kind == "eager":
        return fallback
    return TracedStep(
        ELBOLoss(vae, config.elbo, config.num_particles),
        optimizer,
        backend=kind,
        fallback=fallback,
        all_reduce=world.all_reduce if world.size > 1 else None,
        log=log,
        auto=auto,
    )
