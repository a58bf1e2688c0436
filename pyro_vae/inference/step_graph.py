"""The training step as one graph: forward and backward of the loss traced together with
``make_fx``, and the check, before the graph trains anything, that it is the eager step.

``trace_step`` gives the graph ``steps.TracedStep`` replays; ``eager_reference`` and
``check_against_eager`` run the eager loss and the graph from one random state and compare
loss and gradients; what cannot be traced, or traces into something else, is an
:class:`UntraceableError` whose one line names the user's function (``user_frame``).
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable

import pyro
import torch
from torch import Tensor, nn
from torch.fx.experimental.proxy_tensor import make_fx

from pyro_vae.inference.tracing import tracing_context


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
    ``(metrics, bad [] bool, *grads)``: ``metrics`` = [loss, recon sum, KL sum, ...] (the
    objective's ``stat_names``), ``bad``
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
            value, *stats = torch.func.functional_call(loss, state, (x, y[0] if y else None))
            grads = torch.autograd.grad(value, params, allow_unused=True) if params else ()
        grads = [
            torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)
        ]
        finite = torch.stack([value.isfinite(), *(g.isfinite().all() for g in grads)]).all()
        return (torch.stack([value.detach(), *stats]), ~finite, *grads)

    params = [p.detach().requires_grad_(True) for p in trainable]
    constants = [c.detach() for c in constant]
    inputs = (params, constants, x, *([y] if conditional else []))
    with tracing_context():
        return make_fx(step, tracing_mode="fake", _allow_non_fake_inputs=True)(*inputs)


def user_frame(error: BaseException) -> str:
    """Where in the user's code tracing failed: the innermost frame outside torch, Pyro and
    this package, as ``function (file:line)``; "" when the failure is in library code."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # pyro_vae/
    skip = tuple(os.path.dirname(path) + os.sep for path in (torch.__file__, pyro.__file__)) + (
        package + os.sep,
    )
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        if not frame.filename.startswith(skip) and not frame.filename.startswith("<"):
            return f"{frame.name} ({os.path.basename(frame.filename)}:{frame.lineno})"
    return ""


def one_line(error: BaseException) -> str:
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
        value, *stats = loss(x, y)
        # After the forward: in Pyro's default mode the param store sets requires_grad then.
        trainable, _ = split_parameters(loss)
        grads = torch.autograd.grad(value, trainable, allow_unused=True) if trainable else ()
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(trainable, grads, strict=True)]
    return torch.stack([value.detach(), *stats]), grads


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
