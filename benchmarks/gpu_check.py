"""One prepared check for a machine with one CUDA GPU: everything the CPU machine cannot measure.

    bash benchmarks/gpu_check.sh        # on the GPU machine: installs, unpacks, runs this
    python benchmarks/gpu_check.py --data-dir DATA --report gpu_check.md

Sections, in order, each a subprocess with its own time limit; a section that fails or runs out
of time is reported as such and the rest still run, so one call yields one report:

1. the device, torch and pyro-ppl;
2. the CUDA tests (``pytest -m cuda``): the CUDA graph against the replayed graph over every
   registered prior x likelihood x conditional and the custom objects, a schedule after
   capture, resume across step kinds and devices, cuda:N, the non-finite flag, the last batch;
3. the throughput table (``benchmarks/throughput.py --device cuda``);
4. a 10-epoch MNIST run (``pyro-vae train --device cuda``, the default step there: the CUDA
   graph): its test -ELBO and seconds per epoch;
5. the K = 5000 importance-sampled NLL of the 10,000 test images, with its time;
6. seconds per pass of ``--preset iwae-paper`` (batch 20, the CUDA graph), and the hours the
   whole 3280-pass protocol would take at that rate;
7. peak memory of each step kind (``benchmarks/memory.py --device cuda``: resident and
   ``torch.cuda.max_memory_allocated``).

The report is markdown: the commands, what they printed (tails) and the numbers pulled out
of the runs' own files. It takes about 5 minutes on one H100-class GPU (planned: under 8).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def run(cmd: list[str], timeout: float) -> tuple[int, str, float]:
    """(exit code, the output's tail, seconds); exit code 124 when it ran out of time."""
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
        )
        code, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        code = 124
        out = (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(
            errors="replace"
        )
    return code, out, time.perf_counter() - t0


def tail(text: str, lines: int = 40) -> str:
    kept = [line for line in text.splitlines() if "Warning" not in line and line.strip()]
    return "\n".join(kept[-lines:])


def metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


class Report:
    def __init__(self, path: Path, budget: float) -> None:
        self.path, self.parts, self.t0, self.budget = path, [], time.perf_counter(), budget

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def section(self, title: str, cmd: list[str], timeout: float) -> tuple[int, str, float]:
        timeout = min(timeout, max(self.left(), 0))
        if timeout < 10:
            self.add(f"## {title}\n\nskipped: the check's time budget was spent.\n")
            return 125, "", 0.0
        print(f"== {title}: {' '.join(cmd)}", flush=True)
        code, out, seconds = run(cmd, timeout)
        status = "ok" if code == 0 else ("out of time" if code == 124 else f"exit {code}")
        shown = " ".join(str(c).replace(str(ROOT) + "/", "") for c in cmd)
        self.add(f"## {title}\n\n`{shown}`: {status}, {seconds:.0f} s\n\n```\n{tail(out)}\n```\n")
        return code, out, seconds

    def add(self, text: str) -> None:
        self.parts.append(text)
        self.path.write_text("\n".join(self.parts))  # written as it goes: a cut-off run keeps it


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("PYRO_VAE_DATA_DIR", "data"))
    p.add_argument("--report", default="gpu_check.md", help="the markdown report to write")
    p.add_argument("--budget", type=float, default=450, help="seconds for all sections")
    p.add_argument("--device", default="cuda", help="cuda (cpu only to try the script itself)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: to try the script itself")
    args = p.parse_args()
    import torch

    report = Report(Path(args.report), args.budget)
    cuda = torch.cuda.is_available() and args.device.startswith("cuda")
    name = torch.cuda.get_device_name(0) if cuda else "no CUDA device"
    import pyro

    report.add(
        f"# GPU check\n\nDevice: **{name}**; torch {torch.__version__}, pyro-ppl "
        f"{pyro.__version__}, Python {sys.version.split()[0]}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; budget {args.budget:.0f} s.\n"
    )
    data = ["--data-dir", args.data_dir]
    dev = ["--device", args.device]
    quick = args.quick
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    os.environ["PYRO_VAE_DATA_DIR"] = str(Path(args.data_dir).resolve())

    tests = ["tests/test_cuda_graph.py", "tests/test_elbo.py", "tests/test_priors_likelihoods.py"]
    pytest = [PY, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", *tests]
    report.section("CUDA tests", pytest, 240)

    bench = [PY, "benchmarks/throughput.py", *dev, "--batch-sizes", "128,1024"]
    bench += ["--steps", "20" if quick else "200", "--rounds", "3"]
    report.section("Throughput (ms per training step)", bench, 150)

    vae10 = work / "vae10"
    epochs = "1" if quick else "10"
    train = [PY, "-m", "pyro_vae", "train", "--out", str(vae10), "--epochs", epochs, *data, *dev]
    train += ["--no-progress"]
    train += ["--train-subset", "2000", "--test-subset", "500"] if quick else []
    code, _, seconds = report.section("10-epoch MNIST run", train, 180)
    rows = metrics(vae10)
    if rows:
        per_epoch = [r["seconds"] for r in rows]
        report.add(
            f"- test -ELBO after {rows[-1]['epoch']} epochs: **{rows[-1]['test_neg_elbo']:.2f}** "
            f"nats (step `{rows[-1]['step']}`)\n"
            f"- seconds per epoch (training steps): first {per_epoch[0]:.2f}, median "
            f"{sorted(per_epoch)[len(per_epoch) // 2]:.2f}; tracing/capture "
            f"{rows[0].get('trace_seconds', 0):.1f} s; command {seconds:.0f} s in all\n"
        )

    if rows:
        k = "100" if quick else "5000"
        nll = [PY, "-m", "pyro_vae", "evaluate", str(vae10), "--num-samples", k, *data, *dev]
        nll += ["--step", "compiled"]
        code, _, seconds = report.section(f"K = {k} NLL of the test images", nll, 150)
        path = vae10 / "eval.json"
        if code == 0 and path.exists():
            ll = json.loads(path.read_text()).get("log_likelihood", {})
            report.add(
                f"- test NLL: **{ll.get('neg_log_likelihood', float('nan')):.2f}** +- "
                f"{ll.get('std_error', float('nan')):.2f} nats, K = {k}, "
                f"{ll.get('num_images', '?')} images; the command took {seconds:.0f} s\n"
            )

    iwae = work / "iwae"
    passes = "2" if quick else "4"
    paper = [PY, "-m", "pyro_vae", "train", "--preset", "iwae-paper", "--out", str(iwae)]
    paper += ["--epochs", passes, "--no-progress", *data, *dev]
    report.section("--preset iwae-paper: seconds per pass", paper, 120)
    rows = metrics(iwae)
    if len(rows) > 1:
        later = [r["seconds"] + r.get("eval_seconds", 0) for r in rows[1:]]
        per_pass = sum(later) / len(later)
        report.add(
            f"- seconds per pass after the first (steps and the per-pass test -ELBO): "
            f"**{per_pass:.2f}** (step `{rows[-1]['step']}`); the 3280-pass protocol at that "
            f"rate: {3280 * per_pass / 3600:.1f} h\n"
        )

    mem = [PY, "benchmarks/memory.py", *data, *dev, "--epochs", "1" if quick else "2"]
    mem += ["--steps", "eager,fx,compiled" + (",cudagraph" if cuda else "")]
    report.section("Peak memory per step kind", mem, 240)
    print(f"wrote {report.path} ({report.budget - report.left():.0f} s)")


if __name__ == "__main__":
    main()
