"""MNIST (or any dataset of ``datasets.py``) on the training device: uint8 pixels cut into
shuffled batches there.

The whole dataset (47 MB as uint8) is moved to the device once; each batch is an index into it
and is turned into the likelihood's representation (binarized, dequantized or grayscale) on the
device, so there are no per-image Python transforms and no per-step copies from the host.

The data directory defaults to ``$PYRO_VAE_DATA_DIR`` when set, else ``./data``.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .distributed import World, sharded_batches
from .likelihoods import Likelihood

if TYPE_CHECKING:
    from .datasets import DatasetSpec

DATA_ENV = "PYRO_VAE_DATA_DIR"
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# The test set is binarized (or dequantized) once, with this seed, so every run and checkpoint
# scores the same data.
TEST_BINARIZE_SEED = 0


class DataError(RuntimeError):
    """The data cannot be used; the message says what to do."""


class DataNotFoundError(DataError):
    """MNIST is neither on disk nor downloadable."""


class DataDamagedError(DataError):
    """A data file is on disk but truncated, empty or not what its name says."""


# IDX files (LeCun's format, torchvision's raw layout): magic 0 0 8 N for uint8 with N dims,
# then N big-endian int32 sizes, then the bytes. Images have 3 dims, labels 1.
_IDX_NDIM = {"images": 3, "labels": 1}


def default_data_dir() -> str:
    return os.environ.get(DATA_ENV, "data")


def idx_problem(path: str | os.PathLike, ndim: int) -> str:
    """What is wrong with an uint8 IDX file of ``ndim`` dims ("" when nothing is)."""
    path = Path(path)
    size = path.stat().st_size
    header = 4 + 4 * ndim
    if size == 0:
        return "the file is empty"
    with open(path, "rb") as f:
        head = f.read(header)
    if len(head) < header:
        return f"{size} bytes is shorter than the {header}-byte header"
    if head[:3] != b"\x00\x00\x08" or head[3] != ndim:
        return f"it does not start like an uint8 IDX file of {ndim} dims (bytes {head[:4].hex()})"
    dims = [int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + math.prod(dims)
    if size != expected:
        return f"expected {expected} bytes for shape {dims}, found {size} (truncated or padded)"
    return ""


def check_mnist_files(raw: Path, title: str = "MNIST") -> None:
    """Raises DataDamagedError for a raw IDX file of ``title`` (MNIST, Fashion-MNIST, KMNIST:
    the same four file names) that is present but unreadable."""
    for name in MNIST_FILES:
        path = raw / name
        if path.is_file():
            kind = "images" if "images" in name else "labels"
            problem = idx_problem(path, _IDX_NDIM[kind])
            if problem:
                raise DataDamagedError(
                    f"{title} file {path} is damaged: {problem}; delete it so that it is "
                    "downloaded again, or copy an intact one there"
                )


def load_torchvision(
    root: str | os.PathLike, train: bool, folder: str = "MNIST", title: str = "MNIST"
) -> tuple[Tensor, Tensor]:
    """Images as uint8 [N, H, W] and labels as int64 [N] of one of torchvision's IDX datasets,
    its class ``folder`` (MNIST, FashionMNIST, KMNIST) read from ``root/folder/raw``
    (downloaded there if missing)."""
    import torchvision.datasets

    raw = Path(root) / folder / "raw"
    check_mnist_files(raw, title)
    try:
        # torchvision prints its download attempts; the error below says what matters.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            ds = getattr(torchvision.datasets, folder)(root=str(root), train=train, download=True)
    except Exception as e:  # noqa: BLE001 - any download failure means the same thing to a user
        raise DataNotFoundError(
            f"{title} not found in {raw} and could not be downloaded ({type(e).__name__}); put "
            f"{', '.join(MNIST_FILES)} there or point --data-dir (or ${DATA_ENV}) at a folder "
            f"holding {folder}/raw"
        ) from None
    return ds.data, ds.targets.long()


def load_mnist(root: str | os.PathLike, train: bool) -> tuple[Tensor, Tensor]:
    """Images as uint8 [N, 784] and labels as int64 [N] via torchvision (downloads if missing)."""
    x, y = load_torchvision(root, train)
    return x.reshape(len(x), -1), y


def batches(x: Tensor, y: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Consecutive (x, y) slices of ``batch_size`` (the last one may be smaller)."""
    for start in range(0, x.shape[0], batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]


# The data mode 'auto' picks from the likelihood's data kind; densities get dequantized pixels.
AUTO_BINARIZE = {"binary": "dynamic", "8-bit": "none"}
# Dequantization noise u takes the midpoints of this many equal steps of (0, 1): k + u then
# fits float32's 24 bits exactly, so (k + u) / 256 is exact and strictly inside (0, 1).
# torch.rand's [0, 1) would give exactly 0 at k = 0 (outside a Beta's support), and for
# u within 2**-17 of 1, 255 + u rounds to 256, i.e. x = 1. The steps are 2**-23 apart in x,
# two float32 steps just below 1: finer than that float32 cannot tell apart anyway.
DEQUANTIZE_STEPS = 2**15


def resolve_binarize(binarize: str, likelihood: Likelihood) -> str:
    """'auto': dynamic binarization for binary likelihoods, the raw 8-bit values (none) for
    discrete 8-bit ones, dequantized pixels for densities. Runs record the resolved mode, so
    a run made when 'auto' meant 'none' for densities still evaluates on 'none'."""
    if binarize == "auto":
        return AUTO_BINARIZE.get(likelihood.data_kind, "dequantize")
    return binarize


def dequantize(x_uint8: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """uint8 [N, D] -> float (k + u) / 256 [N, D] with u ~ U(0, 1) per pixel, on x's device.

    A density on these pixels bounds the 8-bit images' log-probability after the change of
    variables term (``units.dequantization_nats``).
    """
    steps = torch.randint(
        DEQUANTIZE_STEPS, x_uint8.shape, generator=generator, device=x_uint8.device
    )
    u = (steps.float() + 0.5) / DEQUANTIZE_STEPS
    return (x_uint8.float() + u) / 256


def to_pixels(x_uint8: Tensor, binarize: str, likelihood: Likelihood, generator=None) -> Tensor:
    """uint8 [N, D] -> float [N, D] in the likelihood's representation, on x's device.

    binarize: "dynamic" (a fresh Bernoulli(k / 255) draw), "threshold" (k / 255 > 0.5),
    "dequantize" (a fresh (k + u) / 256, not passed to ``prepare``) or "none" (k / 255).
    """
    if binarize == "dequantize":
        return dequantize(x_uint8, generator)
    x = x_uint8.float().div_(255.0)
    if binarize == "dynamic":
        x = torch.bernoulli(x, generator=generator)
    elif binarize == "threshold":
        x = (x > 0.5).float()
    return likelihood.prepare(x)


@dataclass
class MNISTData:
    """Training images (uint8, binarized or dequantized per batch) and a fixed test set, on
    ``device``."""

    train_x: Tensor  # uint8 [N, D], D = H * W
    train_y: Tensor  # int64 [N] (zeros for an unlabelled dataset)
    test_x: Tensor  # float [M, D], already in the likelihood's representation
    test_y: Tensor  # int64 [M]
    binarize: str
    likelihood: Likelihood
    image_shape: tuple[int, int] = (28, 28)  # (H, W): how the figures draw a row of D pixels
    # What the data are (datasets.load_dataset's record): name, shape, classes, split, hash of
    # the test set. Runs store it; a run is scored only on the data it records.
    dataset: dict = field(default_factory=lambda: {"name": "mnist"})

    @classmethod
    def load(
        cls,
        root: str | os.PathLike,
        likelihood: Likelihood,
        binarize: str = "auto",
        device: torch.device | str = "cpu",
        train_subset: int = 0,
        test_subset: int = 0,
        dataset: str | DatasetSpec = "mnist",
    ) -> MNISTData:
        """``dataset``: a name or a :class:`~pyro_vae.datasets.DatasetSpec` (see there)."""
        from .datasets import load_dataset  # datasets.py builds on this module's readers

        binarize = resolve_binarize(binarize, likelihood)
        raw = load_dataset(dataset, root)
        train_x, train_y, test_x, test_y = raw.train_x, raw.train_y, raw.test_x, raw.test_y
        if train_subset:
            train_x, train_y = train_x[:train_subset], train_y[:train_subset]
        if test_subset:
            test_x, test_y = test_x[:test_subset], test_y[:test_subset]
        gen = torch.Generator().manual_seed(TEST_BINARIZE_SEED)
        test = to_pixels(test_x, binarize, likelihood, generator=gen)
        # One check of the representation up front, with an error that suggests the fix.
        likelihood.check(test)
        return cls(
            train_x=train_x.to(device),
            train_y=train_y.to(device),
            test_x=test.to(device),
            test_y=test_y.to(device),
            binarize=binarize,
            likelihood=likelihood,
            image_shape=raw.image_shape,
            dataset=raw.record,
        )

    @property
    def num_train(self) -> int:
        return self.train_x.shape[0]

    def num_batches(self, batch_size: int) -> int:
        return -(-self.num_train // batch_size)

    def train_batches(
        self, batch_size: int, order: Tensor | None = None, world: World | None = None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Shuffled (x, y) batches of ``batch_size`` images, made on the device.

        ``order``: the epoch's order of the training images (``distributed.epoch_order``);
        default, a permutation drawn from torch's global RNG. ``world``: in a multi-process run,
        this rank's shard of each global batch of ``batch_size``.
        """
        if order is None:
            order = torch.randperm(self.num_train, device=self.train_x.device)
        parts = (
            order.split(batch_size) if world is None else sharded_batches(order, batch_size, world)
        )
        for idx in parts:
            yield to_pixels(self.train_x[idx], self.binarize, self.likelihood), self.train_y[idx]

    def validate(self, num_classes: int = 0, chunk: int = 10_000) -> None:
        """Checks, once, what a step would otherwise check every time: the whole training set,
        as the pipeline turns it into data, against the likelihood's support, and every label
        against ``num_classes``. Raises ValueError saying the fix. (The test set was checked
        on load.) One host read per chunk of images."""
        for start in range(0, self.num_train, chunk):
            x = to_pixels(self.train_x[start : start + chunk], self.binarize, self.likelihood)
            self.likelihood.check(x)
        if num_classes:
            for split, y in (("training", self.train_y), ("test", self.test_y)):
                if y.numel():
                    lo, hi = torch.stack(torch.aminmax(y)).tolist()
                    if lo < 0 or hi >= num_classes:
                        raise ValueError(
                            f"the {split} labels lie in [{lo}, {hi}], outside [0, {num_classes}): "
                            f"build the VAE with num_classes = {hi + 1}"
                        )

    def test_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        return batches(self.test_x, self.test_y, batch_size)
