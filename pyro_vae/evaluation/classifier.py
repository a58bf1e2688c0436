"""A small CNN digit classifier: the judge of whether a conditional VAE draws the digit asked for.

It is trained by ``train_classifier`` on the MNIST training set (grayscale pixels in [0, 1], the
space of the decoder means it later classifies) and scored on the test set; weights, options and
test accuracy are cached in one file, so ``pyro-vae evaluate`` trains it once. The default cache
is ``digit_classifier.pt`` next to the run directory (``runs/digit_classifier.pt`` for
``runs/cvae``), shared by the runs there.

On another labelled dataset (``datasets.py``) it is a label classifier of that dataset's classes
and image size, trained on its training set; its cache is named after the dataset and the hash
of its test set (``label_classifier_<dataset>_<hash>.pt``), and a cached classifier of other
data is refused.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyro_vae.data.datasets import LEGACY_RECORD, DatasetSpec, RawData, load_dataset
from pyro_vae.runs.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pyro_vae.runtime.rng import seeded

CLASSIFIER_NAME = "digit_classifier.pt"
NUM_DIGITS = 10
# Below this test accuracy the classifier's verdicts on samples are not worth much.
MIN_TEST_ACCURACY = 0.98


@dataclass
class ClassifierConfig:
    """Architecture and training options; the defaults reach 98.8% test accuracy in two epochs
    (13 s on one CPU thread)."""

    channels: tuple[int, int] = (8, 16)
    hidden: int = 64
    epochs: int = 2
    batch_size: int = 128
    # Peak of a one-cycle schedule: warm up, then anneal to ~0, which is what makes 2 epochs enough.
    lr: float = 5e-3
    seed: int = 0
    # First N training / test images (0 = all): for tests only; the reported accuracy uses all.
    train_subset: int = 0
    test_subset: int = 0

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        for name in ("epochs", "batch_size", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"classifier {name} must be at least 1, got {getattr(self, name)}")


# Two conv5 + pool stages leave ((S - 4) // 2 - 4) // 2 >= 1 pixels only from S = 16 on.
MIN_SIDE = 16


def _after_convs(side: int) -> int:
    return ((side - 4) // 2 - 4) // 2


class DigitClassifier(nn.Module):
    """conv5 -> pool -> conv5 -> pool -> MLP: x [B, C*H*W] (or [B, C, H, W]) in [0, 1] ->
    [B, num_classes] logits; MNIST's is 1 x 28 x 28 and 10 classes. ``image_shape`` (C, H, W),
    or (H, W) for one channel."""

    def __init__(
        self,
        channels: tuple[int, int] = (8, 16),
        hidden: int = 64,
        num_classes: int = NUM_DIGITS,
        image_shape: tuple[int, ...] = (1, 28, 28),
    ) -> None:
        super().__init__()
        image_shape = (1, *image_shape) if len(image_shape) == 2 else tuple(image_shape)
        if min(image_shape[1:]) < MIN_SIDE:
            raise ValueError(
                f"the label classifier needs images of at least {MIN_SIDE}x{MIN_SIDE}, got "
                f"{image_shape[1]}x{image_shape[2]}; use --samples-per-class 0 to skip the check"
            )
        c1, c2 = channels
        self.num_classes = num_classes
        self.image_shape = image_shape
        flat = c2 * _after_convs(image_shape[1]) * _after_convs(image_shape[2])
        self.net = nn.Sequential(
            nn.Conv2d(image_shape[0], c1, 5),  # 28 -> 24
            nn.ReLU(),
            nn.MaxPool2d(2),  # -> 12
            nn.Conv2d(c1, c2, 5),  # -> 8
            nn.ReLU(),
            nn.MaxPool2d(2),  # -> 4
            nn.Flatten(),
            nn.Linear(flat, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.reshape(-1, *self.image_shape))

    @torch.no_grad()
    def predict(self, x: Tensor, batch_size: int = 1000) -> Tensor:
        """Most likely class per image: x [N, H*W] -> [N] int64, on x's device."""
        if x.shape[0] == 0:
            return torch.empty(0, dtype=torch.long, device=x.device)
        return torch.cat([self(b).argmax(-1) for b in x.split(batch_size)])


def accuracy(classifier: DigitClassifier, x: Tensor, y: Tensor) -> float:
    """Fraction of images x [N, 784] classified as their labels y [N]."""
    return (classifier.predict(x) == y).double().mean().item()


def _grayscale(x: Tensor, y: Tensor, subset: int, device: torch.device):
    if subset:
        x, y = x[:subset], y[:subset]
    return x.to(device).float().div_(255.0), y.to(device)


def train_classifier(
    data_dir: str | os.PathLike,
    config: ClassifierConfig | None = None,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] | None = print,
    *,
    dataset: str | DatasetSpec | RawData = "mnist",
) -> tuple[DigitClassifier, dict]:
    """Trains the classifier on ``dataset`` (MNIST by default, read from ``data_dir``; or data
    already loaded); returns it (in eval mode) and its info dict.

    The info holds ``test_accuracy`` (on the first ``test_subset`` test images, all by default),
    ``num_test``, ``seconds``, the config, the classes, image shape and the data's record.
    Torch's RNG is seeded inside ``fork_rng``, so the caller's RNG state is left as it was.
    """
    config = config or ClassifierConfig()
    device = torch.device(device)
    raw = dataset if isinstance(dataset, RawData) else load_dataset(dataset, data_dir)
    classes = raw.record["classes"]
    if len(classes) < 2:
        raise ValueError(f"{raw.record['name']} has no two classes for a label classifier")
    train_x, train_y = _grayscale(raw.train_x, raw.train_y, config.train_subset, device)
    test_x, test_y = _grayscale(raw.test_x, raw.test_y, config.test_subset, device)
    n = train_x.shape[0]
    t0 = time.perf_counter()
    with seeded(config.seed, device):
        clf = DigitClassifier(config.channels, config.hidden, len(classes), raw.image_shape)
        clf = clf.to(device)
        opt = torch.optim.Adam(clf.parameters(), lr=config.lr)
        steps = config.epochs * -(-n // config.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=steps)
        clf.train()
        for _ in range(config.epochs):
            for idx in torch.randperm(n, device=device).split(config.batch_size):
                loss = F.cross_entropy(clf(train_x[idx]), train_y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    clf.eval()
    info = {
        "test_accuracy": accuracy(clf, test_x, test_y),
        "num_test": int(test_x.shape[0]),
        "num_train": n,
        "seconds": time.perf_counter() - t0,
        "device": str(device),
        "config": {**dataclasses.asdict(config), "channels": list(config.channels)},
        "num_classes": len(classes),
        "image_shape": list(raw.image_shape),
        "dataset": raw.record,
    }
    if log:
        log(
            f"{_kind(raw.record)} classifier: test accuracy {info['test_accuracy']:.2%} on "
            f"{info['num_test']} images, trained on {n} in {info['seconds']:.0f} s"
        )
    return clf, info


def save_classifier(path: str | os.PathLike, classifier: DigitClassifier, info: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, {"model": classifier.state_dict(), "info": info})


def load_classifier(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[DigitClassifier, dict]:
    """Reads a classifier written by ``save_classifier``; returns it (eval mode) and its info."""
    if Path(path).is_dir():
        raise CheckpointError(f"{path} is a folder; --classifier takes a file path")
    state = load_checkpoint(path, map_location=device)
    if set(state) != {"model", "info"}:
        raise CheckpointError(f"{path} is not a digit classifier written by pyro-vae")
    info = state["info"]
    cfg = ClassifierConfig(**info["config"])
    # Files from before other datasets: MNIST's 10 digits, 28 x 28.
    shape = tuple(info.get("image_shape", (28, 28)))
    clf = DigitClassifier(cfg.channels, cfg.hidden, info.get("num_classes", NUM_DIGITS), shape)
    clf.load_state_dict(state["model"])
    return clf.to(device).eval(), info


def _kind(record: dict) -> str:
    return "digit" if record.get("name", "mnist") == "mnist" else "label"


def default_classifier_path(run_dir: str | os.PathLike, record: dict | None = None) -> Path:
    """In the folder holding the run, one classifier for all its runs on the same data:
    ``digit_classifier.pt`` for MNIST, ``label_classifier_<dataset>_<test hash>.pt`` else."""
    folder = Path(run_dir).resolve().parent
    record = record or LEGACY_RECORD
    if record["name"] == "mnist":
        return folder / CLASSIFIER_NAME
    slug = re.sub(r"[^A-Za-z0-9-]+", "-", record["name"]).strip("-")[:40]
    return folder / f"label_classifier_{slug}_{record.get('test_sha256', '')[:8]}.pt"


def load_or_train_classifier(
    path: str | os.PathLike,
    data_dir: str | os.PathLike,
    device: str | torch.device = "cpu",
    config: ClassifierConfig | None = None,
    log: Callable[[str], None] | None = print,
    *,
    dataset: str | DatasetSpec | RawData = "mnist",
    record: dict | None = None,
) -> tuple[DigitClassifier, dict]:
    """The cached classifier at ``path``, or one freshly trained on ``dataset`` written there.

    ``record``: the data the classifier must know (a run's dataset record); a cached one trained
    on other data (another name or test set hash) is refused.
    """
    if Path(path).exists():
        clf, info = load_classifier(path, device)
        _check_same_data(path, info.get("dataset") or LEGACY_RECORD, record)
        return clf, info
    if log:
        name = (record or {}).get("name", "MNIST")
        log(f"no {_kind(record or {})} classifier at {path}: training one on {name}'s training set")
    clf, info = train_classifier(data_dir, config, device, log, dataset=dataset)
    save_classifier(path, clf, info)
    return clf, info


def _check_same_data(path: str | os.PathLike, theirs: dict, mine: dict | None) -> None:
    if mine is None:
        return
    same = theirs["name"] == mine["name"]
    if same and theirs.get("test_sha256") and mine.get("test_sha256"):
        same = theirs["test_sha256"] == mine["test_sha256"]
    if not same:
        raise CheckpointError(
            f"the classifier {path} was trained on {theirs['name']}, not on this run's data "
            f"({mine['name']}); pass --classifier with another file, or delete it to retrain"
        )
