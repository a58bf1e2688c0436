"""Executes the tutorial notebooks with nbclient.

    python docs/tutorials/run.py --check     # QUICK (PYRO_VAE_QUICK=1), in a temp copy (CI)
    python docs/tutorials/run.py --write     # the full settings; outputs saved into the notebooks
    python docs/tutorials/run.py --check 03_analytic_vs_monte_carlo.ipynb   # some of them

``--check`` fails (exit 1) on the first cell that raises, naming the notebook and the cell;
the notebooks on disk are left alone. ``--write`` is how the committed outputs, figures
included, are made. The notebooks read MNIST from ``$PYRO_VAE_DATA_DIR``; each runs in a
temporary working directory, with the kernel of this Python (``ipykernel``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

HERE = Path(__file__).resolve().parent
CELL_TIMEOUT = 600  # seconds; a QUICK cell takes seconds


def notebooks(names: list[str]) -> list[Path]:
    found = sorted(HERE.glob("*.ipynb"))
    if not names:
        return found
    paths = [HERE / Path(n).name for n in names]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        sys.exit(f"run.py: error: no notebook {', '.join(missing)} in {HERE}")
    return paths


def execute(path: Path, quick: bool) -> nbformat.NotebookNode:
    """The notebook executed from its first cell, in a fresh kernel and a temp directory."""
    nb = nbformat.read(path, as_version=4)
    os.environ["PYRO_VAE_QUICK"] = "1" if quick else "0"  # the kernel inherits the environment
    with tempfile.TemporaryDirectory(prefix="tutorial-") as cwd:
        client = NotebookClient(
            nb,
            timeout=CELL_TIMEOUT,
            kernel_name="python3",
            record_timing=False,  # no timestamps in the committed notebooks
            resources={"metadata": {"path": cwd}},
        )
        client.execute()
    return nb


def absolute_data_dir(environ: os._Environ | dict) -> str:
    """``$PYRO_VAE_DATA_DIR`` (default ./data) as an absolute path, from the folder run.py was
    started in: each notebook runs in a temporary folder, where a relative path means nothing."""
    return str(Path(environ.get("PYRO_VAE_DATA_DIR") or "data").resolve())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="QUICK mode, nothing written (CI)")
    mode.add_argument("--write", action="store_true", help="full settings, outputs saved")
    p.add_argument("names", nargs="*", help="notebook file names (default: all)")
    args = p.parse_args(argv)
    data = absolute_data_dir(os.environ)
    if not os.environ.get("PYRO_VAE_DATA_DIR"):
        print(f"run.py: note: PYRO_VAE_DATA_DIR is unset; the notebooks look in {data}", flush=True)
    os.environ["PYRO_VAE_DATA_DIR"] = data  # the kernels run in temporary folders
    for path in notebooks(args.names):
        t0 = time.perf_counter()
        try:
            nb = execute(path, quick=args.check)
        except CellExecutionError as e:
            print(f"FAILED {path.name}:\n{e}", file=sys.stderr)
            return 1
        if args.write:
            nb.metadata["pyro_vae"] = {"settings": "full"}  # what tests/test_docs.py checks
            nbformat.write(nb, path)
        print(f"{'wrote' if args.write else 'ok'} {path.name} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
