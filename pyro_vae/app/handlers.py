"""What each event of the explorer's page answers, on plain values: no Gradio here.

:class:`Handlers` turns what the page sends (slider coordinates, a label, a click on the pad,
the canvas's PNG, two test image indices) into what it shows (enlarged digits, the pad with its
markers, the drawing's score as Markdown), through :class:`~pyro_vae.app.explorer.Explorer`
for the model and :mod:`pyro_vae.app.view` for the pictures. :mod:`pyro_vae.app.page` lays out
the components and routes each event here. Bad input (a label out of range, an image index
outside the test set) raises ValueError, which the page shows as a message.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from pyro_vae.app.explorer import DrawingScore, Explorer, drawing_to_pixels, to_image
from pyro_vae.app.view import DIGIT, PAD_SIZE, enlarge, pad_background, pad_image, pad_to_coords

DRAW_PROMPT = "Draw a digit in the black square."  # the score's text while the canvas is blank

Point = Sequence[float]  # a point of the pad, in the page's first two coordinates


def decode_data_url(data_url: str) -> np.ndarray | None:
    """The canvas's ``data:image/png;base64,...`` URL -> the image as uint8 [h, w, channels];
    None for an empty canvas ("")."""
    if not data_url or "," not in data_url:
        return None
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))))


def describe_score(score: DrawingScore, test_neg_elbo: float | None = None) -> str:
    """A drawing's numbers as Markdown: log p(x) (log p(x | y) for the conditional VAE) and the
    -ELBO, and the test set's mean -ELBO for scale when the run recorded one."""
    given = f" \\| y = {score.label}" if score.label is not None else ""
    text = (
        f"**log p(x{given}) ≈ {score.log_likelihood:.2f} nats** (importance sampling, "
        f"K = {score.num_samples})  \n−ELBO = {score.neg_elbo:.2f} nats"
    )
    if test_neg_elbo is not None:
        text += f"  \nthe test set's mean −ELBO: {test_neg_elbo:.2f} nats"
    return text


class Handlers:
    """The page's answers for one :class:`Explorer`; ``info`` is the run's identity card
    (:func:`pyro_vae.app.view.run_info` over the model's configuration).

    ``coords`` are the sliders' values (k of them, see ``Explorer.axes``), ``residual`` [D] the
    part of z off the sliders' directions (None: none), ``drawing_point`` where the last drawing
    landed on the pad (None: no drawing). Pictures are uint8 arrays; without a pad (z_dim 1)
    the pad's picture is None.
    """

    def __init__(self, explorer: Explorer, info: dict[str, Any]) -> None:
        self.explorer = explorer
        self.info = info
        self.axes = explorer.axes
        self.num_sliders = explorer.axes.directions.shape[0]
        self.conditional = bool(explorer.num_classes)
        self.first_label = 0 if self.conditional else None  # the label the page starts with
        self.has_pad = explorer.z_dim >= 2
        self.factor = max(1, DIGIT // max(explorer.image_shape[1:]))  # shown about DIGIT across
        points, labels = explorer.coords[:, :2].numpy(), explorer.test_y.cpu().numpy()
        self.background = pad_background(points, labels, self.axes.extent) if self.has_pad else None

    def digit(self, x: Tensor) -> np.ndarray:
        """Values [C * H * W] -> the enlarged picture the page shows, uint8 [H * f, W * f]
        (and 3 colours for RGB)."""
        return enlarge(to_image(x, self.explorer.image_shape), self.factor)

    def pad(self, coords: Sequence[float], drawing_point: Point | None) -> np.ndarray | None:
        """The pad with the black ring at coords[:2] and the red dot at ``drawing_point``."""
        if not self.has_pad:
            return None
        return pad_image(self.background, self.axes.extent, tuple(coords[:2]), drawing_point)

    def decode(
        self,
        coords: Sequence[float],
        label: int | None,
        residual: Tensor | None,
        drawing_point: Point | None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """A slider or the label moved: the decoded digit and the pad."""
        x = self.explorer.decode(coords, label, residual)
        return self.digit(x), self.pad(coords, drawing_point)

    def click_pad(
        self,
        index: tuple[int, int],
        coords: Sequence[float],
        label: int | None,
        residual: Tensor | None,
        drawing_point: Point | None,
    ) -> tuple:
        """A click on pixel ``index`` (column, row) of the pad moves the first two coordinates
        there, to the sliders' step: the digit, the pad, then every slider's new value."""
        coords = list(coords)
        coords[:2] = (round(c, 2) for c in pad_to_coords(*index, self.axes.extent, PAD_SIZE))
        return (*self.decode(coords, label, residual, drawing_point), *coords)

    def sample(self, label: int | None, drawing_point: Point | None) -> tuple:
        """z ~ p(z) (or p(z | y)): the digit, the pad, every slider's value and the residual."""
        coords, residual = self.explorer.sample_prior(label)
        return (*self.decode(coords, label, residual, drawing_point), *coords, residual)

    def centre(self, label: int | None, drawing_point: Point | None) -> tuple:
        """Back to the sliders' origin: the digit, the pad, the sliders at 0, no residual."""
        zero = [0.0] * self.num_sliders
        return (*self.decode(zero, label, None, drawing_point), *zero, None)

    def drawing(self, data_url: str) -> Tensor | None:
        """The canvas's PNG -> one image in the model's data representation [C * H * W]; None
        when the canvas is empty or blank."""
        image = decode_data_url(data_url)
        if image is None:
            return None
        ex = self.explorer
        return drawing_to_pixels(
            image, likelihood=ex.vae.likelihood, shape=ex.image_shape, mode=ex.data_mode
        )

    def score_drawing(self, data_url: str, num_samples: int, coords: Sequence[float]) -> tuple:
        """A stroke ended (or K changed): the drawing as the model sees it, its reconstruction,
        its score (Markdown), p(y | x) by label (conditional VAE; else None), where it lands
        on the pad and the pad with its red dot. A blank canvas clears them."""
        x = self.drawing(data_url)
        if x is None:
            c, h, w = self.explorer.image_shape
            blank = np.zeros(
                (self.factor * h, self.factor * w, *((3,) if c == 3 else ())), np.uint8
            )
            return blank, blank, DRAW_PROMPT, None, None, self.pad(coords, None)
        s = self.explorer.score_drawing(x, int(num_samples))
        point = self.axes.to_coords(s.z.cpu())[0][:2].tolist()
        text = describe_score(s, self.info.get("test_neg_elbo"))
        probs = {str(c): p for c, p in enumerate(s.label_probabilities or [])} or None
        pictures = self.digit(s.x), self.digit(s.reconstruction)
        return *pictures, text, probs, point, self.pad(coords, point)

    def interpolate(
        self, i: int | None, j: int | None, t: float, label: int | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Test images i and j (None: 0) and the decoded point at t between their codes."""
        i, j = int(i or 0), int(j or 0)
        path = self.digit(self.explorer.interpolate(i, j, t, label))  # first: it checks i, j
        return self.digit(self.explorer.test_x[i]), path, self.digit(self.explorer.test_x[j])

    def random_pair(self, t: float, label: int | None) -> tuple:
        """Two different test images drawn with torch's RNG: i, j and what interpolate shows."""
        i, j = torch.randperm(len(self.explorer.test_x))[:2].tolist()
        return i, j, *self.interpolate(i, j, t, label)
