"""The explorer's page in Gradio (the ``[app]`` extra): layout and events, nothing else.

What each event answers lives in :mod:`pyro_vae.app.handlers` (no Gradio), the model's work in
:mod:`pyro_vae.app.explorer`, the pictures in :mod:`pyro_vae.app.view`; :mod:`pyro_vae.app.serve`
launches the page. Two bits of JavaScript make it direct to use: a drawing canvas (white ink on
black, as MNIST) and dragging over the latent pad.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import gradio as gr
from torch import Tensor

from pyro_vae.app.explorer import Explorer
from pyro_vae.app.handlers import DRAW_PROMPT, Handlers
from pyro_vae.app.view import DIGIT, PAD_SIZE, describe_run
from pyro_vae.models.vae import VAE

NUM_SAMPLES = (1, 10, 100, 1000, 5000)  # the choices of K for scoring a drawing
# Default K: about 50 ms per drawing on one CPU thread for the default network (784-400-50);
# the conditional VAE scores all 10 labels, so 100 there (benchmarks/explorer_latency.py).
DEFAULT_NUM_SAMPLES = {False: 1000, True: 100}
CANVAS = 280  # drawing canvas, pixels per side (10 per MNIST pixel)
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


class _Events:
    """The handlers as Gradio calls them: one argument per input component, in the inputs'
    order, one value per output. Each method's name is its event's API name."""

    def __init__(self, handlers: Handlers) -> None:
        self.handlers = handlers

    @_on_page
    def on_sliders(self, *args):
        *coords, label, residual, drawing_point = args
        return self.handlers.decode(coords, label, residual, drawing_point)

    @_on_page
    def on_pad(self, evt: gr.SelectData, *args):  # Gradio fills evt by its type hint
        *coords, label, residual, drawing_point = args
        return self.handlers.click_pad(evt.index, coords, label, residual, drawing_point)

    @_on_page
    def on_sample(self, label, drawing_point):
        return self.handlers.sample(label, drawing_point)

    @_on_page
    def on_centre(self, label, drawing_point):
        return self.handlers.centre(label, drawing_point)

    @_on_page
    def on_draw(self, data_url, num_samples, *coords):
        return self.handlers.score_drawing(data_url, num_samples, coords)

    @_on_page
    def on_interpolate(self, i, j, t, label):
        return self.handlers.interpolate(i, j, t, label)

    @_on_page
    def on_random_pair(self, t, label):
        return self.handlers.random_pair(t, label)


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
    h = Handlers(ex, {**vae.config.to_dict(), **(run_info or {})})
    events = _Events(h)
    ax, k, info, cond, has_pad = h.axes, h.num_sliders, h.info, h.conditional, h.has_pad
    n_test = len(test_x)

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
                        "latent space: click or drag", h.pad(zero, None), "latent-pad", PAD_SIZE
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
                    "decoded: mean of p(x | z)", h.decode(zero, label0, None, None)[0], "decoded"
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
                score = gr.Markdown(DRAW_PROMPT, elem_id="drawing-score")
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
                    h.interpolate(0, 1, 0.5, label0),
                    ("image-a", "path", "image-b"),
                    strict=True,
                )
            ]

        pad_out = [pad_view] if has_pad else []
        for s in sliders:
            s.input(
                events.on_sliders,
                [*sliders, label, residual, drawing_point],
                [decoded_view, *pad_out],
                trigger_mode="always_last",
                show_progress="hidden",
            )
        if has_pad:
            pad_view.select(
                events.on_pad,
                [*sliders, label, residual, drawing_point],
                [decoded_view, pad_view, *sliders],
                trigger_mode="always_last",
                show_progress="hidden",
            )
        sample_btn.click(
            events.on_sample, [label, drawing_point], [decoded_view, *pad_out, *sliders, residual]
        )
        centre_btn.click(
            events.on_centre, [label, drawing_point], [decoded_view, *pad_out, *sliders, residual]
        )
        draw_out = [drawn_view, recon_view, score, classes, drawing_point, *pad_out]
        canvas.change(
            events.on_draw, [canvas, num_samples, *sliders], draw_out, trigger_mode="always_last"
        )
        num_samples.change(events.on_draw, [canvas, num_samples, *sliders], draw_out)
        interp_in = [ia, ib, t, label]
        for trigger in (ia.submit, ib.submit, t.input):
            trigger(
                events.on_interpolate,
                interp_in,
                views,
                trigger_mode="always_last",
                show_progress="hidden",
            )
        random_btn.click(events.on_random_pair, [t, label], [ia, ib, *views])
        label.change(
            events.on_sliders, [*sliders, label, residual, drawing_point], [decoded_view, *pad_out]
        )
        label.change(events.on_interpolate, interp_in, views)
    return demo
