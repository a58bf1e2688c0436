"""Figures of the estimator comparison (``compare``), as functions returning a ``Figure``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure

COLORS = {"Trace_ELBO": "tab:blue", "TraceMeanField_ELBO": "tab:orange"}


def comparison_figure(result: dict) -> Figure:
    """Three panels from ``compare.compare_estimators``: the IW bound against K, the gradient
    noise against the number of particles, and each estimator's per-image variance."""
    fig = Figure(figsize=(13, 3.8))
    ax_iw, ax_grad, ax_var = fig.subplots(1, 3)
    est = result["estimators"]
    p = result["protocol"]

    ks = [int(k) for k in result["iw_bound"]]
    vals = [v["neg_bound"] for v in result["iw_bound"].values()]
    # Every K is scored on the same images, so the paired error of the differences is the
    # one that says whether the bound moved (the spread over images is far larger).
    errs = [v["gain_std_error"] for v in result["iw_bound"].values()]
    label = f"-L_K (bars: paired s.e. vs K={min(ks)})"
    ax_iw.errorbar(ks, vals, yerr=errs, marker="o", color="black", capsize=3, label=label)
    for name, s in est.items():
        ax_iw.axhline(
            s["neg_elbo_iw_subset"], ls="--", color=COLORS.get(name), label=f"-ELBO ({name})"
        )
    ax_iw.set_xscale("log")
    ax_iw.set_xlabel("K (importance samples)")
    ax_iw.set_ylabel("nats per image")
    ax_iw.set_title(f"Importance-weighted bound, {p['iw_subset']} test images", fontsize=10)
    ax_iw.legend(fontsize=8)

    for name, s in est.items():
        parts = [int(n) for n in s["gradient"]]
        for group, ls in (("encoder", "-"), ("decoder", ":")):
            tr = [g[group]["trace_cov"] for g in s["gradient"].values()]
            ax_grad.plot(
                parts, tr, ls=ls, marker="o", color=COLORS.get(name), label=f"{name}, {group}"
            )
    ax_grad.set_xscale("log")
    ax_grad.set_yscale("log")
    ax_grad.set_xlabel("particles")
    ax_grad.set_ylabel("trace of gradient covariance")
    ax_grad.set_title(f"Gradient noise, {p['grad_batch']} fixed images", fontsize=10)
    ax_grad.legend(fontsize=8)

    names = list(est)
    variances = [est[n]["per_image_var"] for n in names]
    bars = ax_var.bar(names, variances, color=[COLORS.get(n, "gray") for n in names])
    for bar, n in zip(bars, names, strict=True):
        ax_var.annotate(
            f"std over evals {est[n]['std_over_evals']:.3f}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax_var.set_ylabel("per-image variance of the ELBO (nats²)")
    ax_var.set_title(f"Estimator variance, {p['num_images']} test images", fontsize=10)
    fig.tight_layout()
    return fig


def learning_curves_figure(curves: Mapping[str, Mapping[str, Sequence[float]]]) -> Figure:
    """Test -ELBO against training steps and against training seconds, one line per estimator.

    ``curves`` maps an estimator name to {"step": [...], "seconds": [...], "neg_elbo": [...]}.
    """
    fig = Figure(figsize=(10, 3.8))
    ax_steps, ax_secs = fig.subplots(1, 2, sharey=True)
    for name, c in curves.items():
        ax_steps.plot(c["step"], c["neg_elbo"], marker=".", color=COLORS.get(name), label=name)
        ax_secs.plot(c["seconds"], c["neg_elbo"], marker=".", color=COLORS.get(name), label=name)
    # The untrained model's value (hundreds of nats) would flatten the rest: the axis starts
    # at each curve's second evaluation, so the trained part, where the gap is, fills the plot.
    later = [v for c in curves.values() for v in c["neg_elbo"][1:]]
    values = later or [v for c in curves.values() for v in c["neg_elbo"]]
    low, high = min(values), max(values)
    pad = 0.05 * (high - low) + 1e-6
    ax_steps.set_ylim(low - pad, high + pad)
    ax_steps.set_xlabel("training steps")
    ax_secs.set_xlabel("training seconds (evaluation excluded)")
    ax_steps.set_ylabel("test -ELBO (nats per image)")
    for ax in (ax_steps, ax_secs):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
