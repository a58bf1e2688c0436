"""How a Pyro program becomes a graph that replays: the shared machinery of the traced training
step (``step.py``) and the traced importance-sampled log-likelihood (``loglik.py``).

A module's forward runs once under ``make_fx`` with fake tensors, inside ``tracing_context``
(validation off, a scratch param store, a forked RNG), and becomes an FX graph of aten
operations taking the parameters, buffers and inputs; random draws are graph operations, so
every replay draws afresh. ``compile_graph`` hands the graph to inductor without leaving
torch.compile's process-wide side effect on distribution validation behind.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pyro
import torch
from torch import Tensor, nn
from torch.fx.experimental.proxy_tensor import make_fx


@contextlib.contextmanager
def tracing_context() -> Iterator[None]:
    """What tracing needs, scoped to the block so the user's session is untouched:

    - validation off (its checks are host reads in Python ``if`` s);
    - an empty, temporary param store: in Pyro's default mode a PyroModule swaps in a stored
      tensor of the same name, which would replace the traced parameter with a constant;
    - torch's RNG forked, so tracing draws nothing from the run's random stream (a resumed run
      then draws exactly what an uninterrupted one does).
    """
    with (
        pyro.validation_enabled(False),
        pyro.get_param_store().scope(),
        torch.random.fork_rng(
            devices=list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        ),
    ):
        yield


@contextlib.contextmanager
def keep_validation_settings() -> Iterator[None]:
    """torch.compile's first use switches torch.distributions validation off for the whole
    process (torch._dynamo's TorchPatcher); this puts back what the user had."""
    torch_default = torch.distributions.Distribution._validate_args
    try:
        yield
    finally:
        torch.distributions.Distribution.set_default_validate_args(torch_default)


def compile_graph(
    gm: torch.fx.GraphModule, params: list[Tensor], buffers: list[Tensor], *inputs: Tensor
) -> Callable:
    """The traced graph compiled by inductor, compiled now (on a forked RNG, so no draw of the
    run's is spent) and the first real call is then a plain call.

    Compiled and called under ``torch.no_grad()``: the graph computes whatever gradients it
    needs itself. With grad mode on, inputs that require grad (the parameters) would make
    AOTAutograd compile a backward of the graph too and record autograd state on every call,
    costing time and keeping memory alive for as long as an output is held.
    """
    x = inputs[0]
    with keep_validation_settings(), torch.no_grad():
        compiled = torch.compile(gm, fullgraph=True, dynamic=False)
        devices = [x.device.index or 0] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            compiled(params, buffers, *inputs)

    def run(*args: object) -> object:
        with torch.no_grad():
            return compiled(*args)

    return run


def binder(module: nn.Module) -> Callable[[list[Tensor], list[Tensor]], dict[str, Tensor]]:
    """(params, buffers) lists in ``module``'s order -> the state dict functional_call takes."""
    names = [n for n, _ in module.named_parameters()]
    buffer_names = [n for n, _ in module.named_buffers()]

    def bind(params: list[Tensor], buffers: list[Tensor]) -> dict[str, Tensor]:
        return {
            **dict(zip(names, params, strict=True)),
            **dict(zip(buffer_names, buffers, strict=True)),
        }

    return bind


def trace_forward(module: nn.Module, *inputs: Tensor) -> torch.fx.GraphModule:
    """``module(*inputs)`` without gradients as a graph of ``(params, buffers, *inputs)``.

    Tensors the module reaches outside its parameters and buffers (a user's distribution, a
    closure) become constants of the graph."""
    bind = binder(module)

    def forward(params: list[Tensor], buffers: list[Tensor], *args: Tensor):
        state = bind(params, buffers)
        with torch.no_grad():
            return torch.func.functional_call(module, state, args)

    # requires_grad as the real parameters have it: pyro.module warns about (and skips) others.
    params = [p.detach().requires_grad_(p.requires_grad) for p in module.parameters()]
    with tracing_context():
        return make_fx(forward, tracing_mode="fake", _allow_non_fake_inputs=True)(
            params, list(module.buffers()), *inputs
        )


class ReplayedForward:
    """``module``'s forward traced once for one input shape and replayed (``fx``) or compiled
    (``compiled``); inputs of any other shape run the module eagerly, Pyro and all."""

    def __init__(self, module: nn.Module, backend: str = "compiled") -> None:
        if backend not in ("fx", "compiled"):
            raise ValueError(f"unknown backend {backend!r}; use fx or compiled")
        self.module, self.backend = module, backend
        self.shapes: tuple | None = None
        self.graph: Callable | None = None

    def __call__(self, *inputs: Tensor) -> Tensor:
        shapes = tuple(tuple(t.shape) for t in inputs)
        params, buffers = list(self.module.parameters()), list(self.module.buffers())
        if self.graph is None:
            gm = trace_forward(self.module, *inputs)
            compiled = self.backend == "compiled"
            self.graph = compile_graph(gm, params, buffers, *inputs) if compiled else gm
            self.shapes = shapes
        with torch.no_grad():
            if shapes != self.shapes:
                return self.module(*inputs)
            return self.graph(params, buffers, *inputs)
