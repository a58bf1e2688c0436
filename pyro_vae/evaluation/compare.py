"""Trace_ELBO against TraceMeanField_ELBO on one trained VAE: bias, variance, gradient noise.

Both estimators are unbiased for the same ELBO; TraceMeanField_ELBO replaces the Monte Carlo
KL term log q(z) - log p(z) by its closed form where one is registered (a Normal prior), so it
should have less variance, and so should the encoder's gradient. This module measures:

1. the mean test ELBO and its standard deviation over R repeated evaluations;
2. the per-image variance of each estimator (one particle), averaged over images;
3. the variance of the gradient with respect to the encoder and the decoder parameters on a
   fixed minibatch: trace of the covariance across repeated gradients, and the mean
   signal-to-noise ratio |E g| / std g over coordinates, at each number of particles;
4. the importance-weighted bound L_K for several K (``loglik``), from one set of K_max draws.

All values are in nats per image; ELBO values are reported as -ELBO (lower is better).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from pyro_vae.data.images import batches
from pyro_vae.evaluation.elbo import ESTIMATORS
from pyro_vae.inference.loglik import auto_chunk_size, iw_bound, log_weights, sample_width
from pyro_vae.inference.objectives import make_objective
from pyro_vae.models.vae import VAE, labels_for

ELBOS = ESTIMATORS  # Trace_ELBO against TraceMeanField_ELBO


@torch.no_grad()
def repeated_elbos(
    vae: VAE, x: Tensor, y: Tensor, elbo: str, repeats: int, batch_size: int = 1000
) -> Tensor:
    """Per-image ELBO (one particle) from ``repeats`` independent evaluations: [repeats, N].

    x: [N, x_dim] test images, y: [N] labels (used only by a conditional VAE).
    """
    estimator = make_objective(elbo)
    rows = []
    for _ in range(repeats):
        parts = []
        for xb, yb in batches(x, y, batch_size):
            t = estimator.terms(vae.model, vae.guide, xb, labels_for(vae, yb))
            parts.append(t.log_lik - t.kl)
        rows.append(torch.cat(parts))
    return torch.stack(rows).double()


def elbo_summary(values: Tensor) -> dict:
    """Statistics of [R, N] per-image ELBO draws, reported as -ELBO in nats per image."""
    per_eval = -values.mean(1)  # [R]: the test -ELBO each evaluation would report
    r, n = values.shape
    return {
        "neg_elbo": per_eval.mean().item(),
        "std_over_evals": per_eval.std().item() if r > 1 else float("nan"),
        # Mean over images of each image's variance across the R draws.
        "per_image_var": values.var(0).mean().item() if r > 1 else float("nan"),
        # Standard error of neg_elbo from all R*N draws, for comparing the two estimators.
        "std_error": (values.var(0).mean() / (r * n)).sqrt().item() if r > 1 else float("nan"),
        "repeats": r,
        "num_images": n,
    }


def _flat_grads(grads: Sequence[Tensor | None], params: Sequence[Tensor]) -> Tensor:
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).reshape(-1)
            for g, p in zip(grads, params, strict=True)
        ]
    )


def gradient_variance(
    vae: VAE, x: Tensor, y: Tensor, elbo: str, num_particles: int, repeats: int
) -> dict:
    """Noise of the gradient of the per-image -ELBO on one fixed minibatch x [B, x_dim].

    For the encoder (guide) and the decoder parameters (the generative networks: the decoder
    and, for stacked latents, p(z_l | z_l+1)) separately: the trace of the covariance
    of ``repeats`` independent gradients (sum of per-coordinate variances) and the mean over
    coordinates of |mean| / std. Gradients come from ``torch.autograd.grad``, so the model's
    ``.grad`` fields are left alone.
    """
    if repeats < 2:
        raise ValueError(f"gradient variance needs at least 2 repeats, got {repeats}")
    groups = {
        "encoder": [p for p in vae.guide.parameters() if p.requires_grad],
        "decoder": [
            p
            for net in (vae.model.decoder, vae.model.layers)
            for p in net.parameters()
            if p.requires_grad
        ],
    }
    params = groups["encoder"] + groups["decoder"]
    estimator = make_objective(elbo, num_particles)
    samples = []
    for _ in range(repeats):
        t = estimator.terms(vae.model, vae.guide, x, labels_for(vae, y))
        grads = torch.autograd.grad(t.loss / x.shape[0], params, allow_unused=True)
        samples.append(_flat_grads(grads, params).double())
    g = torch.stack(samples)  # [repeats, num_params]
    out = {}
    start = 0
    for name, ps in groups.items():
        size = sum(p.numel() for p in ps)
        block = g[:, start : start + size]
        start += size
        mean, std = block.mean(0), block.std(0)
        noisy = std > 0
        out[name] = {
            "trace_cov": block.var(0).sum().item(),
            "snr": (mean[noisy].abs() / std[noisy]).mean().item() if noisy.any() else math.inf,
            "grad_norm": mean.norm().item(),
        }
    return out


@torch.no_grad()
def iw_bounds(
    vae: VAE,
    x: Tensor,
    y: Tensor,
    ks: Sequence[int],
    batch_size: int = 100,
    chunk_size: int | None = None,
) -> dict[int, dict]:
    """L_K for every K in ``ks``, from max(ks) draws per image, reported as -L_K (an upper bound
    on the NLL that tightens with K), nats per image: {K: {neg_bound, std_error, gain,
    gain_std_error}}. ``std_error`` is over images; ``gain`` = mean of L_K - L_{min(ks)} over the
    same images, with its paired standard error, which is far smaller.
    """
    k_max = max(ks)
    width = sample_width(vae)
    per_k: dict[int, list[Tensor]] = {k: [] for k in ks}
    for xb, yb in batches(x, y, batch_size):
        chunk = chunk_size or auto_chunk_size(k_max, xb.shape[0], width, xb.device)
        lw = log_weights(
            vae.model, vae.guide, xb, labels_for(vae, yb), num_samples=k_max, chunk_size=chunk
        )
        for k in ks:
            per_k[k].append(iw_bound(lw, k).double())
    values = {k: torch.cat(parts) for k, parts in per_k.items()}
    base = values[min(ks)]
    out = {}
    for k, v in values.items():
        out[k] = {
            "neg_bound": -v.mean().item(),
            "std_error": _std_error(v),
            "gain": (v - base).mean().item(),
            "gain_std_error": _std_error(v - base),
        }
    return out


def _std_error(v: Tensor) -> float:
    return (v.std() / len(v) ** 0.5).item() if len(v) > 1 else float("nan")


def compare_estimators(
    vae: VAE,
    x: Tensor,
    y: Tensor,
    *,
    repeats: int = 20,
    grad_batch: int = 100,
    grad_repeats: int = 50,
    particles: Sequence[int] = (1, 10),
    ks: Sequence[int] = (1, 5, 50, 500, 5000),
    iw_subset: int = 100,
    batch_size: int = 1000,
    chunk_size: int | None = None,
) -> dict:
    """All four measurements on test images x [N, x_dim] (labels y [N]); a JSON-ready dict.

    The gradient is taken on the first ``grad_batch`` images, the IW bound on the first
    ``iw_subset``; the -ELBO on those same images is reported beside it (L_1 = ELBO).
    """
    if repeats < 2:
        raise ValueError(f"repeats must be at least 2 to measure a variance, got {repeats}")
    if not ks or min(ks) < 1:
        raise ValueError(f"K values must be positive integers, got {list(ks)}")
    iw_subset = min(iw_subset, x.shape[0])
    xg, yg = x[:grad_batch], y[:grad_batch]
    result: dict = {"units": "nats per image", "estimators": {}}
    for name in ELBOS:
        values = repeated_elbos(vae, x, y, name, repeats, batch_size)
        summary = elbo_summary(values)
        with torch.no_grad():  # which KL each site took (stacked latents: analytic on top)
            t = make_objective(name).terms(vae.model, vae.guide, x[:2], labels_for(vae, y[:2]))
        summary["kl_kind"], summary["kl_estimators"] = t.kl_kind, t.estimators
        summary["neg_elbo_iw_subset"] = -values[:, :iw_subset].mean().item()
        summary["gradient"] = {
            str(p): gradient_variance(vae, xg, yg, name, p, grad_repeats) for p in particles
        }
        result["estimators"][make_objective(name).label] = summary
    result["iw_bound"] = {
        str(k): v
        for k, v in iw_bounds(vae, x[:iw_subset], y[:iw_subset], ks, chunk_size=chunk_size).items()
    }
    result["protocol"] = {
        "num_images": x.shape[0],
        "repeats": repeats,
        "grad_batch": xg.shape[0],
        "grad_repeats": grad_repeats,
        "particles": list(particles),
        "ks": list(ks),
        "iw_subset": iw_subset,
    }
    return result


def format_table(result: dict) -> str:
    """The comparison as plain-text tables (what ``pyro-vae compare-elbo`` prints)."""
    p = result["protocol"]
    est = result["estimators"]
    width = max(13, *(len(s["kl_kind"]) + 2 for s in est.values()))
    lines = [
        f"test -ELBO over {p['repeats']} evaluations of {p['num_images']} images, "
        "one particle (nats/image)",
        f"{'estimator':<22}{'KL':<{width}}{'-ELBO':>9}{'std(evals)':>12}{'per-image var':>15}",
    ]
    for name, s in est.items():
        lines.append(
            f"{name:<22}{s['kl_kind']:<{width}}{s['neg_elbo']:>9.3f}"
            f"{s['std_over_evals']:>12.4f}{s['per_image_var']:>15.3f}"
        )
    lines += [
        "",
        f"gradient of the per-image -ELBO on {p['grad_batch']} fixed images, "
        f"{p['grad_repeats']} repeats: trace of covariance and mean SNR |E g|/std g",
        f"{'estimator':<22}{'particles':>9}{'enc tr(Cov)':>13}{'enc SNR':>9}"
        f"{'dec tr(Cov)':>13}{'dec SNR':>9}",
    ]
    for name, s in est.items():
        for n_p, g in s["gradient"].items():
            e, d = g["encoder"], g["decoder"]
            lines.append(
                f"{name:<22}{n_p:>9}{e['trace_cov']:>13.4g}{e['snr']:>9.3f}"
                f"{d['trace_cov']:>13.4g}{d['snr']:>9.3f}"
            )
    lines += [
        "",
        f"importance-weighted bound on the first {p['iw_subset']} images: -L_K "
        "(K = 1 is the -ELBO; decreases towards the NLL as K grows)",
        f"{'K':>6}{'-L_K':>11}{'s.e.':>8}{'L_K - L_' + str(min(p['ks'])):>14}{'paired s.e.':>13}",
    ]
    for k, v in result["iw_bound"].items():
        lines.append(
            f"{k:>6}{v['neg_bound']:>11.3f}{v['std_error']:>8.3f}{v['gain']:>14.3f}"
            f"{v['gain_std_error']:>13.3f}"
        )
    same = ", ".join(f"{n} {s['neg_elbo_iw_subset']:.3f}" for n, s in est.items())
    lines.append(f"-ELBO on the same images: {same}")
    return "\n".join(lines)
