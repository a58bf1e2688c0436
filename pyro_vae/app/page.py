"""The explorer's page in Gradio (the ``[app]`` extra): layout and events, nothing else.

The model's work lives in :mod:`pyro_vae.app.explorer`, the pictures in :mod:`pyro_vae.app.view`;
:mod:`pyro_vae.app.serve` launches the page. Two bits of JavaScript make it direct to use: a
drawing canvas (white ink on black, as MNIST) and dragging over the latent pad.
"""

from __future__ import annotations

import base64
import functools
import io
from collections.abc import Callable
from typing import Any

import gradio as gr
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from pyro_vae.app.explorer import Explorer, drawing_to_pixels, to_image
from pyro_vae.app.view import (
    DIGIT_SCALE,
    PAD_SIZE,
    describe_run,
    enlarge,
    pad_background,
    pad_image,
    pad_to_coords,
)
from pyro_vae.models.vae import VAE

NUM_SAMPLES = (1, 10, 100, 1000, 5000)  # the choices of K for scoring a drawing
# Default K: about 50 ms per drawing on one CPU thread for the default network (784-400-50);
# the conditional VAE scores all 10 labels, so 100 there (benchmarks/explorer_latency.py).
DEFAULT_NUM_SAMPLES = {False: 1000, True: 100}
CANVAS = 280  # drawing canvas, pixels per side (10 per MNIST pixel)
DIGIT = 28 * DIGIT_SCALE
# The canvas posts a PNG of the drawing (white ink on black, as MNIST) when a stroke ends.
CANVAS_JS = """
const c = element.querySelector('canvas');
const ctx = c.getContext('2d');
const clear = () => { ctx.fillStyle = '#000'; ctx.fillRect(0, 0, c.width, c.height); };
clear();
let last = null;
const at = (e) => { const r = c.getBoundingClientRect();
  return [(e.clientX - r.left) * c.width / r.width, (e.clientY - r.top) * c.height / r.height]; };
const line = (a, b) => { ctx.strokeStyle = '#fff'; ctx.lineWidth = 22; ctx.lineCap = 'round';
  ctx.beginPath(); ctx.moveTo(a[0], a[1]); ctx.lineTo(b[0], b[1]); ctx.stroke(); };
c.addEventListener('pointerdown', (e) => { last = at(e); c.setPointerCapture(e.pointerId);
  line(last, last); });
c.addEventListener('pointermove', (e) => { if (!last) return; const p = at(e); line(last, p);
  last = p; });
const end = () => { if (!last) return; last = null; props.value = c.toDataURL('image/png');
  trigger('change'); };
c.addEventListener('pointerup', end);
c.addEventListener('pointercancel', end);
element.querySelector('button').addEventListener('click', () => { clear(); props.value = '';
  trigger('change'); });
"""
CANVAS_HTML = (
    f"<canvas width='{CANVAS}' height='{CANVAS}' style='width:{CANVAS}px;height:{CANVAS}px;"
    "touch-action:none;cursor:crosshair'></canvas><br><button class='lg secondary'>Clear</button>"
)
# Dragging over the pad: Gradio's image reports clicks only, so a held-down pointer moving
# over it sends clicks (Gradio keeps only the latest while one is running).
PAD_DRAG_JS = """
if (!window.pyroVaePadDrag) {
  window.pyroVaePadDrag = true;
  const style = document.createElement('style');
  style.textContent = '#latent-pad img { cursor: crosshair; -webkit-user-drag: none; '
    + 'user-select: none; touch-action: none; }';
  document.head.appendChild(style);
  let last = 0;
  document.addEventListener('dragstart', (e) => {
    if (e.target.closest && e.target.closest('#latent-pad')) e.preventDefault(); });
  document.addEventListener('pointermove', (e) => {
    const img = (e.buttons & 1) && e.target.closest && e.target.closest('#latent-pad img');
    if (!img || performance.now() - last < 30) return;
    last = performance.now();
    img.dispatchEvent(new MouseEvent('click', {bubbles: true, clientX: e.clientX,
      clientY: e.clientY}));
  });
}
"""


def _on_page(fn: Callable) -> Callable:
    """A handler whose ValueError (bad input, e.g. an image index out of range) shows on the
    page as a message instead of a server traceback."""

    @functools.wraps(fn)  # keeps the signature: Gradio reads the type hints of event data
    def handler(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ValueError as e:
            raise gr.Error(str(e)) from None

    return handler


def _decode_png(data_url: str) -> np.ndarray | None:
    if not data_url or "," not in data_url:
        return None
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))))


def build_explorer(
    vae: VAE,
    test_x: Tensor,
    test_y: Tensor,
    run_info: dict[str, Any] | None = None,
    *,
    image_shape: tuple[int, int] | None = None,
    data_mode: str | None = None,
) -> gr.Blocks:
    """The explorer's page for ``vae`` (any :class:`pyro_vae.VAE`, in eval mode on its device).

    test_x [M, H * W] in the data representation the model was trained on, test_y [M] labels,
    on the VAE's device; ``image_shape`` (H, W) and ``data_mode`` as for :class:`Explorer`.
    ``run_info``: the identity card (see :func:`app_view.run_info`); the model's configuration
    fills in what it lacks. Launch the result with :func:`launch`.
    """
    ex = Explorer(vae, test_x, test_y, image_shape=image_shape, data_mode=data_mode)
    factor = max(1, DIGIT // max(ex.image_shape))  # shown about DIGIT pixels across

    def _digit(x: Tensor) -> np.ndarray:
        return enlarge(to_image(x, ex.image_shape), factor)

    ax, k = ex.axes, ex.axes.directions.shape[0]
    info = {**vae.config.to_dict(), **(run_info or {})}
    cond = bool(ex.num_classes)
    has_pad = ex.z_dim >= 2
    bg = (
        pad_background(ex.coords[:, :2].numpy(), test_y.cpu().numpy(), ax.extent)
        if has_pad
        else None
    )
    n_test = len(test_x)

    def pad(coords, drawing_point) -> np.ndarray | None:
        return pad_image(bg, ax.extent, tuple(coords[:2]), drawing_point) if has_pad else None

    def decoded(coords, label, residual, drawing_point):
        return _digit(ex.decode(coords, label, residual)), pad(coords, drawing_point)

    @_on_page
    def on_sliders(*args):
        *coords, label, residual, drawing_point = args
        return decoded(coords, label, residual, drawing_point)

    @_on_page
    def on_pad(evt: gr.SelectData, *args):  # Gradio fills evt by its type hint
        *coords, label, residual, drawing_point = args
        coords[:2] = (round(c, 2) for c in pad_to_coords(*evt.index, ax.extent, PAD_SIZE))
        return (*decoded(coords, label, residual, drawing_point), *coords)

    @_on_page
    def on_sample(label, drawing_point):
        coords, residual = ex.sample_prior(label)
        return (*decoded(coords, label, residual, drawing_point), *coords, residual)

    @_on_page
    def on_centre(label, drawing_point):
        return (*decoded([0.0] * k, label, None, drawing_point), *([0.0] * k), None)

    @_on_page
    def on_draw(data_url, num_samples, *coords):
        image = _decode_png(data_url)
        x = (
            None
            if image is None
            else drawing_to_pixels(
                image, likelihood=vae.likelihood, shape=ex.image_shape, mode=ex.data_mode
            )
        )
        if x is None:
            blank = np.zeros(tuple(factor * d for d in ex.image_shape), np.uint8)
            return blank, blank, "Draw a digit in the black square.", None, None, pad(coords, None)
        s = ex.score_drawing(x, int(num_samples))
        u = ax.to_coords(s.z.cpu())[0][:2].tolist()
        given = f" \\| y = {s.label}" if cond else ""
        text = (
            f"**log p(x{given}) ≈ {s.log_likelihood:.2f} nats** (importance sampling, "
            f"K = {s.num_samples})  \n−ELBO = {s.neg_elbo:.2f} nats"
        )
        if info.get("test_neg_elbo") is not None:
            text += f"  \nthe test set's mean −ELBO: {info['test_neg_elbo']:.2f} nats"
        probs = {str(c): p for c, p in enumerate(s.label_probabilities or [])} or None
        return _digit(s.x), _digit(s.reconstruction), text, probs, u, pad(coords, u)

    @_on_page
    def on_interpolate(i, j, t, label):
        i, j = int(i or 0), int(j or 0)
        path = _digit(ex.interpolate(i, j, t, label))  # first: it checks the indices
        return _digit(ex.test_x[i]), path, _digit(ex.test_x[j])

    @_on_page
    def on_random_pair(t, label):
        i, j = torch.randperm(n_test)[:2].tolist()
        return i, j, *on_interpolate(i, j, t, label)

    def image(label, value, elem_id, size=DIGIT):
        return gr.Image(
            value,
            label=label,
            elem_id=elem_id,
            interactive=False,
            format="png",
            height=size,
            width=size,
            buttons=[],
        )

    zero = [0.0] * k
    label0 = 0 if cond else None
    # Every picture sent is a file in Gradio's cache: files older than an hour go, hourly.
    with gr.Blocks(
        analytics_enabled=False, title="pyro-vae explorer", delete_cache=(3600, 3600)
    ) as demo:
        gr.Markdown("## Latent-space explorer\n" + describe_run(info), elem_id="run-info")
        residual, drawing_point = gr.State(None), gr.State(None)
        with gr.Row():
            if has_pad:
                with gr.Column():
                    pad_view = image(
                        "latent space: click or drag", pad(zero, None), "latent-pad", PAD_SIZE
                    )
                    what = (
                        "principal directions 1 and 2 of the encoded test set, in standard "
                        f"deviations ({ax.share[0]:.0%} and {ax.share[1]:.0%} of the variance)"
                        if ax.principal
                        else "z₁ across, z₂ up"
                    )
                    gr.HTML(
                        f"<p>Test digits at the means of q(z | x), coloured by label; {what}. "
                        "The black ring is the decoded point, the red dot your drawing.</p>",
                        js_on_load=PAD_DRAG_JS,
                    )
            with gr.Column():
                decoded_view = image(
                    "decoded: mean of p(x | z)", decoded(zero, label0, None, None)[0], "decoded"
                )
                names = (
                    [f"direction {i + 1} ({ax.share[i]:.0%})" for i in range(k)]
                    if ax.principal
                    else [f"z{i + 1}" for i in range(k)]
                )
                sliders = [
                    gr.Slider(
                        -ax.extent, ax.extent, value=0.0, step=0.01, label=n, elem_id=f"slider-{i}"
                    )
                    for i, n in enumerate(names)
                ]
                with gr.Row():
                    sample_btn = gr.Button("Sample from the prior", elem_id="sample")
                    centre_btn = gr.Button("Back to the centre", elem_id="centre")
                label = gr.Radio(
                    list(range(ex.num_classes)),
                    value=label0,
                    label="label y: this z decoded as digit y",
                    elem_id="label",
                    visible=cond,
                )
        gr.Markdown("### Draw your own digit")
        with gr.Row():
            with gr.Column():
                canvas = gr.HTML(
                    "", elem_id="drawing", html_template=CANVAS_HTML, js_on_load=CANVAS_JS
                )
                num_samples = gr.Radio(
                    list(NUM_SAMPLES),
                    value=DEFAULT_NUM_SAMPLES[cond],
                    label="importance samples K",
                    elem_id="num-samples",
                )
            drawn_view = image("as the model sees it", None, "drawing-input")
            recon_view = image("reconstruction", None, "drawing-reconstruction")
            with gr.Column():
                score = gr.Markdown("Draw a digit in the black square.", elem_id="drawing-score")
                classes = gr.Label(
                    label="p(y | x) from log p(x | y), uniform p(y)",
                    num_top_classes=ex.num_classes or 1,
                    elem_id="drawing-classes",
                    visible=cond,
                )
        gr.Markdown("### Interpolation between two test images")
        with gr.Row():
            ia = gr.Number(
                0,
                label=f"image A (0 to {n_test - 1})",
                precision=0,
                minimum=0,
                maximum=n_test - 1,
                elem_id="index-a",
            )
            ib = gr.Number(
                1, label="image B", precision=0, minimum=0, maximum=n_test - 1, elem_id="index-b"
            )
            random_btn = gr.Button("Random pair", elem_id="random-pair")
        t = gr.Slider(
            0.0, 1.0, value=0.5, step=0.01, label="t: from A's code (0) to B's (1)", elem_id="t"
        )
        with gr.Row():
            views = [
                image(n, v, e)
                for n, v, e in zip(
                    ("A", "decoded at (1 - t) z_A + t z_B", "B"),
                    on_interpolate(0, 1, 0.5, label0),
                    ("image-a", "path", "image-b"),
                    strict=True,
                )
            ]

        pad_out = [pad_view] if has_pad else []
        for s in sliders:
            s.input(
                on_sliders,
                [*sliders, label, residual, drawing_point],
                [decoded_view, *pad_out],
                trigger_mode="always_last",
                show_progress="hidden",
            )
        if has_pad:
            pad_view.select(
                on_pad,
                [*sliders, label, residual, drawing_point],
                [decoded_view, pad_view, *sliders],
                trigger_mode="always_last",
                show_progress="hidden",
            )
        sample_btn.click(
            on_sample, [label, drawing_point], [decoded_view, *pad_out, *sliders, residual]
        )
        centre_btn.click(
            on_centre, [label, drawing_point], [decoded_view, *pad_out, *sliders, residual]
        )
        draw_out = [drawn_view, recon_view, score, classes, drawing_point, *pad_out]
        canvas.change(
            on_draw, [canvas, num_samples, *sliders], draw_out, trigger_mode="always_last"
        )
        num_samples.change(on_draw, [canvas, num_samples, *sliders], draw_out)
        interp_in = [ia, ib, t, label]
        for trigger in (ia.submit, ib.submit, t.input):
            trigger(
                on_interpolate, interp_in, views, trigger_mode="always_last", show_progress="hidden"
            )
        random_btn.click(on_random_pair, [t, label], [ia, ib, *views])
        label.change(
            on_sliders, [*sliders, label, residual, drawing_point], [decoded_view, *pad_out]
        )
        label.change(on_interpolate, interp_in, views)
    return demo
