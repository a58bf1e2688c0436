"""The ``pyro-vae`` command line: help, a short train, evaluate, and one-line errors (exit 2).

Subprocesses only where the process boundary is the point (help, exit codes, no traceback);
the rest calls ``pyro_vae.cli.main`` in-process.
"""

from __future__ import annotations

import fractions
import io
import json
import math
import os
import random
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error
from synthetic import write_image_folder

from pyro_vae.cli.main import COMMANDS, main
from pyro_vae.data.torchvision_data import MNIST_FILES
from pyro_vae.runs.lock import run_lock

# Any download attempt hits a closed local port at once: "offline", whatever the machine has.
OFFLINE = {
    k: "http://127.0.0.1:9" for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")
}


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None):
    cmd = [sys.executable, "-m", "pyro_vae", *args]
    env = {**os.environ, "PYTHONWARNINGS": "error", **(env or {})}
    for k in ("no_proxy", "NO_PROXY"):
        env.pop(k, None)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=cwd)


def test_help_of_the_program_and_of_every_subcommand():
    # The program's help through the installed console script when there is one (what users
    # type), each subcommand's through `python -m pyro_vae`.
    script = Path(sys.executable).with_name("pyro-vae")
    program = [str(script)] if script.exists() else [sys.executable, "-m", "pyro_vae"]
    commands = [[*program, "--help"]]
    commands += [[sys.executable, "-m", "pyro_vae", name, "--help"] for name in COMMANDS]
    # Started together: each pays the interpreter's and torch's start-up.
    procs = [
        subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in commands
    ]
    outputs = []
    for cmd, proc in zip(commands, procs, strict=True):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, (cmd, err)
        assert out.startswith("usage: pyro-vae"), (cmd, out)
        assert err == ""
        outputs.append(out)
    for name in COMMANDS:
        assert name in outputs[0], f"the program's help does not list {name}"
    assert "--data-dir" in outputs[1] and "--resume" in outputs[1]  # train's own options


@pytest.mark.mnist
def test_train_then_evaluate(mnist_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        ["train", "--data-dir", str(mnist_dir), "--out", str(out), "--epochs", "1"]
        + ["--train-subset", "500", "--test-subset", "200", "--z-dim", "4", "--hidden-dims", "32"]
        + ["--device", "cpu", "--no-progress"]
    )
    stdout = capsys.readouterr().out
    assert code == 0
    assert "epoch   1/1" in stdout and "test -ELBO" in stdout and "nats/image" in stdout
    assert (out / "checkpoint.pt").is_file() and (out / "figures" / "samples.png").is_file()

    code = main(
        ["evaluate", str(out), "--data-dir", str(mnist_dir), "--test-subset", "200"]
        + ["--device", "cpu"]
    )
    stdout = capsys.readouterr().out
    assert code == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["split"] == "test" and report["units"] == "nats per image"
    assert report["epoch"] == 1
    rows = {r["estimator"]: r for r in report["elbo"]}
    assert set(rows) == {"Trace_ELBO", "TraceMeanField_ELBO"}
    for name, r in rows.items():
        assert r["num_images"] == 200
        assert r["neg_elbo"] == pytest.approx(r["recon"] + r["kl"])
        line = next(ln for ln in stdout.splitlines() if ln.startswith(name + " "))
        assert f"{r['neg_elbo']:.2f}" in line, (line, r)  # the table shows what the file holds
    assert "eval.json" in stdout
    au = report["active_units"]
    assert au["num_units"] == 4 and au["num_images"] == 200 and 0 <= au["active"] <= 4
    assert au["active"] == sum(v > au["threshold"] for v in au["variances"])
    assert f"active units: {au['active']} of 4" in stdout


def test_missing_data_is_one_line_with_the_fix(tmp_path):
    empty = tmp_path / "nowhere"
    proc = run_cli(
        "train", "--data-dir", str(empty), "--out", str(tmp_path / "run"), "--device", "cpu",
        env=OFFLINE,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    msg = lines[0]
    assert "Traceback" not in proc.stderr
    for name in MNIST_FILES:
        assert name in msg
    assert str(empty / "MNIST" / "raw") in msg
    assert "--data-dir" in msg
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_evaluate_a_missing_run_dir_is_one_line(tmp_path):
    missing = tmp_path / "no-such-run"
    proc = run_cli("evaluate", str(missing), "--device", "cpu")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(missing) in lines[0]


# The bad-input table: what a new user types wrong. Each gets one line on stderr naming the
# problem and the fix, exit code 2, no traceback, and leaves an existing run byte-identical.
# Placeholders: RUN (a trained run), CORRUPT (a run whose checkpoint is random bytes), CUT (one
# whose checkpoint is a real one cut in half), FOREIGN (one whose checkpoint is a torch file of
# other objects), FILE (a plain file), EMPTY (an empty folder), DATA (the real MNIST), and
# damaged copies of it; IMAGES and TESTIMAGES (image folders of 28 x 28 images), LINK (a
# symlink to IMAGES), IMAGERUN (a run trained on IMAGES), BUSY (a run whose lock this process
# holds, as a training run would). The commands run in the folder holding IMAGES as images/,
# so relative paths are tried too.
BAD_INPUTS: list[tuple[str, list[str], str]] = [
    ("no command", [], "required: COMMAND"),
    ("unknown command", ["fit"], "invalid choice: 'fit'"),
    ("unknown option", ["train", "--epoch", "3"], "unrecognized arguments: --epoch"),
    ("--out is a file", ["train", "--out", "FILE"], "is a file, not a run directory"),
    ("--out holds a run", ["train", "--out", "RUN"], "already holds a run; pass --resume"),
    ("--epochs 0", ["train", "--epochs", "0"], "--epochs: must be at least 1, got 0"),
    ("--batch-size 0", ["train", "--batch-size", "0"], "--batch-size: must be at least 1"),
    ("--lr -1", ["train", "--lr", "-1"], "--lr: must be positive, got -1"),
    ("--lr fast", ["train", "--lr", "fast"], "--lr: expected a number, got 'fast'"),
    ("--z-dim 0", ["train", "--z-dim", "0"], "--z-dim: must be at least 1"),
    ("--hidden-dims a,b", ["train", "--hidden-dims", "a,b"], "expected sizes like 400"),
    ("--hidden-dims 0", ["train", "--hidden-dims", "0"], "expected positive sizes"),
    ("--num-classes -1", ["train", "--num-classes", "-1"], "--num-classes: must be at least 0"),
    ("--prior-components 0", ["train", "--prior-components", "0"], "must be at least 1, got 0"),
    ("--prior cauchy", ["train", "--prior", "cauchy"], "invalid choice: 'cauchy'"),
    ("--likelihood poisson", ["train", "--likelihood", "poisson"], "invalid choice: 'poisson'"),
    (
        "conditional prior, no labels",
        ["train", "--prior", "conditional"],
        "build the VAE with num_classes > 0",
    ),
    ("--likelihood-scale 0", ["train", "--likelihood-scale", "0"], "must be positive, got 0"),
    ("--num-particles 0", ["train", "--num-particles", "0"], "--num-particles: must be at least"),
    ("--train-subset -5", ["train", "--train-subset", "-5"], "must be at least 0, got -5"),
    ("--device tpu", ["train", "--device", "tpu"], "unknown device 'tpu'; use auto, cpu or cuda"),
    (
        "grayscale into bernoulli",
        ["train", "--data-mode", "none", "--data-dir", "DATA"],
        "binarize the data (--data-mode dynamic or threshold)",
    ),
    (
        "--resume with another --lr",
        ["train", "--out", "RUN", "--resume", "--lr", "0.01"],
        "--lr 0.01 (TrainConfig.lr; the run has 0.001); drop it",
    ),
    (
        "--resume with another --hidden-dims",
        ["train", "--out", "RUN", "--resume", "--hidden-dims", "64,32"],
        "--hidden-dims 64,32 (VAEConfig.hidden_dims; the run has 16)",
    ),
    (
        "--resume with --latent-dims",
        ["train", "--out", "RUN", "--resume", "--latent-dims", "6,2"],
        "--latent-dims 6,2 (VAEConfig.latent_dims; the run has none)",
    ),
    ("--latent-dims 6,0", ["train", "--latent-dims", "6,0"], "expected positive sizes"),
    (
        "--z-dim not the top of --latent-dims",
        ["train", "--z-dim", "3", "--latent-dims", "6,2"],
        "z_dim 3 is not the top layer of latent_dims 6,2: the prior is over the last layer",
    ),
    ("--resume, no run", ["train", "--out", "EMPTY", "--resume"], "no checkpoint at"),
    (
        "--resume while another run trains there",
        ["train", "--out", "BUSY", "--resume", "--epochs", "2"],
        f"BUSY is in use by another pyro-vae run (pid {os.getpid()} on host "
        f"{socket.gethostname()}); wait for it to finish or stop it",
    ),
    (
        "truncated MNIST file",
        ["train", "--data-dir", "TRUNCATED"],
        "t10k-images-idx3-ubyte is damaged: expected 7840016 bytes for shape [10000, 28, 28], "
        "found 4000",
    ),
    (
        "garbage MNIST file",
        ["train", "--data-dir", "GARBAGE"],
        "train-labels-idx1-ubyte is damaged: it does not start like an uint8 IDX file",
    ),
    ("empty MNIST file", ["train", "--data-dir", "EMPTYFILE"], "is damaged: the file is empty"),
    ("evaluate, no run", ["evaluate", "EMPTY"], "no checkpoint at"),
    (
        "evaluate, random bytes for a checkpoint",
        ["evaluate", "CORRUPT"],
        "checkpoint.pt: the file is damaged or is not a pyro-vae checkpoint (not a zip archive)",
    ),
    (
        "evaluate, truncated checkpoint",
        ["evaluate", "CUT"],
        "checkpoint.pt: the file is damaged or is not a pyro-vae checkpoint (RuntimeError)",
    ),
    (
        "evaluate, a torch file of other objects",
        ["evaluate", "FOREIGN"],
        "checkpoint.pt: the file is damaged or is not a pyro-vae checkpoint (UnpicklingError)",
    ),
    (
        "--resume, truncated checkpoint",
        ["train", "--out", "CUT", "--resume"],
        "the file is damaged or is not a pyro-vae checkpoint (RuntimeError)",
    ),
    (
        "evaluate a run of your own Pyro model",
        ["evaluate", "USERRUN"],
        "USERRUN trained your own Pyro model 'ladder' (pyro_vae.UserModel), which only Python "
        "can rebuild",
    ),
    ("evaluate --num-samples -1", ["evaluate", "RUN", "--num-samples", "-1"], "at least 0"),
    ("evaluate --batch-size 0", ["evaluate", "RUN", "--batch-size", "0"], "at least 1"),
    ("sample --label on a VAE", ["sample", "RUN", "--label", "3"], "unconditional"),
    ("sample --num 0", ["sample", "RUN", "--num", "0"], "--num: must be at least 1, got 0"),
    ("plot --grid-size 1", ["plot", "RUN", "--grid-size", "1"], "must be at least 2, got 1"),
    ("plot --grid-extent 0", ["plot", "RUN", "--grid-extent", "0"], "must be positive"),
    ("compare-elbo --repeats 1", ["compare-elbo", "RUN", "--repeats", "1"], "at least 2"),
    ("compare-elbo --ks 5,x", ["compare-elbo", "RUN", "--ks", "5,x"], "expected sizes"),
    ("--dataset cifar100", ["train", "--dataset", "cifar100"], "unknown dataset 'cifar100'; use"),
    (
        "--labelled without classes",
        ["train", "--labelled", "100"],
        "--labelled 100 needs labels: add --num-classes 10 (or --num-classes auto",
    ),
    (
        "--labelled more than the data",
        ["train", "--num-classes", "10", "--labelled", "70000"],
        "--labelled 70000 is more than the 60000 training images; use at most 60000",
    ),
    (
        "--labelled not in balanced classes",
        ["train", "--num-classes", "10", "--labelled", "105"],
        "--labelled 105 does not split into 10 classes of equal size; use a multiple of 10",
    ),
    (
        "--labelled more than a class holds",
        ["train", "--num-classes", "10", "--labelled", "60000"],
        "--labelled 60000 needs 6000 images of each class, but class 5 has 5421; use at most 54210",
    ),
    (
        "--labelled-per-batch without --labelled",
        ["train", "--num-classes", "10", "--labelled-per-batch", "16"],
        "--labelled-per-batch needs --labelled N",
    ),
    (
        "--labelled-per-batch fills the batch",
        ["train", "--num-classes", "10", "--labelled", "100", "--labelled-per-batch", "128"],
        "--labelled-per-batch 128 leaves no room for unlabelled images in a batch of 128",
    ),
    (
        "--labelled with --elbo trace",
        ["train", "--num-classes", "10", "--labelled", "100", "--elbo", "trace"],
        "the semi-supervised VAE sums its missing labels out: train it with --elbo enum (or "
        "auto), not trace",
    ),
    (
        "--labelled, labels out of range",
        ["train", "--num-classes", "5", "--labelled", "100"],
        "mnist has 10 classes, not 5: pass --num-classes 10 (or auto)",
    ),
    ("--alpha -1", ["train", "--alpha", "-1"], "argument --alpha: must be at least 0, got -1"),
    (
        "evaluate on another dataset",
        ["evaluate", "RUN", "--dataset", "kmnist"],
        "was trained on mnist, not kmnist; drop --dataset",
    ),
    (
        "serve --port 99999",
        ["serve", "RUN", "--port", "99999"],
        "argument --port: must be a TCP port from 1 to 65535 (0: a free one), got 99999",
    ),
    ("serve --port -1", ["serve", "RUN", "--port", "-1"], "must be a TCP port from 1 to 65535"),
    (
        "--out inside the folder: dataset",
        ["train", "--dataset", "folder:IMAGES", "--out", "IMAGES/run"],
        "--out IMAGES/run lies inside the image folder of folder:IMAGES: the PNGs written there "
        "would become images of the dataset; choose --out outside IMAGES",
    ),
    (
        "--out is the folder: dataset",
        ["train", "--dataset", "folder:IMAGES", "--out", "IMAGES"],
        "lies inside the image folder of folder:IMAGES",
    ),
    (
        "--out inside it, relative",
        ["train", "--dataset", "folder:IMAGES", "--out", "images/../images/bars/run"],
        "--out images/../images/bars/run lies inside the image folder of folder:IMAGES",
    ),
    (
        "--out inside it through a symlink",
        ["train", "--dataset", "folder:images", "--out", "LINK/run"],
        "--out LINK/run lies inside the image folder of folder:images",
    ),
    (
        "--out inside the --test-dataset folder",
        ["train", "--dataset", "folder:IMAGES", "--test-dataset", "folder:TESTIMAGES"]
        + ["--out", "TESTIMAGES/dots/run"],
        "lies inside the image folder of folder:TESTIMAGES",
    ),
    (
        "compare-elbo --out inside the run's folder: dataset",
        ["compare-elbo", "IMAGERUN", "--out", "IMAGES/bars"],
        "--out IMAGES/bars lies inside the image folder of folder:IMAGES",
    ),
    (
        "sample --out inside the run's folder: dataset",
        ["sample", "IMAGERUN", "--out", "LINK/dots/sample.png"],
        "--out LINK/dots/sample.png lies inside the image folder of folder:IMAGES",
    ),
]


def _damaged_copy(root: Path, data: Path, name: str, content: bytes) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in MNIST_FILES:
        if f == name:
            (raw / f).write_bytes(content)
        else:
            (raw / f).symlink_to(data / "MNIST" / "raw" / f)
    return root


def _run_with_checkpoint(folder: Path, content: bytes) -> Path:
    folder.mkdir()
    (folder / "checkpoint.pt").write_bytes(content)
    return folder


@pytest.fixture(scope="module")
def places(mnist_dir, tmp_path_factory) -> Iterator[dict[str, Path]]:
    """What the placeholders of BAD_INPUTS stand for."""
    root = tmp_path_factory.mktemp("bad").resolve()  # as the messages show folders
    run = root / "run"
    tiny = ["--epochs", "1", "--z-dim", "2", "--hidden-dims", "16", "--device", "cpu"]
    code = main(
        ["train", "--data-dir", str(mnist_dir), "--out", str(run), "--no-progress", *tiny]
        + ["--train-subset", "200", "--test-subset", "50"]
    )
    assert code == 0
    image_folder = write_image_folder(root / "images", per_class=6, sizes=((28, 28),))
    image_run = root / "image-run"
    code = main(
        ["train", "--dataset", f"folder:{image_folder}", "--out", str(image_run), *tiny]
        + ["--no-progress"]
    )
    assert code == 0
    user_run = root / "user-run"  # a run of the user's own model and guide (UserModel)
    from test_user_model import ladder

    from pyro_vae import TrainConfig, train

    config = TrainConfig(data_dir=str(mnist_dir), out=str(user_run), epochs=1, device="cpu")
    config.train_subset, config.test_subset = 200, 50
    train(ladder(784), config, progress=False, log=lambda line: None)
    checkpoint = (run / "checkpoint.pt").read_bytes()
    foreign = io.BytesIO()
    torch.save({"model": fractions.Fraction(1, 3)}, foreign)  # not weights: refused unpickled
    (root / "link").symlink_to(image_folder)
    busy = shutil.copytree(run, root / "busy")
    (root / "file").write_text("I am a file")
    (root / "empty").mkdir()
    images = (mnist_dir / "MNIST" / "raw" / "t10k-images-idx3-ubyte").read_bytes()
    places = {
        "ROOT": root,
        "RUN": run,
        "CORRUPT": _run_with_checkpoint(root / "corrupt", random.Random(0).randbytes(4096)),
        "CUT": _run_with_checkpoint(root / "cut", checkpoint[: len(checkpoint) // 2]),
        "FOREIGN": _run_with_checkpoint(root / "foreign", foreign.getvalue()),
        "IMAGES": image_folder,
        "TESTIMAGES": write_image_folder(root / "test-images", per_class=2, sizes=((28, 28),)),
        "LINK": root / "link",
        "IMAGERUN": image_run,
        "USERRUN": user_run,
        "BUSY": busy,
        "FILE": root / "file",
        "EMPTY": root / "empty",
        "DATA": mnist_dir,
        "TRUNCATED": _damaged_copy(
            root / "trunc", mnist_dir, "t10k-images-idx3-ubyte", images[:4000]
        ),
        "GARBAGE": _damaged_copy(
            root / "garbage", mnist_dir, "train-labels-idx1-ubyte", b"<html>not found</html>"
        ),
        "EMPTYFILE": _damaged_copy(root / "emptyfile", mnist_dir, "train-images-idx3-ubyte", b""),
    }
    with run_lock(busy):  # as a run training there would
        yield places


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every folder (None) under ``folder``."""
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
        for p in folder.rglob("*")
    }


def _place(arg: str, places: dict[str, Path]) -> str:
    """A placeholder replaced, also after folder: and before /rest."""
    kind, colon, path = arg.partition(":") if arg.startswith("folder:") else ("", "", arg)
    head, slash, rest = path.partition("/")
    return kind + colon + (str(places[head]) + slash + rest if head in places else path)


# What no bad input may change.
KEPT = ("RUN", "IMAGES", "TESTIMAGES", "IMAGERUN", "CUT", "EMPTY", "BUSY")


@pytest.mark.mnist
@pytest.mark.parametrize(
    "argv,expected", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_is_one_line_exit_2_and_leaves_the_run_intact(
    argv, expected, places, capsys, monkeypatch
):
    assert len(BAD_INPUTS) >= 25
    for k, v in OFFLINE.items():  # a missing file would be fetched: here, it must not be
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(places["ROOT"])
    argv = [_place(a, places) for a in argv]
    for key in sorted(places, key=len, reverse=True):
        expected = re.sub(rf"\b{key}\b", str(places[key]), expected)
    if argv and argv[0] == "train" and "--out" not in argv:
        argv += ["--out", str(places["EMPTY"] / "new")]
    if argv and argv[0] in ("train", "evaluate", "plot", "compare-elbo", "sample"):
        argv += [] if "--device" in argv else ["--device", "cpu"]
        if argv[0] != "sample" and "--data-dir" not in argv:
            argv += ["--data-dir", str(places["DATA"])]
    before = {k: _snapshot(places[k]) for k in KEPT}
    code = main(argv)
    err = capsys.readouterr().err
    assert_one_line_error(code, err, expected)
    assert "weights_only" not in err  # torch's advice, never to be taken for a damaged file
    assert {k: _snapshot(places[k]) for k in KEPT} == before
    assert not (places["EMPTY"] / "new").exists()


@pytest.mark.mnist
@pytest.mark.parametrize(
    "options,mode,data",
    [
        (["--likelihood", "gaussian"], "dequantize", "8-bit dequantized"),
        (["--likelihood", "discretized-logistic"], "none", "8-bit discrete"),
        (["--likelihood", "bernoulli"], "dynamic", "binarized"),
        # A run made before dequantization existed recorded "none": it evaluates on "none".
        (
            ["--likelihood", "beta", "--data-mode", "none"],
            "none",
            "grayscale [0,1] (not comparable)",
        ),
    ],
    ids=["dequantized", "discrete", "binarized", "grayscale"],
)
def test_evaluate_says_which_data_and_reports_bits_per_dim(
    mnist_dir, tmp_path, capsys, options, mode, data
):
    run = tmp_path / "run"
    common = ["--data-dir", str(mnist_dir), "--device", "cpu"]
    train = ["train", "--out", str(run), "--epochs", "1", "--train-subset", "256", "--no-progress"]
    train += ["--test-subset", "32", "--hidden-dims", "16", "--z-dim", "4", *options]
    assert main(train + common) == 0
    assert json.loads((run / "config.json").read_text())["train"]["data_mode"] == mode
    capsys.readouterr()
    evaluate = [
        "evaluate",
        str(run),
        "--num-samples",
        "5",
        "--elbo",
        "trace",
        "--test-subset",
        "32",
    ]
    assert main(evaluate + common) == 0
    stdout = capsys.readouterr().out
    report = json.loads((run / "eval.json").read_text())
    assert (report["data_mode"], report["data"], report["num_dims"]) == (mode, data, 784)
    added = 784 * math.log(256) if mode == "dequantize" else 0.0
    assert report["dequantization_nats"] == pytest.approx(added)
    for r in [*report["elbo"], report["log_likelihood"]]:
        nats = r.get("neg_elbo", r.get("neg_log_likelihood"))
        assert r["bits_per_dim"] == pytest.approx((nats + added) / (784 * math.log(2)))
    (elbo,) = report["elbo"]
    line = next(ln for ln in stdout.splitlines() if ln.startswith("Trace_ELBO "))
    assert f"{elbo['bits_per_dim']:.4f}" in line  # the table shows what the file holds
    assert f"test data: {data}: " in stdout
    nll_line = next(ln for ln in stdout.splitlines() if ln.startswith("test NLL"))
    assert f"{report['log_likelihood']['bits_per_dim']:.4f}" in nll_line and "bits/dim" in nll_line
