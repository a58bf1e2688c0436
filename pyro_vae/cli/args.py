"""What every ``pyro-vae`` command parses with: one-line argparse errors, checked option types,
and which options the user actually typed (so a preset or a resumed run can tell them from
defaults)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from pyro_vae.data.datasets import DEFAULT_TEST_FRACTION, USAGE, parse_dataset
from pyro_vae.data.torchvision_data import DATA_ENV, default_data_dir


class UsageError(Exception):
    """A command line argparse rejects; reported in one line like every other user error."""


class Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one line (no usage block) and abbreviations are off, so
    the options a user typed can be told from the defaults (see ``typed_options``)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message}; see '{self.prog} --help'")


def at_least(low: int):
    """An argparse type: a whole number of at least ``low``."""

    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {s!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {v}")
        return v

    parse.__name__ = f"integer >= {low}"
    return parse


POSITIVE = at_least(1)
NONNEGATIVE = at_least(0)
MAX_PORT = 65535


def port(s: str) -> int:
    """An argparse type: a TCP port, 1 to 65535, or 0 for a free one."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {s!r}") from None
    if not 0 <= v <= MAX_PORT:
        raise argparse.ArgumentTypeError(
            f"must be a TCP port from 1 to {MAX_PORT} (0: a free one), got {v}"
        )
    return v


port.__name__ = "port"


def positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {s}")
    return v


def sizes(s: str) -> tuple[int, ...]:
    """Positive sizes like 400 or 512,256."""
    try:
        values = tuple(int(v) for v in s.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 400 or 512,256, got {s!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes like 400 or 512,256, got {s!r}")
    return values


def betas(s: str) -> tuple[float, float]:
    """Adam's two betas, like 0.9,0.999."""
    try:
        values = tuple(float(v) for v in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected two numbers like 0.9,0.999, got {s!r}"
        ) from None
    if len(values) != 2 or not all(0 <= v < 1 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected two numbers in [0, 1) like 0.9,0.999, got {s!r}"
        )
    return values


def dataset_spec(s: str) -> str:
    try:
        parse_dataset(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return s


def user_dataset(s: str) -> str:
    if s == "":  # argparse converts string defaults too: "" is train's (a fixed-seed split)
        return s
    if parse_dataset(dataset_spec(s))[1].read is None:
        raise argparse.ArgumentTypeError(f"expected folder:PATH or tensor:FILE, got {s!r}")
    return s


def fraction(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {s}")
    return v


# The options that say which data (datasets.DatasetSpec's fields).
DATA_OPTIONS = ("dataset", "image_size", "test_dataset", "test_fraction")


def add_data_args(p: argparse.ArgumentParser, from_run: bool = False) -> None:
    """--data-dir, --device and the dataset options; ``from_run``: a command that loads a run,
    whose own data are the default (another dataset only with --allow-other-dataset)."""
    p.add_argument(
        "--data-dir",
        default=default_data_dir(),
        help="folder holding MNIST/raw (FashionMNIST/raw, KMNIST/raw; downloaded if missing); "
        f"default ${DATA_ENV} or ./data",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    run = "the run's" if from_run else None
    p.add_argument(
        "--dataset",
        type=dataset_spec,
        default=None if from_run else "mnist",
        help=f"{USAGE} (default {run or 'mnist'}); folder: is torchvision's ImageFolder layout",
    )
    p.add_argument(
        "--image-size",
        type=POSITIVE,
        default=None if from_run else 0,
        help=f"folder: resize every image to S x S, grayscale (default {run or 'keep the size'})",
    )
    p.add_argument(
        "--test-dataset",
        type=user_dataset,
        default=None if from_run else "",
        help="folder:/tensor: data: the test set, folder:PATH or tensor:FILE (default "
        f"{run or 'a fixed-seed split of --test-fraction'})",
    )
    p.add_argument(
        "--test-fraction",
        type=fraction,
        default=None if from_run else DEFAULT_TEST_FRACTION,
        help="folder:/tensor: data without --test-dataset: the share of images in the test "
        f"set, chosen with a fixed seed (default {run or DEFAULT_TEST_FRACTION})",
    )
    if from_run:
        p.add_argument(
            "--allow-other-dataset",
            action="store_true",
            help="use data other than the run's (another dataset, size, split or files)",
        )


def data_options(args: argparse.Namespace) -> dict:
    """The dataset options given (None = the run's)."""
    return {k: getattr(args, k) for k in DATA_OPTIONS if getattr(args, k) is not None}


def typed_options(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The ``dest`` of every option of ``parser`` that appears in ``argv``."""
    typed = set()
    for action in parser._actions:
        for opt in action.option_strings:
            if any(a == opt or a.startswith(opt + "=") for a in argv):
                typed.add(action.dest)
    return typed


def shown(value: object) -> str:
    """A setting as it is typed on the command line (sizes as 512,256)."""
    return ",".join(map(str, value)) if isinstance(value, tuple | list) else str(value)
