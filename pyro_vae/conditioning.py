"""Sampling digits of a chosen class, and measuring how often a conditional VAE draws the digit
it was asked for.

``conditioning_accuracy`` generates ``samples_per_class`` images per label (decoder means at
z ~ p(z | y)), has the digit classifier (``classifier.py``) label them, and reports the fraction
labelled as requested, per digit and overall, with the confusion matrix.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .classifier import MIN_TEST_ACCURACY, NUM_DIGITS, DigitClassifier
from .model import VAE

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

    Returns ``per_class`` [10] fractions, ``overall`` (their mean: every digit has the same
    number of samples), ``overall_stderr`` (binomial), and ``confusion`` [10][10] counts, row =
    requested digit, column = classifier's label. Uses torch's global RNG.
    """
    if vae.config.num_classes != NUM_DIGITS:
        raise ValueError(
            f"the digit classifier judges a VAE conditioned on the {NUM_DIGITS} MNIST digits; "
            f"this run has num_classes={vae.config.num_classes}"
        )
    if samples_per_class < 1:
        raise ValueError(f"samples_per_class must be at least 1, got {samples_per_class}")
    vae.eval()
    classifier.eval()
    device = next(vae.parameters()).device
    classifier.to(device)
    requested = torch.arange(NUM_DIGITS, device=device).repeat_interleave(samples_per_class)
    # The confusion matrix stays on the device; the host reads it once at the end.
    confusion = torch.zeros(NUM_DIGITS * NUM_DIGITS, dtype=torch.long, device=device)
    for y in requested.split(CHUNK):
        predicted = classifier.predict(vae.sample(y=y).clamp(0, 1))
        confusion += torch.bincount(y * NUM_DIGITS + predicted, minlength=NUM_DIGITS**2)
    confusion = confusion.reshape(NUM_DIGITS, NUM_DIGITS).cpu()
    per_class = (confusion.diagonal().double() / samples_per_class).tolist()
    overall = sum(per_class) / NUM_DIGITS
    n = NUM_DIGITS * samples_per_class
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
    lines = [f"conditioning: fraction of {n} samples per digit classified as the digit asked for"]
    lines.append("digit   " + "".join(f"{k:>7}" for k in range(NUM_DIGITS)) + "   overall")
    lines.append(
        "correct "
        + "".join(f"{p:>7.1%}" for p in result["per_class"])
        + f"   {result['overall']:.1%} +- {result['overall_stderr']:.1%}"
    )
    if classifier_info:
        acc = classifier_info["test_accuracy"]
        lines.append(
            f"(classifier test accuracy {acc:.2%} on {classifier_info['num_test']} "
            "MNIST test images)"
        )
        if acc < MIN_TEST_ACCURACY:
            where = classifier_info.get("path", "its file")
            lines.append(
                f"warning: a classifier below {MIN_TEST_ACCURACY:.0%} misjudges samples; delete "
                f"{where} to retrain it with the defaults"
            )
    return "\n".join(lines)
