"""Shared fixtures. Global state (Pyro's param store and settings, torch's RNG) is reset before
every test; warnings are errors (pyproject.toml)."""

from __future__ import annotations

import os
from pathlib import Path

import pyro
import pytest
import torch

from pyro_vae.data.torchvision_data import DATA_ENV, MNIST_FILES

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist's workers (pyproject.toml: two) share the cores: one thread each, and the
    # same for the processes a test starts, or the threads outnumber the cores and spin.
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(autouse=True)
def _reset_global_state():
    pyro.clear_param_store()
    pyro.settings.set(module_local_params=False)
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()
    pyro.settings.set(module_local_params=False)


PYRO_MODES = {"param-store": False, "module-local": True}


@pytest.fixture(params=sorted(PYRO_MODES))
def pyro_mode(request) -> str:
    """Runs a test in both of Pyro's modes: the default (parameters in the global param store,
    where Pyro users start) and ``module_local_params`` (what the CLI uses). Set before the
    test builds any module, as a PyroModule must be built under the mode it runs in."""
    pyro.settings.set(module_local_params=PYRO_MODES[request.param])
    return request.param


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST (torchvision layout) from $PYRO_VAE_DATA_DIR.

    Skipped when unset on a developer's machine; under CI (CI=true) a missing dataset fails.
    """
    root = os.environ.get(DATA_ENV)
    ok = root and all((Path(root) / "MNIST" / "raw" / f).is_file() for f in MNIST_FILES)
    if not ok:
        msg = f"set {DATA_ENV} to a folder holding MNIST/raw (CI uses ../shared/data)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return Path(root).resolve()  # absolute: subprocesses run from other folders


@pytest.fixture
def binary_batch() -> torch.Tensor:
    """A small synthetic batch of 0/1 images [8, 784]."""
    g = torch.Generator().manual_seed(123)
    return torch.bernoulli(torch.full((8, 784), 0.3), generator=g)


def assert_one_line_error(code: int, err: str, expected: str) -> None:
    """What every bad input must give: exit code 2 and one line on stderr, no traceback,
    saying ``expected``."""
    assert code == 2, err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("pyro-vae") and ": error: " in err and "Traceback" not in err
    assert expected in err, err
