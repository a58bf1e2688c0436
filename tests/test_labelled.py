"""Which training images keep their label (data/labelled.py): --labelled N draws N / C images
of each class with a fixed seed, the rest become unlabelled (y = -1), and
--labelled-per-batch M puts M labelled images in every batch of an epoch."""

from __future__ import annotations

import pytest
import torch

from pyro_vae.data.images import ImageData
from pyro_vae.data.labelled import draw_labelled, hide_labels, labelled_record, mixed_order
from pyro_vae.models.likelihoods import BernoulliLikelihood

C = 10


def labels(n: int = 500) -> torch.Tensor:
    return torch.randint(0, C, (n,), generator=torch.Generator().manual_seed(1))


def test_the_draw_is_class_balanced_fixed_by_its_seed_and_recorded():
    y = labels()
    idx = draw_labelled(y, 50, C, seed=7)
    assert torch.equal(idx, draw_labelled(y, 50, C, seed=7))  # the same seed, the same images
    assert not torch.equal(idx, draw_labelled(y, 50, C, seed=8))
    assert idx.unique().numel() == 50 and torch.equal(idx, idx.sort().values)
    assert torch.bincount(y[idx], minlength=C).tolist() == [5] * C
    hidden = hide_labels(y, idx)
    assert torch.equal(hidden[idx], y[idx]) and (hidden >= 0).sum() == 50
    assert set(hidden.tolist()) - set(range(C)) == {-1}
    record = labelled_record(idx, y, C, 7)
    assert record["num"] == 50 and record["seed"] == 7 and record["per_class"] == [5] * C
    assert record["sha256"] == labelled_record(draw_labelled(y, 50, C, 7), y, C, 7)["sha256"]
    assert record["sha256"] != labelled_record(draw_labelled(y, 50, C, 8), y, C, 8)["sha256"]


@pytest.mark.parametrize(
    "num,match",
    [
        (501, "--labelled 501 is more than the 500 training images; use at most 500"),
        (55, "--labelled 55 does not split into 10 classes of equal size; use a multiple of 10"),
        (500, r"--labelled 500 needs 50 images of each class, but class \d has \d+; use at most"),
    ],
)
def test_a_draw_that_does_not_fit_the_data_is_a_one_line_error(num, match):
    with pytest.raises(ValueError, match=match) as e:
        draw_labelled(labels(), num, C, seed=0)
    assert "\n" not in str(e.value)


def test_every_batch_holds_m_labelled_images_and_every_unlabelled_image_comes_once():
    labelled, unlabelled = torch.arange(20), torch.arange(20, 600)
    g = torch.Generator().manual_seed(0)
    order = mixed_order(labelled, unlabelled, batch_size=64, per_batch=8, generator=g)
    batches = order.split(64)
    assert len(batches) == 11 and len(batches[-1]) == 8 + 580 - 10 * 56
    for b in batches:
        assert (b < 20).sum() == 8  # M labelled, then unlabelled
    assert torch.equal(order[order >= 20].sort().values, unlabelled)
    seen = torch.bincount(order[order < 20], minlength=20)
    assert seen.max() - seen.min() <= 1  # cycled: each labelled image as often as the others


def test_image_data_keeps_the_labels_and_orders_the_epoch():
    y = labels(600)
    data = ImageData(
        train_x=torch.zeros(600, 4, dtype=torch.uint8),
        train_y=y.clone(),
        test_x=torch.zeros(0, 4),
        test_y=y[:0],
        data_mode="threshold",
        likelihood=BernoulliLikelihood(),
    )
    assert data.num_batches(64) == 10 and data.labelled_per_epoch(64) == 600
    idx = draw_labelled(y, 20, C, seed=0)
    data.keep_labels(idx, per_batch=8)
    assert (data.train_y >= 0).sum() == 20 and data.num_batches(64) == 11
    assert data.labelled_per_epoch(64) == 88
    order = data.epoch_order(seed=0, epoch=1, batch_size=64)
    assert torch.equal(order, data.epoch_order(seed=0, epoch=1, batch_size=64))
    assert not torch.equal(order, data.epoch_order(seed=0, epoch=2, batch_size=64))
    (_, yb), *_ = data.train_batches(64, order)
    assert (yb >= 0).sum() == 8 and (yb == -1).sum() == 56
    data.labelled_per_batch = 0  # labelled images in the epoch's order like the others
    assert data.num_batches(64) == 10 and data.labelled_per_epoch(64) == 20
