"""``pyro-vae serve RUN_DIR``: the latent-space explorer in the browser (the ``[app]`` extra).

:func:`~pyro_vae.app.page.build_explorer` makes the page from a VAE already in memory, so a model
built in Python with a custom prior or likelihood object is explored like a run directory::

    from pyro_vae.app.page import build_explorer
    from pyro_vae.app.serve import launch

    vae = VAE(prior=my_prior)                      # built as when it was trained
    vae.load_state_dict(torch.load("run/checkpoint.pt", weights_only=True)["model"])
    demo = build_explorer(vae, test_x, test_y)     # test_x [M, 784] as the model saw it
    launch(demo)                                   # http://127.0.0.1:7860, until Ctrl-C

:func:`serve` loads a run directory and does the same. The page binds to 127.0.0.1 unless told
otherwise, never creates a share link and sends no analytics.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from pyro_vae.app.view import run_info

if TYPE_CHECKING:  # Gradio is imported only once the page is built: the CLI and checks stay fast
    import gradio as gr

MAX_PORT = 65535
APP_EXTRA = (
    'the explorer needs the [app] extra (Gradio): pip install -e ".[app]" in a checkout, '
    'or pip install "pyro-vae[app]"'
)


def require_gradio() -> None:
    """Raises ValueError naming the pip command when Gradio is not installed."""
    if importlib.util.find_spec("gradio") is None:
        raise ValueError(APP_EXTRA)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port(host: str, port: int) -> None:
    """Raises ValueError (one line, with the fix) when ``host:port`` cannot be bound."""
    if not 0 <= port <= MAX_PORT:  # socket's own error is an OverflowError
        raise ValueError(
            f"port {port} is not a TCP port; pass a --port from 1 to {MAX_PORT} "
            "(0 picks a free one)"
        )
    with socket.socket() as s:
        # As the server will: a port a closed server left in TIME_WAIT is free to use.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ValueError(
                    f"port {port} on {host} is in use; pass another --port "
                    "(--port 0 picks a free one)"
                ) from None
            raise ValueError(
                f"cannot listen on {host}:{port} ({e.strerror}); check --host and --port"
            ) from None


def launch(
    demo: gr.Blocks,
    host: str = "127.0.0.1",
    port: int = 7860,
    *,
    block: bool = True,
    open_browser: bool = False,
) -> str:
    """Serves ``demo`` on ``host:port`` (0: a free port), prints and returns its URL; with
    ``block`` waits until Ctrl-C, then closes the server. Never a share link."""
    port = port or free_port(host)
    check_port(host, port)
    demo.queue(default_concurrency_limit=1)
    demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        quiet=True,
        prevent_thread_lock=True,
        inbrowser=open_browser,
        show_error=True,
    )
    url = f"http://{host}:{port}/"
    print(f"latent-space explorer on {url} (Ctrl-C stops it)", flush=True)
    if block:
        try:
            threading.Event().wait()
        finally:
            demo.close(verbose=False)
    return url


def serve(
    run_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    *,
    device: str = "auto",
    host: str = "127.0.0.1",
    port: int = 7860,
    test_subset: int | None = None,
    open_browser: bool = False,
    dataset: dict | None = None,
    allow_other_dataset: bool = False,
) -> None:
    """Loads a run directory and its test set (binarized as in training) and serves its explorer
    until Ctrl-C. The port and the [app] extra are checked before anything is loaded."""
    from pyro_vae.runs.records import load_run
    from pyro_vae.runtime.device import resolve_device

    port = port or free_port(host)
    check_port(host, port)
    require_gradio()
    from pyro_vae.app.page import build_explorer

    vae, ckpt, data = load_run(
        run_dir,
        data_dir,
        resolve_device(device),
        test_subset,
        dataset=dataset,
        allow_other_dataset=allow_other_dataset,
    )
    with own_gradio_cache():
        demo = build_explorer(
            vae,
            data.test_x,
            data.test_y,
            run_info(run_dir, ckpt),
            image_shape=data.image_shape,
            data_mode=data.data_mode,
        )
        launch(demo, host, port, open_browser=open_browser)


@contextlib.contextmanager
def own_gradio_cache() -> Iterator[None]:
    """Gradio caches a page's pictures by their content under $GRADIO_TEMP_DIR (default
    /tmp/gradio): two explorers showing the same picture rewrite one file while the other
    streams it (the browser gets a truncated image). Unless the user chose a folder, each serve
    gets one of its own for as long as it runs, removed after."""
    if os.environ.get("GRADIO_TEMP_DIR"):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="pyro-vae-explorer-") as folder:
        os.environ["GRADIO_TEMP_DIR"] = folder
        try:
            yield
        finally:
            del os.environ["GRADIO_TEMP_DIR"]
