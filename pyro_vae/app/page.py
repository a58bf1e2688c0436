"""The explorer's page in Gradio (the ``[app]`` extra): layout and events, nothing else.

The page is built from its parts, top to bottom: the run's header, the latent pad and the
sliders with their buttons and the label, the drawing canvas and its score, the interpolation
row; then the events are wired. What each event answers lives in :mod:`pyro_vae.app.handlers`
(no Gradio), the model's work in :mod:`pyro_vae.app.explorer`, the pictures in
:mod:`pyro_vae.app.view`; :mod:`pyro_vae.app.serve` launches the page. Two bits of JavaScript
make it direct to use: a drawing canvas (white ink on black, as MNIST) and dragging over the
latent pad.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr
from torch import Tensor

from pyro_vae.app.explorer import Explorer, LatentAxes
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

# Events fired while something moves: only the latest waiting one runs, with no spinner.
_LIVE = {"trigger_mode": "always_last", "show_progress": "hidden"}


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


@dataclass(frozen=True)
class _Latent:
    """The latent half of the page: the pad (None for z_dim 1), the decoded digit, the sliders,
    the sample/centre buttons, the label and the state they share."""

    pad: gr.Image | None
    decoded: gr.Image
    sliders: list[gr.Slider]
    sample: gr.Button
    centre: gr.Button
    label: gr.Radio
    residual: gr.State  # the part of z off the sliders' directions
    drawing_point: gr.State  # where the last drawing landed on the pad

    @property
    def pad_out(self) -> list[gr.Image]:
        """The pad as an output, where there is one."""
        return [] if self.pad is None else [self.pad]

    @property
    def decode_inputs(self) -> list:
        """What decoding a point reads: the sliders, the label and the state."""
        return [*self.sliders, self.label, self.residual, self.drawing_point]

    @property
    def decode_outputs(self) -> list[gr.Image]:
        """What decoding a point shows: the digit and the pad."""
        return [self.decoded, *self.pad_out]


@dataclass(frozen=True)
class _Drawing:
    """The drawing row: the canvas and K in, the drawing, its reconstruction and score out."""

    canvas: gr.HTML
    num_samples: gr.Radio
    seen: gr.Image
    reconstruction: gr.Image
    score: gr.Markdown
    classes: gr.Label


@dataclass(frozen=True)
class _Interpolation:
    """The interpolation row: two indices, a random pair, t, and the three pictures; the path
    is decoded with the latent half's label."""

    index_a: gr.Number
    index_b: gr.Number
    random_pair: gr.Button
    t: gr.Slider
    views: list[gr.Image]
    label: gr.Radio

    @property
    def inputs(self) -> list:
        return [self.index_a, self.index_b, self.t, self.label]


def _image(label: str, value, elem_id: str, size: int = DIGIT) -> gr.Image:
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


def _run_header(info: dict[str, Any]) -> None:
    gr.Markdown("## Latent-space explorer\n" + describe_run(info), elem_id="run-info")


def _pad_axes(ax: LatentAxes) -> str:
    """What the pad's axes are, for its caption."""
    if ax.principal:
        return (
            "principal directions 1 and 2 of the encoded test set, in standard "
            f"deviations ({ax.share[0]:.0%} and {ax.share[1]:.0%} of the variance)"
        )
    return "z₁ across, z₂ up"


def _latent_pad(h: Handlers) -> gr.Image:
    with gr.Column():
        at_centre = h.pad([0.0] * h.num_sliders, None)
        pad = _image("latent space: click or drag", at_centre, "latent-pad", PAD_SIZE)
        gr.HTML(
            f"<p>Test digits at the means of q(z | x), coloured by label; {_pad_axes(h.axes)}. "
            "The black ring is the decoded point, the red dot your drawing.</p>",
            js_on_load=PAD_DRAG_JS,
        )
    return pad


def _sliders(ax: LatentAxes, k: int) -> list[gr.Slider]:
    names = (
        [f"direction {i + 1} ({ax.share[i]:.0%})" for i in range(k)]
        if ax.principal
        else [f"z{i + 1}" for i in range(k)]
    )
    return [
        gr.Slider(-ax.extent, ax.extent, value=0.0, step=0.01, label=n, elem_id=f"slider-{i}")
        for i, n in enumerate(names)
    ]


def _sample_and_centre_buttons() -> tuple[gr.Button, gr.Button]:
    with gr.Row():
        sample = gr.Button("Sample from the prior", elem_id="sample")
        centre = gr.Button("Back to the centre", elem_id="centre")
    return sample, centre


def _label_choice(h: Handlers) -> gr.Radio:
    return gr.Radio(
        list(range(h.explorer.num_classes)),
        value=h.first_label,
        label="label y: this z decoded as digit y",
        elem_id="label",
        visible=h.conditional,
    )


def _latent_row(h: Handlers) -> _Latent:
    """The pad beside the decoded digit, its sliders, buttons and label."""
    residual, drawing_point = gr.State(None), gr.State(None)
    with gr.Row():
        pad = _latent_pad(h) if h.has_pad else None
        with gr.Column():
            zero = [0.0] * h.num_sliders
            decoded = _image(
                "decoded: mean of p(x | z)", h.decode(zero, h.first_label, None, None)[0], "decoded"
            )
            sliders = _sliders(h.axes, h.num_sliders)
            sample, centre = _sample_and_centre_buttons()
            label = _label_choice(h)
    return _Latent(pad, decoded, sliders, sample, centre, label, residual, drawing_point)


def _canvas(h: Handlers) -> tuple[gr.HTML, gr.Radio]:
    """The drawing canvas and the choice of K for its score."""
    with gr.Column():
        canvas = gr.HTML("", elem_id="drawing", html_template=CANVAS_HTML, js_on_load=CANVAS_JS)
        num_samples = gr.Radio(
            list(NUM_SAMPLES),
            value=DEFAULT_NUM_SAMPLES[h.conditional],
            label="importance samples K",
            elem_id="num-samples",
        )
    return canvas, num_samples


def _drawing_score(h: Handlers) -> tuple[gr.Markdown, gr.Label]:
    """The drawing's numbers, and p(y | x) for the conditional VAE."""
    with gr.Column():
        score = gr.Markdown(DRAW_PROMPT, elem_id="drawing-score")
        where = (
            "q(y | x), the semi-supervised VAE's classifier"
            if h.explorer.vae.semi_supervised
            else "p(y | x) from log p(x | y), uniform p(y)"
        )
        classes = gr.Label(
            label=where,
            num_top_classes=h.explorer.num_classes or 1,
            elem_id="drawing-classes",
            visible=h.conditional,
        )
    return score, classes


def _drawing_row(h: Handlers) -> _Drawing:
    gr.Markdown("### Draw your own digit")
    with gr.Row():
        canvas, num_samples = _canvas(h)
        seen = _image("as the model sees it", None, "drawing-input")
        reconstruction = _image("reconstruction", None, "drawing-reconstruction")
        score, classes = _drawing_score(h)
    return _Drawing(canvas, num_samples, seen, reconstruction, score, classes)


def _interpolation_row(h: Handlers, label: gr.Radio) -> _Interpolation:
    gr.Markdown("### Interpolation between two test images")
    last = len(h.explorer.test_x) - 1
    with gr.Row():
        index = {"precision": 0, "minimum": 0, "maximum": last}
        index_a = gr.Number(0, label=f"image A (0 to {last})", elem_id="index-a", **index)
        index_b = gr.Number(1, label="image B", elem_id="index-b", **index)
        random_pair = gr.Button("Random pair", elem_id="random-pair")
    t = gr.Slider(
        0.0, 1.0, value=0.5, step=0.01, label="t: from A's code (0) to B's (1)", elem_id="t"
    )
    with gr.Row():
        labels = ("A", "decoded at (1 - t) z_A + t z_B", "B")
        values = h.interpolate(0, 1, 0.5, h.first_label)
        ids = ("image-a", "path", "image-b")
        views = [_image(n, v, e) for n, v, e in zip(labels, values, ids, strict=True)]
    return _Interpolation(index_a, index_b, random_pair, t, views, label)


def _wire_latent(events: _Events, latent: _Latent) -> None:
    """Sliders and the pad decode as they move; the buttons move every slider."""
    for slider in latent.sliders:
        slider.input(events.on_sliders, latent.decode_inputs, latent.decode_outputs, **_LIVE)
    if latent.pad is not None:
        outputs = [latent.decoded, latent.pad, *latent.sliders]
        latent.pad.select(events.on_pad, latent.decode_inputs, outputs, **_LIVE)
    moved = [*latent.decode_outputs, *latent.sliders, latent.residual]
    latent.sample.click(events.on_sample, [latent.label, latent.drawing_point], moved)
    latent.centre.click(events.on_centre, [latent.label, latent.drawing_point], moved)


def _wire_drawing(events: _Events, drawing: _Drawing, latent: _Latent) -> None:
    """A stroke ending, or another K, scores the drawing and marks it on the pad."""
    inputs = [drawing.canvas, drawing.num_samples, *latent.sliders]
    shown = [drawing.seen, drawing.reconstruction, drawing.score, drawing.classes]
    outputs = [*shown, latent.drawing_point, *latent.pad_out]
    drawing.canvas.change(events.on_draw, inputs, outputs, trigger_mode="always_last")
    drawing.num_samples.change(events.on_draw, inputs, outputs)


def _wire_interpolation(events: _Events, interp: _Interpolation) -> None:
    """A new index (on Enter) or t redraws the path; Random pair picks both indices."""
    for trigger in (interp.index_a.submit, interp.index_b.submit, interp.t.input):
        trigger(events.on_interpolate, interp.inputs, interp.views, **_LIVE)
    outputs = [interp.index_a, interp.index_b, *interp.views]
    interp.random_pair.click(events.on_random_pair, [interp.t, interp.label], outputs)


def _wire_label(events: _Events, latent: _Latent, interp: _Interpolation) -> None:
    """Another label redecodes the point and the interpolation path."""
    latent.label.change(events.on_sliders, latent.decode_inputs, latent.decode_outputs)
    latent.label.change(events.on_interpolate, interp.inputs, interp.views)


def build_explorer(
    vae: VAE,
    test_x: Tensor,
    test_y: Tensor,
    run_info: dict[str, Any] | None = None,
    *,
    image_shape: tuple[int, ...] | None = None,
    data_mode: str | None = None,
) -> gr.Blocks:
    """The explorer's page for ``vae`` (any :class:`pyro_vae.VAE`, in eval mode on its device).

    test_x [M, C * H * W] in the data representation the model was trained on, test_y [M]
    labels, on the VAE's device; ``image_shape`` (C, H, W) and ``data_mode`` as for
    :class:`Explorer`.
    ``run_info``: the identity card (see :func:`pyro_vae.app.view.run_info`); the model's
    configuration fills in what it lacks. Launch the result with :func:`launch`.
    """
    ex = Explorer(vae, test_x, test_y, image_shape=image_shape, data_mode=data_mode)
    handlers = Handlers(ex, {**vae.config.to_dict(), **(run_info or {})})
    events = _Events(handlers)
    # Every picture sent is a file in Gradio's cache: files older than an hour go, hourly.
    with gr.Blocks(
        analytics_enabled=False, title="pyro-vae explorer", delete_cache=(3600, 3600)
    ) as demo:
        _run_header(handlers.info)
        latent = _latent_row(handlers)
        drawing = _drawing_row(handlers)
        interp = _interpolation_row(handlers, latent.label)
        _wire_latent(events, latent)
        _wire_drawing(events, drawing, latent)
        _wire_interpolation(events, interp)
        _wire_label(events, latent, interp)
    return demo
