"""The explorer's pictures and identity card (pyro_vae.app.view): the pad's pixels map to the
points drawn there, markers land where asked, the card says what the run's files say."""

from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib import colormaps

from pyro_vae.app.view import (
    CURRENT_COLOR,
    DRAWING_COLOR,
    coords_to_pad,
    describe_run,
    enlarge,
    pad_background,
    pad_image,
    pad_to_coords,
    run_info,
)
from pyro_vae.models.config import VAEConfig
from pyro_vae.runs.options import TrainConfig

EXTENT = 3.0
SIZE = 120


def test_pad_pixels_and_points_are_inverse_maps():
    for px, py in ((0, 0), (SIZE - 1, SIZE - 1), (17, 93)):
        u, v = pad_to_coords(px, py, EXTENT, SIZE)
        assert coords_to_pad(u, v, EXTENT, SIZE) == pytest.approx((px, py))
    u, v = pad_to_coords(0, 0, EXTENT, SIZE)  # top-left pixel: smallest z1, largest z2
    assert u == pytest.approx(-EXTENT + EXTENT / SIZE) and v == pytest.approx(
        EXTENT - EXTENT / SIZE
    )


def test_points_are_drawn_where_a_click_reads_them():
    # Two clusters of label 3: the pixel a click maps to their point shows label 3's colour,
    # a pixel far from any point stays white.
    pts = np.repeat([[1.5, -2.0], [-1.5, 2.0]], 200, axis=0)
    img = pad_background(pts, np.full(len(pts), 3), EXTENT, SIZE)
    assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8
    colour = np.array(colormaps["tab10"](3)[:3]) * 255
    for u, v in pts[[0, -1]]:
        px, py = (round(c) for c in coords_to_pad(u, v, EXTENT, SIZE))
        pixel = img[py, px].astype(float)
        assert np.abs(pixel - colour).max() < 40, pixel
    px, py = (round(c) for c in coords_to_pad(2.5, 2.5, EXTENT, SIZE))
    assert (img[py, px] == 255).all()


def test_markers_land_on_their_points_and_leave_the_background_alone():
    bg = np.full((SIZE, SIZE, 3), 255, np.uint8)
    img = pad_image(bg, EXTENT, current=(1.0, 1.0), drawing=(-2.0, -1.0))
    assert (bg == 255).all()  # drawn on a copy
    cx, cy = coords_to_pad(1.0, 1.0, EXTENT, SIZE)
    assert (img[round(cy), round(cx + 7)] == CURRENT_COLOR).all()  # on the ring
    assert (img[round(cy), round(cx)] == 255).all()  # its centre shows the point beneath
    dx, dy = coords_to_pad(-2.0, -1.0, EXTENT, SIZE)
    assert (img[round(dy), round(dx)] == DRAWING_COLOR).all()
    assert (img[5, SIZE - 5] == 255).all()  # negative control: far away, nothing drawn
    off = pad_image(bg, EXTENT, current=(10.0, 0.0))  # off the pad: clipped to its edge
    assert (off[:, -4:] == CURRENT_COLOR).all(-1).any()


def test_enlarge_keeps_each_pixel_as_a_block():
    digit = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    big = enlarge(digit, 4)
    assert (
        big.shape == (112, 112)
        and (big[::4, ::4] == digit).all()
        and (big[3::4, 3::4] == digit).all()
    )


def test_run_identity_comes_from_the_runs_files(tmp_path):
    run = tmp_path / "vae10"
    run.mkdir()
    rows = [
        {"epoch": e, "test_neg_elbo": v, "estimator": "Trace_ELBO"}
        for e, v in ((1, 140.7), (2, 120.5))
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ckpt = {
        "epoch": 2,
        "vae_config": VAEConfig(z_dim=2, prior="vamp", likelihood="bernoulli").to_dict(),
        "train_config": TrainConfig(data_mode="dynamic").to_dict(),
    }
    info = run_info(run, ckpt)
    assert info["name"] == "vae10" and info["epochs"] == 2 and info["test_neg_elbo"] == 120.5
    assert info["prior"] == "vamp" and info["z_dim"] == 2 and "test_nll" not in info
    text = describe_run(info)
    parts = ("vae10", "2 epochs", "120.50", "Trace_ELBO", "prior vamp", "bernoulli")
    for part in (*parts, "784-400-2", "unconditional", "binarized"):
        assert part in text, (part, text)
    (run / "eval.json").write_text(
        json.dumps({"log_likelihood": {"neg_log_likelihood": 96.9, "num_samples": 5000}})
    )
    assert "test NLL 96.90 nats (K=5000)" in describe_run(run_info(run, ckpt))
    # A VAE built in Python, without a run: the card says what the config says.
    bare = describe_run(VAEConfig(num_classes=10).to_dict())
    assert "conditional on 10 labels" in bare and "epoch" not in bare
