"""``pyro-vae serve``: one-line errors, and the explorer's page driven in a real browser.

The browser tests (marker ``browser``) train two tiny runs, serve each with the real command in a
subprocess on a free localhost port, and drive the pages in headless Chromium (Debian's
``chromium`` and ``chromium-driver``, which ``.ci/run`` installs) through Selenium. Under CI
(CI=true) a missing browser fails them; on a developer's machine it skips them.
"""

from __future__ import annotations

import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

import pytest

from pyro_vae.cli.main import main

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Without the networking flags, Chromium on a closed network stalls on its own requests.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1400,1900",
)  # fmt: skip
WAIT = 30  # seconds for the page to answer an interaction (it takes well under one)


def test_serve_without_the_app_extra_names_the_pip_command(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if not installed: no spec, no import
    assert main(["serve", str(tmp_path / "run"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install -e ".[app]"' in err, err
    assert "Traceback" not in err


def test_each_explorer_caches_its_pictures_in_a_folder_of_its_own(monkeypatch, tmp_path):
    """Gradio's cache is by content under one folder: two explorers showing the same picture
    would rewrite one file while the other streams it (a truncated image in the browser)."""
    from pyro_vae.app.serve import own_gradio_cache

    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    folders = []
    for _ in range(2):
        with own_gradio_cache():
            folders.append(os.environ["GRADIO_TEMP_DIR"])
            assert Path(folders[-1]).is_dir()
        assert "GRADIO_TEMP_DIR" not in os.environ  # the setting is scoped to the serve
        assert not Path(folders[-1]).exists()  # and its folder removed after
    assert folders[0] != folders[1]
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))  # the user's choice is kept
    with own_gradio_cache():
        assert os.environ["GRADIO_TEMP_DIR"] == str(tmp_path)
    assert tmp_path.is_dir()


def test_serve_help_and_parsing_do_not_import_gradio():
    code = (
        "import sys\nfrom pyro_vae.cli.main import build_parser\n"
        "build_parser().parse_args(['serve', 'run', '--port', '0'])\n"
        "assert 'gradio' not in sys.modules, 'gradio imported at parse time'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_port_in_use_and_missing_run_are_one_line_errors(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", str(tmp_path / "run"), "--port", str(port)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"port {port} on 127.0.0.1 is in use" in err, err
    # The port is checked before the run is loaded; a free one gets to the missing run.
    assert main(["serve", str(tmp_path / "run"), "--port", "0", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no checkpoint at" in err and str(tmp_path / "run") in err


@pytest.mark.parametrize("port", [-1, 65536, 99999])
def test_a_port_out_of_range_is_a_one_line_error_from_python_too(port, tmp_path):
    """The Python API gets the ValueError the command line turns into one line, not the
    OverflowError of socket.bind, and before the run is loaded."""
    from pyro_vae.app.serve import check_port, serve

    with pytest.raises(ValueError, match=f"port {port} is not a TCP port; pass a --port from 1"):
        check_port("127.0.0.1", port)
    with pytest.raises(ValueError, match="is not a TCP port"):
        serve(tmp_path / "no-run", tmp_path, port=port)


# ---------------------------------------------------------------- in a browser


def _train(out: Path, mnist_dir: Path, **vae) -> Path:
    from pyro_vae import train
    from pyro_vae.models.config import VAEConfig
    from pyro_vae.runs.options import TrainConfig

    config = TrainConfig(data_dir=str(mnist_dir), out=str(out), epochs=1, train_subset=500,
                         test_subset=300, device="cpu")  # fmt: skip
    train(VAEConfig(hidden_dims=(32,), **vae), config, progress=False, log=lambda s: None,
          write_figures=False)  # fmt: skip
    return out


def _ctrl_c_as_in_a_terminal() -> None:
    """The server's Ctrl-C (SIGINT) as a terminal delivers it: a shell that starts pytest in
    the background ignores SIGINT in it, every child inherits that, and Python then installs
    no handler: the server would never see the test's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Server:
    """``pyro-vae serve RUN`` in a subprocess; ``url`` once it has printed it."""

    def __init__(self, run: Path, mnist_dir: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "pyro_vae", "serve", str(run), "--port", str(port),
               "--data-dir", str(mnist_dir), "--device", "cpu"]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.stderr = tempfile.TemporaryFile("w+")  # a file, not a pipe: it never fills up
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=env,
            preexec_fn=_ctrl_c_as_in_a_terminal,
        )  # fmt: skip
        self.lines: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if "http://" in line:
                self.ready.set()

    @property
    def url(self) -> str:
        if not self.ready.wait(90) or self.proc.poll() is not None:
            self.stop()
            pytest.fail(f"pyro-vae serve did not start: {''.join(self.lines)}{self.errors()}")
        return re.search(r"http://\S+", next(ln for ln in self.lines if "http://" in ln)).group()

    def errors(self) -> str:
        """What the server wrote to stderr; the file closes after this read."""
        with self.stderr:
            self.stderr.seek(0)
            return self.stderr.read()

    def stop(self) -> int:
        """Ctrl-C, as a user stops it; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        return self.proc.returncode


def _need_browser() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        import gradio  # noqa: F401
        import selenium  # noqa: F401
    except ImportError as e:
        missing.append(f"Python package {e.name} (pip install -e '.[dev]')")
    if missing:
        msg = (
            f"the browser tests need {', '.join(missing)}; apt-get install chromium chromium-driver"
        )
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="module")
def pages(mnist_dir, tmp_path_factory):
    """The URLs of two served runs: a VAE with z_dim 3 (principal directions, 3 sliders) and a
    conditional VAE with z_dim 2 (the pad is z itself)."""
    _need_browser()
    root = tmp_path_factory.mktemp("served")
    servers = {}
    try:  # each server starts while the next run trains
        servers["vae"] = Server(_train(root / "vae", mnist_dir, z_dim=3), mnist_dir)
        servers["cvae"] = Server(
            _train(root / "cvae", mnist_dir, z_dim=2, num_classes=10), mnist_dir
        )
        yield {name: server.url for name, server in servers.items()}
    finally:
        codes = {name: server.stop() for name, server in servers.items()}
    logs = {name: server.errors() for name, server in servers.items()}  # closes every file
    for name, log in logs.items():  # a handler's exception would be printed here
        assert "Traceback" not in log and codes[name] == 130, (name, codes[name], log)
        assert "interrupted" in log  # Ctrl-C: the CLI's one line, exit code 130


@pytest.fixture(scope="module")
def browser(pages):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    yield driver
    driver.quit()


def problems(driver) -> list[str]:
    """Console errors and requests that left this machine since the last call."""
    import json

    found = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            url = msg["params"]["request"]["url"]
            if url.startswith(("http:", "https:", "ws:", "wss:")) and not re.match(
                r"\w+://127\.0\.0\.1[:/]", url
            ):
                found.append(f"request off this machine: {url}")
    return found


def open_page(driver, url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, WAIT).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#decoded img"))


def image_bytes(driver, elem_id: str, other_than: str | None = None) -> tuple[str, bytes]:
    """The src of the image in #elem_id (once it differs from ``other_than``) and its bytes."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def src(d):
        imgs = d.find_elements(By.CSS_SELECTOR, f"#{elem_id} img")
        value = imgs[0].get_attribute("src") if imgs else None
        return value if value and value != other_than else False

    url = WebDriverWait(driver, WAIT).until(src)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # localhost: no proxy
    with opener.open(url, timeout=WAIT) as r:
        return url, r.read()


def slider_values(driver) -> list[float]:
    from selenium.webdriver.common.by import By

    boxes = driver.find_elements(By.CSS_SELECTOR, "[id^=slider-] input[type=number]")
    return [float(e.get_attribute("value")) for e in boxes]


def draw_stroke(driver) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    canvas = driver.find_element(By.CSS_SELECTOR, "#drawing canvas")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    chain = ActionChains(driver).move_to_element_with_offset(canvas, 0, -90).click_and_hold()
    for dx, dy in ((4, 40), (4, 50), (-2, 50), (0, 40)):  # a slightly slanted "1"
        chain = chain.move_by_offset(dx, dy)
    chain.release().perform()


@pytest.mark.browser
def test_moving_the_pad_or_a_slider_changes_the_decoded_image(browser, pages):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(browser, pages["vae"])
    src0, before = image_bytes(browser, "decoded")
    pad = browser.find_element(By.CSS_SELECTOR, "#latent-pad img")
    ActionChains(browser).move_to_element_with_offset(pad, 100, -100).click().perform()
    src1, after_pad = image_bytes(browser, "decoded", other_than=src0)
    assert after_pad != before
    # the click set the first two sliders to the point clicked: up and to the right
    assert slider_values(browser)[0] > 0 and slider_values(browser)[1] > 0
    # dragging: held down, the pointer moves to the lower left and lets go there
    drag = ActionChains(browser).move_to_element_with_offset(pad, 100, -100).click_and_hold()
    for _ in range(4):
        drag = drag.move_by_offset(-50, 50).pause(0.1)
    drag.release().perform()
    WebDriverWait(browser, WAIT).until(
        lambda d: slider_values(d)[0] < 0 and slider_values(d)[1] < 0
    )
    src2, after_drag = image_bytes(browser, "decoded", other_than=src1)
    slider = browser.find_element(By.CSS_SELECTOR, "#slider-2 input[type=range]")
    ActionChains(browser).move_to_element_with_offset(
        slider, -slider.size["width"] // 2 + 5, 0
    ).click().perform()
    _, after_slider = image_bytes(browser, "decoded", other_than=src2)
    assert len({before, after_pad, after_drag, after_slider}) == 4
    assert problems(browser) == []


@pytest.mark.browser
def test_a_stroke_gives_a_reconstruction_and_a_finite_log_likelihood(browser, pages, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(browser, pages["vae"])
    draw_stroke(browser)
    score = WebDriverWait(browser, WAIT).until(
        lambda d: re.search(
            r"log p\(x\) ≈ (-?[\d.]+) nats", d.find_element(By.ID, "drawing-score").text
        )
    )
    log_px = float(score.group(1))
    assert math.isfinite(log_px) and log_px < 0
    _, recon = image_bytes(browser, "drawing-reconstruction")
    _, seen = image_bytes(browser, "drawing-input")
    assert recon[:8] == seen[:8] == b"\x89PNG\r\n\x1a\n" and recon != seen
    shot = tmp_path / "explorer.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    assert problems(browser) == []


@pytest.mark.browser
def test_the_cvae_label_selector_changes_the_image_and_drawings_get_p_y_given_x(browser, pages):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(browser, pages["cvae"])
    src0, before = image_bytes(browser, "decoded")
    browser.find_element(By.CSS_SELECTOR, "#label input[value='7']").click()
    _, after = image_bytes(browser, "decoded", other_than=src0)
    assert after != before
    draw_stroke(browser)
    WebDriverWait(browser, WAIT).until(
        lambda d: re.search(
            r"log p\(x \| y = \d\) ≈ -?[\d.]+", d.find_element(By.ID, "drawing-score").text
        )
    )
    classes = browser.find_element(By.ID, "drawing-classes").text
    assert len(re.findall(r"\d+%", classes)) == 10, classes  # p(y | x) for every label
    assert problems(browser) == []


@pytest.mark.browser
def test_problems_sees_console_errors_and_the_page_sends_no_analytics(browser, pages):
    import json

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(pages["vae"] + "config", timeout=WAIT) as r:
        assert json.load(r)["analytics_enabled"] is False
    # Negative control for the check the other browser tests end with.
    open_page(browser, pages["cvae"])
    problems(browser)
    browser.execute_script("console.error('probe')")
    assert any("probe" in p for p in problems(browser))
