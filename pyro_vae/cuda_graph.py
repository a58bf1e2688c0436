"""The traced training step and the fused Adam step captured together in one CUDA graph.

After capture a step is: copy the batch into the static input buffers, replay the graph. The
random draws are graph-safe (PyTorch's CUDA generator advances its Philox offset on every
replay), the optimizer must be ``torch.optim.Adam(..., capturable=True)`` so its step count
lives on the device, and nothing reads back to the host. Capture needs a few warm-up steps on
a side stream (allocator and lazy initialization); the parameters and optimizer state are
restored after them, and its random draws come from a forked generator, so the warm-up leaves
no trace in training.
"""

from __future__ import annotations

import torch
from torch import Tensor

WARMUP_STEPS = 3


class CapturedStep:
    """``step(x, y) -> (metrics [3], bad [])``: the replayed CUDA graph of one training step.

    ``graph_module`` is ``step.trace_step``'s graph; ``x``/``y`` are example batches whose
    shapes every later call must have.
    """

    def __init__(
        self,
        graph_module: torch.fx.GraphModule,
        params: list[Tensor],
        buffers: list[Tensor],
        optimizer: torch.optim.Optimizer,
        x: Tensor,
        y: Tensor | None,
    ) -> None:
        if x.device.type != "cuda":
            raise ValueError("the cudagraph step needs CUDA tensors; use --step compiled on a CPU")
        for group in optimizer.param_groups:
            if not group.get("capturable", False):
                raise ValueError("the cudagraph step needs torch.optim.Adam(capturable=True)")
        self.gm = graph_module
        self.params = params
        self.buffers = buffers
        self.optimizer = optimizer
        self.static_x = x.clone()
        self.static_y = None if y is None else y.clone()
        saved = _snapshot(params, optimizer)
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        # The warm-up's draws come from a forked generator: a run that builds the graph (the
        # first epoch, or the first after a resume) then draws what an uninterrupted run draws.
        index = x.device.index if x.device.index is not None else torch.cuda.current_device()
        with torch.random.fork_rng(devices=[index], device_type="cuda"), torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self._step()
        torch.cuda.current_stream(x.device).wait_stream(side)
        _restore(saved, params, optimizer)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.metrics, self.bad = self._step()

    def _step(self) -> tuple[Tensor, Tensor]:
        args = [self.static_x] + ([self.static_y] if self.static_y is not None else [])
        metrics, bad, *grads = self.gm(self.params, self.buffers, *args)
        for p, g in zip(self.params, grads, strict=True):
            p.grad = g
        self.optimizer.step()
        return metrics, bad

    def __call__(self, x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        self.static_x.copy_(x)
        if self.static_y is not None:
            self.static_y.copy_(y)
        self.graph.replay()
        return self.metrics, self.bad


def _snapshot(params: list[Tensor], optimizer: torch.optim.Optimizer) -> dict:
    with torch.no_grad():
        return {
            "params": [p.detach().clone() for p in params],
            "state": {
                id(p): {k: v.clone() for k, v in optimizer.state[p].items() if torch.is_tensor(v)}
                for p in params
                if p in optimizer.state
            },
        }


def _restore(saved: dict, params: list[Tensor], optimizer: torch.optim.Optimizer) -> None:
    """Puts values back into the same tensors (the graph holds their addresses); optimizer
    state the warm-up created is reset to a fresh optimizer's (zeros, step 0)."""
    with torch.no_grad():
        for p, value in zip(params, saved["params"], strict=True):
            p.copy_(value)
        for p in params:
            before = saved["state"].get(id(p), {})
            for k, v in optimizer.state.get(p, {}).items():
                if torch.is_tensor(v) and k in before:
                    v.copy_(before[k])
                elif torch.is_tensor(v):
                    v.zero_()
