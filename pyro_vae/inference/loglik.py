"""The importance-sampled log-likelihood log p(x) (log p(x | y) for the conditional VAE), per image.

With z_1..z_K drawn from the guide q(z | x), the importance weights w_k = p(x, z_k) / q(z_k | x)
give, for every image separately::

    log p(x) ~= logsumexp_k [log p(x, z_k) - log q(z_k | x)] - log K

This is also the importance-weighted bound L_K (Burda et al. 2016): E[estimate] = L_K <= log p(x),
L_1 is the ELBO, and L_K rises to log p(x) as K grows. (Pyro's ``vectorized_importance_weights``
sums the log-weights over the data plate, i.e. weights whole batches, so it is not this.)

The K samples run in chunks inside an outer plate, like the ELBO's vectorized particles, so memory
is one chunk of [chunk, B, x_dim] decoder outputs whatever K is. Every site's log-density comes
from the Pyro traces, so any prior, likelihood or label input the model has is covered.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from pyro_vae.inference.objectives import walk
from pyro_vae.inference.tracing import ReplayedForward
from pyro_vae.inference.units import data_label, in_units
from pyro_vae.models.user_model import UserModel
from pyro_vae.models.vae import VAE, labels_for

SAMPLE_PLATE = "importance_samples"
# Decoder-output elements per chunk when chunk_size is not given. On a CPU a chunk that stays
# in cache is fastest: K = 2000 on 100 images (hidden 400, 2 cores) took 2.5 s at 2**25,
# 1.9 s at 2**22, 1.5 s at 2**20 and 3.1 s at 2**18, where Pyro's cost per traced call wins.
# On a GPU a big chunk amortizes that cost (2**26 float32 = 256 MiB per tensor; a guess, not
# measured: no GPU on the machine this was written on).
CHUNK_ELEMENTS = {"cpu": 2**20, "cuda": 2**26}


def auto_chunk_size(
    num_samples: int, batch_size: int, width: int, device: torch.device | str = "cpu"
) -> int:
    """Samples per chunk so that one chunk's [chunk, B, width] tensor stays near the budget."""
    budget = CHUNK_ELEMENTS.get(torch.device(device).type, CHUNK_ELEMENTS["cpu"])
    return max(1, min(num_samples, budget // max(1, batch_size * width)))


def sample_width(vae: VAE | UserModel) -> int:
    """The widest per-sample, per-image tensor of the model's traces (``vae.sample_width()``:
    the decoder's output, a hidden or a latent layer)."""
    return vae.sample_width()


def log_weights_chunk(model: Callable, guide: Callable, *args, num_samples: int) -> Tensor:
    """log p(x, z_k) - log q(z_k | x) for k = 1..num_samples, one call: [num_samples, B].

    Guide and model run inside a plate of ``num_samples`` at dim -2 (left of the data plate at
    -1), through the objectives' own trace walk (``objectives.walk``): each site's
    log-density is kept per image, so the data plate is never summed over, and scales (a KL
    weight) are left out: this is the model's likelihood, not a training objective.
    """
    t = walk(
        model,
        guide,
        *args,
        num_particles=num_samples,
        need_rsample=False,
        plate=SAMPLE_PLATE,
        always_plate=True,
    )
    return t.raw_log_w


def log_weights(
    model: Callable, guide: Callable, *args, num_samples: int, chunk_size: int | None = None
) -> Tensor:
    """All K log importance weights of a batch: [num_samples, B]. Memory grows with K; for
    large K and many images use :func:`log_marginal`, which keeps only a [B] running sum."""
    chunk = chunk_size or num_samples
    parts = [
        log_weights_chunk(model, guide, *args, num_samples=min(chunk, num_samples - start))
        for start in range(0, num_samples, chunk)
    ]
    return torch.cat(parts, dim=0)


def log_marginal(
    model: Callable,
    guide: Callable,
    *args,
    num_samples: int,
    chunk_size: int | None = None,
    full_chunk: Callable[..., Tensor] | None = None,
) -> Tensor:
    """log p(x) (or log p(x | y)) per image, importance-sampled with K = ``num_samples``: [B].

    Chunked over K: logsumexp over all K is the logsumexp of the per-chunk logsumexps, so
    only a [num_chunks, B] tensor outlives each chunk. ``full_chunk(*args)``, when given,
    computes a chunk of ``chunk_size`` (a replayed graph of it, say); a last, smaller chunk
    runs through Pyro as usual.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    chunk = chunk_size or num_samples
    if chunk < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk}")
    partial = []
    for start in range(0, num_samples, chunk):
        n = min(chunk, num_samples - start)
        if full_chunk is not None and n == chunk:
            partial.append(full_chunk(*args))
        else:
            partial.append(log_weights_chunk(model, guide, *args, num_samples=n).logsumexp(0))
    return torch.stack(partial).logsumexp(0) - math.log(num_samples)


class ChunkLogSumExp(nn.Module):
    """logsumexp over ``num_samples`` log-weights of each image, [B]: one chunk of
    :func:`log_marginal` as a module, so it can be traced and replayed (``tracing.py``)."""

    def __init__(self, vae: VAE | UserModel, num_samples: int) -> None:
        super().__init__()
        self.vae = vae
        self.num_samples = num_samples

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        lw = log_weights_chunk(self.vae.model, self.vae.guide, x, y, num_samples=self.num_samples)
        return lw.logsumexp(0)


def iw_bound(log_w: Tensor, k: int) -> Tensor:
    """The importance-weighted bound L_k per image from K >= k log-weights [K, B]: [B].

    The K draws are cut into K // k independent groups of k; the mean over groups of
    logmeanexp is an unbiased estimate of L_k with less variance than one group alone.
    """
    total = log_w.shape[0]
    if not 1 <= k <= total:
        raise ValueError(f"k must lie in [1, {total}] (the number of log-weights), got {k}")
    groups = total // k
    g = log_w[: groups * k].reshape(groups, k, -1)
    return (g.logsumexp(1) - math.log(k)).mean(0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate_log_likelihood(
    vae: VAE | UserModel,
    batches: Iterable[tuple[Tensor, Tensor]],
    num_samples: int = 5000,
    chunk_size: int | None = None,
    *,
    data_mode: str | None = None,
    all_reduce: Callable[[Tensor], Tensor] | None = None,
    step: str = "eager",
) -> dict:
    """Test NLL = -log p(x) (nats per image, mean over ``batches``), K = ``num_samples``.

    ``step``: "eager" runs the Pyro model and guide for every chunk of samples; "fx" or
    "compiled" trace one chunk once and replay it (``tracing.ReplayedForward``), which pays
    when K is large: K = 5000 is hundreds of chunks per batch.

    Returns the mean NLL, its standard error over images, the number of images and the seconds
    taken (device synchronized). For the conditional VAE the value is -log p(x | y), for the
    semi-supervised VAE on labelled images -log p(x, y) (``joint``). With the
    data mode ``data_mode`` the batches were made with, the units fields (``units.in_units``)
    say which data the NLL is about and give it in nats per image and bits per dimension.
    ``all_reduce``: in a multi-process run, sums the ranks' sums (each rank scores its own
    part of the test set) before the one host read.
    """
    width = sample_width(vae)
    device = next(vae.parameters()).device
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    _sync(device)
    t0 = time.perf_counter()
    replayed: dict[int, ReplayedForward] = {}
    for x, y in batches:
        chunk = chunk_size or auto_chunk_size(num_samples, x.shape[0], width, x.device)
        labels = labels_for(vae, y)
        full_chunk = None
        if step != "eager" and num_samples >= 2 * chunk:
            if chunk not in replayed:
                replayed[chunk] = ReplayedForward(ChunkLogSumExp(vae, chunk), step)
            full_chunk = replayed[chunk]
        args = (x,) if labels is None else (x, labels)
        lp = log_marginal(
            vae.model,
            vae.guide,
            *args,
            num_samples=num_samples,
            chunk_size=chunk,
            full_chunk=full_chunk,
        )
        lp = lp.double()
        sums += torch.stack([lp.sum(), lp.square().sum(), torch.tensor(lp.numel(), device=device)])
    if all_reduce is not None:
        all_reduce(sums)
    total, total_sq, n = sums.tolist()
    n = int(n)
    if not n:
        raise ValueError("no data to evaluate")
    _sync(device)
    seconds = time.perf_counter() - t0
    mean = total / n
    var = max(total_sq / n - mean * mean, 0.0) * n / max(n - 1, 1)
    std_error = math.sqrt(var / n)
    return {
        "neg_log_likelihood": -mean,
        "std_error": std_error,
        "num_samples": num_samples,
        "num_images": n,
        "conditional": bool(vae.config.num_classes),
        "joint": vae.semi_supervised,  # the model holds p(y): -log p(x, y) of labelled images
        "proposal": "guide q(z | x)",
        "seconds": seconds,
        **in_units(-mean, vae.config.x_dim, data_label(data_mode, vae.likelihood), std_error),
    }
