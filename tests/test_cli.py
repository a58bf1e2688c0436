"""The ``pyro-vae`` command line: help, a short train, evaluate, and one-line errors (exit 2).

Subprocesses only where the process boundary is the point (help, exit codes, no traceback);
the rest calls ``pyro_vae.cli.main`` in-process.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyro_vae.cli import COMMANDS, main
from pyro_vae.data import MNIST_FILES

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


def test_bad_option_values_are_one_line_errors(tmp_path, capsys):
    code = main(["train", "--epochs", "0", "--out", str(tmp_path / "run"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "epochs must be at least 1" in err


@pytest.mark.mnist
@pytest.mark.parametrize(
    "options,mode,data",
    [
        (["--likelihood", "gaussian"], "dequantize", "8-bit dequantized"),
        (["--likelihood", "discretized-logistic"], "none", "8-bit discrete"),
        (["--likelihood", "bernoulli"], "dynamic", "binarized"),
        # A run made before dequantization existed recorded "none": it evaluates on "none".
        (
            ["--likelihood", "beta", "--binarize", "none"],
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
    assert json.loads((run / "config.json").read_text())["train"]["binarize"] == mode
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
    assert (report["binarize"], report["data"], report["num_dims"]) == (mode, data, 784)
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
