"""What every ``pyro-vae`` command parses with: one-line argparse errors, checked option types,
and which options the user actually typed (so a preset or a resumed run can tell them from
defaults)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .data import DATA_ENV, default_data_dir


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


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        default=default_data_dir(),
        help=f"folder holding MNIST/raw (downloaded if missing); default ${DATA_ENV} or ./data",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")


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
