"""Server-side cost of each interaction of the latent-space explorer (``pyro-vae serve``).

Times, on one CPU thread, the Python work behind each event of the page: the model's batch
(pyro_vae.app.explorer), the pictures (pyro_vae.app.view) and the PNG encoding of every
image sent back, as Gradio does it. What is not timed: Gradio's queue and HTTP round trip,
and the browser.

    python benchmarks/explorer_latency.py                      # the default network, 784-400-50
    python benchmarks/explorer_latency.py --num-classes 10     # the CVAE: every label per drawing

The weights are random (a run's weights cost the same); the test set is 10,000 random binary
images, encoded once at start-up as ``pyro-vae serve`` encodes the real one.
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import time
from collections.abc import Callable

import numpy as np
import pyro
import torch
from PIL import Image

from pyro_vae import VAE
from pyro_vae.app.explorer import Explorer, drawing_to_pixels, to_image
from pyro_vae.app.view import enlarge, pad_background, pad_image


def png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def canvas_png() -> str:
    """A drawn "7" as the page's canvas posts it: a PNG data URL, white on black, 280x280."""
    img = np.zeros((280, 280, 4), np.uint8)
    img[..., 3] = 255
    img[60:84, 60:220, :3] = 255
    for i in range(160):
        img[84 + i, 196 - i // 2 : 220 - i // 2, :3] = 255
    return "data:image/png;base64," + base64.b64encode(png(img)).decode()


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    times.sort()
    return statistics.median(times), times[int(0.9 * (len(times) - 1))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--z-dim", type=int, default=50)
    p.add_argument("--hidden", type=int, default=400)
    p.add_argument("--num-classes", type=int, default=0)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pyro.settings.set(module_local_params=True)  # as `pyro-vae serve` runs
    torch.manual_seed(0)
    vae = VAE(z_dim=args.z_dim, hidden_dims=(args.hidden,), num_classes=args.num_classes)
    x = torch.bernoulli(torch.full((10_000, 784), 0.13))
    y = torch.randint(0, 10, (10_000,))
    t0 = time.perf_counter()
    ex = Explorer(vae, x, y)
    bg = pad_background(ex.coords[:, :2].numpy(), y.numpy(), ex.axes.extent)
    startup = time.perf_counter() - t0
    k = ex.axes.directions.shape[0]
    label = 3 if args.num_classes else None
    coords = [0.5] * k
    url = canvas_png()

    def move():  # a slider or the pad: decode, repaint the pad, send both
        digit = enlarge(to_image(ex.decode(coords, label)))
        return png(digit), png(pad_image(bg, ex.axes.extent, tuple(coords[:2]), (0.1, 0.2)))

    def sample():
        c, r = ex.sample_prior(label)
        return png(enlarge(to_image(ex.decode(c, label, r)))), png(pad_image(bg, 3.0, c[:2]))

    def interpolate():
        return [png(enlarge(to_image(v))) for v in (x[0], ex.interpolate(0, 1, 0.4, label), x[1])]

    def draw(num_samples: int) -> Callable[[], object]:
        def run():
            raw = base64.b64decode(url.split(",", 1)[1])
            drawing = drawing_to_pixels(np.asarray(Image.open(io.BytesIO(raw))), binary=True)
            s = ex.score_drawing(drawing, num_samples)
            u = ex.axes.to_coords(s.z)[0][:2].tolist()
            return (
                png(enlarge(to_image(s.x))),
                png(enlarge(to_image(s.reconstruction))),
                png(pad_image(bg, ex.axes.extent, tuple(coords[:2]), tuple(u))),
            )

        return run

    net = f"784-{args.hidden}-{args.z_dim}" + (
        f", {args.num_classes} labels" if args.num_classes else ""
    )
    print(f"network {net}; {args.threads} CPU thread(s); torch {torch.__version__}")
    print(f"start-up: encode 10,000 test images and draw the pad: {startup:.2f} s")
    print(f"{'interaction':<44}{'median ms':>10}{'p90 ms':>9}")
    rows = [("move a slider / click or drag the pad", move), ("sample from the prior", sample),
            ("interpolation step", interpolate)]  # fmt: skip
    rows += [(f"score a drawing, K = {n}", draw(n)) for n in (1, 10, 100, 1000, 5000)]
    with torch.no_grad():
        for name, fn in rows:
            med, p90 = timed(fn, args.repeats if "5000" not in name else max(5, args.repeats // 5))
            print(f"{name:<44}{med:>10.1f}{p90:>9.1f}")


if __name__ == "__main__":
    main()
