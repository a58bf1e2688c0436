"""Sampling digits of a chosen class, and measuring how often a conditional VAE draws the digit
it was asked for.

``conditioning_accuracy`` generates ``samples_per_class`` images per label (decoder means at
z ~ p(z | y)), has the digit classifier (``classifier.py``; a label classifier of the run's
classes on other data) label them, and reports the fraction labelled as requested, per label
and overall, with the confusion matrix.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pyro_vae.evaluation.classifier import MIN_TEST_ACCURACY, DigitClassifier
from pyro_vae.models.vae import VAE

DEFAULT_SAMPLES_PER_CLASS = 1000
# Images generated and classified at once: bounds memory, not results.
CHUNK = 2000


def labels_for_samples(vae: VAE, num: int, label: int | None = None) -> Tensor | None:
    """Labels [num] for ``vae.sample``: all ``label``; 0, 1, 2, ... in turn when a conditional
    model gets no label; None for an unconditional model (which must get no label)."""
    c = vae.config.num_classes
    if num < 1:
        raise ValueError(f"the number of samples must be at least 1, got {num}")
    if label is not None and not c:
        raise ValueError("this run is unconditional (num_classes=0): drop --label")
    if label is not None and not 0 <= label < c:
        raise ValueError(f"label {label} is outside [0, {c}): pick a label from 0 to {c - 1}")
    device = next(vae.parameters()).device
    if not c:
        return None
    if label is None:
        return torch.arange(num, device=device) % c
    return torch.full((num,), label, dtype=torch.long, device=device)


@torch.no_grad()
def generate(vae: VAE, num: int, label: int | None = None) -> Tensor:
    """``num`` generated digits [num, 784] in [0, 1]: of class ``label`` (conditional run), or
    from the prior (unconditional run). Uses torch's global RNG."""
    y = labels_for_samples(vae, num, label)
    return vae.sample(num, y).clamp(0, 1)


@torch.no_grad()
def conditioning_accuracy(
    vae: VAE,
    classifier: DigitClassifier,
    samples_per_class: int = DEFAULT_SAMPLES_PER_CLASS,
) -> dict:
    """Fraction of generated digits the classifier labels as the digit requested.

    Returns ``per_class`` [K] fractions (K = 10 for MNIST), ``overall`` (their mean: every label
    has the same number of samples), ``overall_stderr`` (binomial), and ``confusion`` [K, K]
    counts, row = requested label, column = classifier's label. Uses torch's global RNG.
    """
    k = classifier.num_classes  # NUM_DIGITS for MNIST
    if vae.config.num_classes != k:
        raise ValueError(
            f"the classifier judges a VAE conditioned on its {k} classes; "
            f"this run has num_classes={vae.config.num_classes}"
        )
    if samples_per_class < 1:
        raise ValueError(f"samples_per_class must be at least 1, got {samples_per_class}")
    vae.eval()
    classifier.eval()
    device = next(vae.parameters()).device
    classifier.to(device)
    requested = torch.arange(k, device=device).repeat_interleave(samples_per_class)
    # The confusion matrix stays on the device; the host reads it once at the end.
    confusion = torch.zeros(k * k, dtype=torch.long, device=device)
    for y in requested.split(CHUNK):
        predicted = classifier.predict(vae.sample(y=y).clamp(0, 1))
        confusion += torch.bincount(y * k + predicted, minlength=k**2)
    confusion = confusion.reshape(k, k).cpu()
    per_class = (confusion.diagonal().double() / samples_per_class).tolist()
    overall = sum(per_class) / k
    n = k * samples_per_class
    return {
        "samples_per_class": samples_per_class,
        "sampled": "decoder mean at z ~ p(z | y)",
        "per_class": per_class,
        "overall": overall,
        "overall_stderr": math.sqrt(overall * (1 - overall) / n),
        "confusion": confusion.tolist(),
    }


def format_conditioning(result: dict, classifier_info: dict | None = None) -> str:
    """The printed table: per-digit and overall fraction of samples classified as requested."""
    n = result["samples_per_class"]
    data = (classifier_info or {}).get("dataset") or {"name": "mnist", "title": "MNIST"}
    what = "digit" if data["name"] == "mnist" else "label"
    lines = [f"conditioning: fraction of {n} samples per {what} classified as the {what} asked for"]
    num = len(result["per_class"])
    lines.append(f"{what:<8}" + "".join(f"{k:>7}" for k in range(num)) + "   overall")
    lines.append(
        "correct "
        + "".join(f"{p:>7.1%}" for p in result["per_class"])
        + f"   {result['overall']:.1%} +- {result['overall_stderr']:.1%}"
    )
    if classifier_info:
        acc = classifier_info["test_accuracy"]
        lines.append(
            f"(classifier test accuracy {acc:.2%} on {classifier_info['num_test']} "
            f"{data.get('title', data['name'])} test images)"
        )
        # 98% is what the MNIST classifier reaches; other data have their own ceiling.
        if acc < MIN_TEST_ACCURACY and data["name"] == "mnist":
            where = classifier_info.get("path", "its file")
            lines.append(
                f"warning: a classifier below {MIN_TEST_ACCURACY:.0%} misjudges samples; delete "
                f"{where} to retrain it with the defaults"
            )
    return "\n".join(lines)
