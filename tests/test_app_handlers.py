"""What each event of the explorer's page answers (pyro_vae.app.handlers), without Gradio or a
browser. The oracles are the pieces each answer is made of: the Explorer's model calls, the
view's pictures and the pad's map from pixels to points."""

from __future__ import annotations

import base64
import io
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from pyro_vae import VAE
from pyro_vae.app.explorer import DrawingScore, Explorer, drawing_to_pixels, to_image
from pyro_vae.app.handlers import DRAW_PROMPT, Handlers, decode_data_url, describe_score
from pyro_vae.app.view import (
    CURRENT_COLOR,
    DRAWING_COLOR,
    PAD_SIZE,
    coords_to_pad,
    enlarge,
    pad_image,
    pad_to_coords,
)
from pyro_vae.runtime.rng import seeded

N = 32  # test images


def make_handlers(z_dim: int, num_classes: int = 0, info=None, shape=None) -> Handlers:
    g = torch.Generator().manual_seed(1)
    x = torch.bernoulli(torch.full((N, 784), 0.2), generator=g)
    y = torch.randint(0, 10, (N,), generator=g)
    vae = VAE(z_dim=z_dim, hidden_dims=(16,), num_classes=num_classes)
    return Handlers(Explorer(vae, x, y, image_shape=shape), info or {})


def stroke() -> np.ndarray:
    """A slanted white bar on a black 280x280 RGBA canvas, as the page's canvas draws it."""
    img = np.zeros((280, 280, 4), np.uint8)
    img[..., 3] = 255
    for i in range(150):
        img[40 + i, 60 + i // 3 : 84 + i // 3, :3] = 255
    return img


def data_url(img: np.ndarray) -> str:
    """What the canvas posts: its PNG as a data URL."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def pixel(img: np.ndarray, u: float, v: float, extent: float) -> np.ndarray:
    px, py = (round(c) for c in coords_to_pad(u, v, extent, img.shape[0]))
    return img[py, px]


def test_the_handlers_need_no_gradio():
    code = (
        "import sys\nimport pyro_vae.app.handlers\n"
        "assert 'gradio' not in sys.modules, 'gradio imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_a_point_shows_the_explorers_digit_and_the_pad_with_its_markers():
    h = make_handlers(3)
    coords, residual, drawn = [0.5, -1.0, 0.2], 0.1 * torch.randn(3), [1.0, 1.5]
    digit, pad = h.decode(coords, None, residual, drawn)
    expected = enlarge(to_image(h.explorer.decode(coords, None, residual)), 8)
    assert digit.shape == (224, 224) and np.array_equal(digit, expected)
    assert np.array_equal(pad, pad_image(h.background, h.axes.extent, (0.5, -1.0), drawn))
    assert (pixel(pad, *drawn, h.axes.extent) == DRAWING_COLOR).all()
    assert not np.array_equal(pad, h.pad(coords, None))  # negative control: no red dot there
    one = make_handlers(1)  # z_dim 1: no pad, the digit still
    digit, pad = one.decode([0.3], None, None, None)
    assert pad is None and np.array_equal(digit, one.digit(one.explorer.decode([0.3])))


def test_a_click_on_the_pad_moves_the_first_two_sliders_to_its_point():
    h = make_handlers(3)
    coords = [0.5, -1.0, 0.2]
    digit, pad, *sliders = h.click_pad((90, 270), coords, None, None, None)
    u, v = pad_to_coords(90, 270, h.axes.extent, PAD_SIZE)
    assert u < 0 and v < 0  # the lower left of the pad
    assert sliders == [round(u, 2), round(v, 2), 0.2] and coords == [0.5, -1.0, 0.2]
    assert np.array_equal(digit, h.decode(sliders, None, None, None)[0])
    cx, cy = coords_to_pad(*sliders[:2], h.axes.extent, PAD_SIZE)
    assert abs(cx - 90) < 1 and abs(cy - 270) < 1
    assert (pad[round(cy), round(cx + 7)] == CURRENT_COLOR).all()  # the ring around the click


def test_sample_and_centre_set_every_slider():
    h = make_handlers(5, num_classes=10)
    with seeded(4):
        digit, pad, *sliders, residual = h.sample(3, None)
    with seeded(4):
        coords, expected_residual = h.explorer.sample_prior(3)
    assert sliders == coords and len(sliders) == h.num_sliders == 5
    assert torch.equal(residual, expected_residual)
    assert np.array_equal(digit, h.decode(coords, 3, residual, None)[0])
    centre, _, *zeros, no_residual = h.centre(3, None)
    assert zeros == [0.0] * 5 and no_residual is None
    assert np.array_equal(centre, h.digit(h.explorer.decode([0.0] * 5, 3)))
    assert not np.array_equal(centre, digit)


def test_a_drawing_is_scored_and_marked_where_it_lands():
    h = make_handlers(2, info={"test_neg_elbo": 101.5})
    seen, recon, text, probs, point, pad = h.score_drawing(data_url(stroke()), 20, [0.0, 0.0])
    x = drawing_to_pixels(stroke(), binary=True)  # the test set is binary: so is the drawing
    s = h.explorer.score_drawing(x, 20)
    assert np.array_equal(seen, h.digit(x)) and np.array_equal(recon, h.digit(s.reconstruction))
    assert text == describe_score(s, 101.5) and "K = 20" in text and "101.50" in text
    assert probs is None
    assert point == pytest.approx(s.z.tolist(), abs=1e-5)  # z_dim 2: the pad is z itself
    assert (pixel(pad, *point, h.axes.extent) == DRAWING_COLOR).all()
    assert h.score_drawing(data_url(stroke()), 20, [0.0, 0.0])[2] == text  # seeded: the same


def test_a_blank_canvas_clears_the_drawings_pictures_and_score():
    h = make_handlers(2, shape=(14, 56))  # shown 4x: 56 pixels along the longer side -> 224
    blank_canvas = np.zeros((280, 280, 4), np.uint8)
    for url in ("", data_url(blank_canvas)):
        seen, recon, text, probs, point, pad = h.score_drawing(url, 20, [1.0, -1.0])
        assert seen.shape == recon.shape == (56, 224) and not seen.any() and not recon.any()
        assert text == DRAW_PROMPT and probs is None and point is None
        assert np.array_equal(pad, h.pad([1.0, -1.0], None))


def test_the_cvae_score_names_its_label_and_gives_p_y_given_x():
    h = make_handlers(2, num_classes=10)
    _, _, text, probs, _, _ = h.score_drawing(data_url(stroke()), 10, [0.0, 0.0])
    s = h.explorer.score_drawing(drawing_to_pixels(stroke(), binary=True), 10)
    assert f"**log p(x \\| y = {s.label}) ≈ {s.log_likelihood:.2f} nats**" in text
    assert list(probs) == [str(c) for c in range(10)]
    assert list(probs.values()) == pytest.approx(s.label_probabilities)
    assert sum(probs.values()) == pytest.approx(1)


def test_the_score_reads_as_the_page_shows_it():
    s = DrawingScore(x=torch.zeros(4), reconstruction=torch.zeros(4), z=torch.zeros(2),
                     neg_elbo=100.004, log_likelihood=-95.456, num_samples=1000)  # fmt: skip
    one = "**log p(x) ≈ -95.46 nats** (importance sampling, K = 1000)  \n−ELBO = 100.00 nats"
    assert describe_score(s) == one
    assert describe_score(s, 98.5) == one + "  \nthe test set's mean −ELBO: 98.50 nats"
    for label in (0, 7):  # the conditional VAE's best label, 0 included
        s.label = label
        assert describe_score(s).startswith(f"**log p(x \\| y = {label}) ≈ -95.46 nats**")


def test_interpolation_shows_both_images_and_the_decoded_point_between():
    h = make_handlers(4)
    a, path, b = h.interpolate(3, 7, 0.25, None)
    assert np.array_equal(a, h.digit(h.explorer.test_x[3]))
    assert np.array_equal(b, h.digit(h.explorer.test_x[7]))
    assert np.array_equal(path, h.digit(h.explorer.interpolate(3, 7, 0.25)))
    assert not np.array_equal(path, h.interpolate(3, 7, 0.75, None)[1])
    empty = h.interpolate(None, None, 0.0, None)  # an emptied index box reads 0
    assert np.array_equal(empty[0], h.digit(h.explorer.test_x[0]))
    with pytest.raises(ValueError, match=rf"index {N} is outside \[0, {N}\)"):
        h.interpolate(0, N, 0.5, None)
    with seeded(2):
        i, j, *views = h.random_pair(0.5, None)
    assert i != j and 0 <= i < N and 0 <= j < N
    for view, expected in zip(views, h.interpolate(i, j, 0.5, None), strict=True):
        assert np.array_equal(view, expected)


def test_the_canvas_data_url_decodes_to_its_image():
    img = stroke()
    assert np.array_equal(decode_data_url(data_url(img)), img)
    assert decode_data_url("") is None and decode_data_url("not a data url") is None
