"""A dataset on the training device: uint8 pixels cut into shuffled batches there.

The whole dataset (47 MB of MNIST as uint8) is moved to the device once; each batch is an index
into it and is turned into the likelihood's representation (``pixels.py``) on the device, so
there are no per-image Python transforms and no per-step copies from the host.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from pyro_vae.data import labelled as semi
from pyro_vae.data.datasets import DatasetSpec, load_dataset
from pyro_vae.data.pixels import TEST_DATA_SEED, resolve_data_mode, to_pixels
from pyro_vae.models.likelihoods import Likelihood
from pyro_vae.runtime.distributed import World, epoch_order, epoch_seed, sharded_batches


def batches(x: Tensor, y: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Consecutive (x, y) slices of ``batch_size`` (the last one may be smaller)."""
    for start in range(0, x.shape[0], batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]


@dataclass
class ImageData:
    """Training images (uint8, binarized or dequantized per batch) and a fixed test set, on
    ``device``."""

    train_x: Tensor  # uint8 [N, D], D = C * H * W (channel by channel, row by row)
    train_y: Tensor  # int64 [N] (zeros for an unlabelled dataset; -1: missing, keep_labels)
    test_x: Tensor  # float [M, D], already in the likelihood's representation
    test_y: Tensor  # int64 [M]
    # How the pixels become data (pixels.to_pixels): dynamic, threshold, dequantize or none.
    data_mode: str
    likelihood: Likelihood
    # (C, H, W): how a row of D values is an image (C = 1 grayscale, 3 RGB); (H, W) means C = 1.
    image_shape: tuple[int, ...] = (1, 28, 28)
    # What the data are (datasets.load_dataset's record): name, shape, classes, split, hash of
    # the test set. Runs store it; a run is scored only on the data it records.
    dataset: dict = field(default_factory=lambda: {"name": "mnist"})
    # A semi-supervised run (keep_labels): the indices of the images that keep their label,
    # on the device, and how many of them every batch holds (0: they come in the epoch's
    # order like the others).
    labelled: Tensor | None = None
    labelled_per_batch: int = 0
    labelled_record: dict | None = None  # what the run records (labelled.labelled_record)

    def __post_init__(self) -> None:
        shape = tuple(int(v) for v in self.image_shape)
        self.image_shape = (1, *shape) if len(shape) == 2 else shape

    @classmethod
    def load(
        cls,
        root: str | os.PathLike,
        likelihood: Likelihood,
        data_mode: str = "auto",
        device: torch.device | str = "cpu",
        train_subset: int = 0,
        test_subset: int = 0,
        dataset: str | DatasetSpec = "mnist",
    ) -> ImageData:
        """``dataset``: a name or a :class:`~pyro_vae.data.datasets.DatasetSpec` (see there)."""
        data_mode = resolve_data_mode(data_mode, likelihood)
        raw = load_dataset(dataset, root)
        train_x, train_y, test_x, test_y = raw.train_x, raw.train_y, raw.test_x, raw.test_y
        if train_subset:
            train_x, train_y = train_x[:train_subset], train_y[:train_subset]
        if test_subset:
            test_x, test_y = test_x[:test_subset], test_y[:test_subset]
        gen = torch.Generator().manual_seed(TEST_DATA_SEED)
        test = to_pixels(test_x, data_mode, likelihood, generator=gen)
        # One check of the representation up front, with an error that suggests the fix.
        likelihood.check(test)
        return cls(
            train_x=train_x.to(device),
            train_y=train_y.to(device),
            test_x=test.to(device),
            test_y=test_y.to(device),
            data_mode=data_mode,
            likelihood=likelihood,
            image_shape=raw.image_shape,
            dataset=raw.record,
        )

    @property
    def num_train(self) -> int:
        return self.train_x.shape[0]

    def num_batches(self, batch_size: int) -> int:
        if self.labelled_per_batch:
            unlabelled = self.num_train - len(self.labelled)
            return semi.mixed_batches(unlabelled, batch_size, self.labelled_per_batch)
        return -(-self.num_train // batch_size)

    def keep_labels(self, labelled: Tensor, per_batch: int = 0) -> None:
        """Semi-supervised: only the images at ``labelled`` keep their label, the others get
        -1 (missing). ``per_batch`` > 0: every batch of :meth:`epoch_order` holds that many
        labelled images (``labelled.mixed_order``)."""
        self.labelled = labelled.to(self.train_y.device)
        self.train_y = semi.hide_labels(self.train_y, self.labelled)
        self.labelled_per_batch = per_batch

    def labelled_per_epoch(self, batch_size: int) -> int:
        """How many labelled images an epoch's batches hold (with repeats)."""
        if self.labelled is None:
            return self.num_train
        if self.labelled_per_batch:
            return self.labelled_per_batch * self.num_batches(batch_size)
        return len(self.labelled)

    def epoch_order(self, seed: int, epoch: int, batch_size: int) -> Tensor:
        """The epoch's order of the training images, the same on every rank: a permutation
        (``distributed.epoch_order``), or the mixed batches of a semi-supervised run with
        ``labelled_per_batch``."""
        device = self.train_x.device
        if not self.labelled_per_batch:
            return epoch_order(self.num_train, seed, epoch, device)
        g = torch.Generator(device=device).manual_seed(epoch_seed(seed, epoch, rank=-1))
        unlabelled = torch.nonzero(self.train_y < 0)[:, 0]
        return semi.mixed_order(self.labelled, unlabelled, batch_size, self.labelled_per_batch, g)

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
            yield to_pixels(self.train_x[idx], self.data_mode, self.likelihood), self.train_y[idx]

    def validate(self, num_classes: int = 0, chunk: int = 10_000) -> None:
        """Checks, once, what a step would otherwise check every time: the whole training set,
        as the pipeline turns it into data, against the likelihood's support, and every label
        against ``num_classes``. Raises ValueError saying the fix. (The test set was checked
        on load.) One host read per chunk of images."""
        for start in range(0, self.num_train, chunk):
            x = to_pixels(self.train_x[start : start + chunk], self.data_mode, self.likelihood)
            self.likelihood.check(x)
        if num_classes:
            for split, y in (("training", self.train_y), ("test", self.test_y)):
                if split == "training" and self.labelled is not None:
                    y = y[self.labelled]  # the others are -1 (missing) by construction
                if y.numel():
                    lo, hi = torch.stack(torch.aminmax(y)).tolist()
                    if lo < 0 or hi >= num_classes:
                        raise ValueError(
                            f"the {split} labels lie in [{lo}, {hi}], outside [0, {num_classes}): "
                            f"build the VAE with num_classes = {hi + 1}"
                        )

    def test_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        return batches(self.test_x, self.test_y, batch_size)
