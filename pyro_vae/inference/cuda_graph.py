"""The traced training step and the fused Adam step captured together in one CUDA graph.

After capture a step is: copy the batch into the static input buffers, replay the graph. The
random draws are graph-safe (PyTorch's CUDA generator advances its Philox offset on every
replay), the optimizer must be ``torch.optim.Adam(..., capturable=True)`` so its step count
lives on the device, and nothing reads back to the host. Capture needs a few warm-up steps on
a side stream (allocator and lazy initialization); the parameters and optimizer state are
restored after them, and its random draws come from a forked generator, so the warm-up leaves
no trace in training.

What the graph reads must live in device memory it keeps: the learning rate is a device tensor
in each param group (a schedule's update lands in it: ``fill_`` when a scheduler finds a tensor,
or a float that the next call copies in), the step counts are device tensors, and the optimizer
is made capturable here, whatever the checkpoint it was loaded from said.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

WARMUP_STEPS = 3
# torch warns when a capturable optimizer steps outside a capture: the warm-up does, and so
# does an epoch's last, smaller batch (the eager fallback). Both are meant.
UNCAPTURED_WARNING = "This instance was constructed with capturable=True"


def make_capturable(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Sets ``capturable`` on every param group (``load_state_dict`` puts back the saved value),
    puts each group's learning rate in a device tensor and every step count on the device, and
    silences torch's warning about capturable steps outside a capture (the fallback's)."""
    for group in optimizer.param_groups:
        group["capturable"] = True
        if not torch.is_tensor(group["lr"]) or group["lr"].device != device:
            group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if "step" in state:
                state["step"] = state["step"].to(device=p.device, dtype=torch.float32)
    optimizer._warned_capturable_if_run_uncaptured = True


class CapturedStep:
    """``step(x, y) -> (metrics, bad [])``: the replayed CUDA graph of one training step.

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
        self.device = x.device
        with torch.cuda.device(x.device):  # capture on cuda:N runs on cuda:N's streams
            self._capture(graph_module, params, buffers, optimizer, x, y)

    def _capture(self, graph_module, params, buffers, optimizer, x, y) -> None:  # noqa: ANN001
        make_capturable(optimizer, x.device)
        self.lrs = [group["lr"] for group in optimizer.param_groups]
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
        with (
            torch.random.fork_rng(devices=[index], device_type="cuda"),
            torch.cuda.stream(side),
            warnings.catch_warnings(),
        ):
            warnings.filterwarnings("ignore", message=UNCAPTURED_WARNING)
            for _ in range(WARMUP_STEPS):
                self._step()
        torch.cuda.current_stream(x.device).wait_stream(side)
        _restore(saved, params, optimizer)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.metrics, self.bad = self._step()

    def _step(self) -> tuple[Tensor, Tensor]:
        args = [self.static_x] + ([self.static_y] if self.static_y is not None else [])
        with torch.no_grad():  # the graph computes its own gradients: no autograd recording
            metrics, bad, *grads = self.gm(self.params, self.buffers, *args)
        for p, g in zip(self.params, grads, strict=True):
            p.grad = g
        self.optimizer.step()
        return metrics, bad

    def __call__(self, x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        for group, lr in zip(self.optimizer.param_groups, self.lrs, strict=True):
            if group["lr"] is not lr:  # a float put there (by a user, or an old scheduler)
                lr.fill_(float(group["lr"]))
                group["lr"] = lr
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
