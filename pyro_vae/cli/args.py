"""What every ``pyro-vae`` command parses with: one-line argparse errors, checked option types,
and which options the user actually typed (so a preset or a resumed run can tell them from
defaults)."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from typing import Any

from pyro_vae.data.datasets import DatasetSpec
from pyro_vae.runs.options import TrainConfig, dataset_spec, user_dataset
from pyro_vae.runtime.settings import (
    NONNEGATIVE,
    POSITIVE,
    at_least,
    betas,
    cli_default_of,
    default_text,
    flag_of,
    fraction,
    option_names,
    positive_float,
    settings_of,
    shown,
    sizes,
)

# The parse types live with the options table (runtime.settings); commands import them here.
__all__ = [
    "NONNEGATIVE",
    "POSITIVE",
    "Parser",
    "UsageError",
    "add_data_args",
    "add_setting",
    "add_settings",
    "at_least",
    "betas",
    "data_options",
    "dataset_spec",
    "fraction",
    "port",
    "positive_float",
    "shown",
    "sizes",
    "typed_options",
    "user_dataset",
]


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


# How the help of a command that loads a run states the default of a data option.
RUNS_OWN = "the run's"
# The options that say which data (datasets.DatasetSpec's fields).
DATA_OPTIONS = tuple(f.name for f in dataclasses.fields(DatasetSpec))


def add_setting(parser: Any, config: type, name: str, *, from_run: bool = False) -> None:
    """The option of field ``name`` of ``config`` (TrainConfig or VAEConfig), as its setting
    says: flag and aliases, parse type, choices, and its help with the default appended.
    ``from_run``: for a command that loads a run, whose own value is the default (None)."""
    f, s = settings_of(config)[name]
    options: dict[str, Any] = {"dest": name}
    if isinstance(f.default, bool):
        if f.default:
            raise ValueError(f"{name}: an on/off option must default to off")
        if from_run:  # not given: None, the run's own value (which may be on)
            options.update(action="store_const", const=True, default=None)
            text = f"{s.help} (default {RUNS_OWN})"
        else:
            options["action"] = "store_true"
            text = s.help
    else:
        options["default"] = None if from_run else cli_default_of(f, s)
        if s.parse is not None:
            options["type"] = s.parse
        if s.choices is not None:
            options["choices"] = s.choice_list()
        text = f"{s.help} (default {RUNS_OWN if from_run else default_text(f, s)})"
    parser.add_argument(flag_of(name, s), *s.aliases, help=text.replace("%", "%%"), **options)


def add_settings(parser: Any, config: type, names: Sequence[str] | None = None) -> None:
    """The options of ``names`` (default: every option of ``config``), in that order."""
    for name in option_names(config) if names is None else names:
        add_setting(parser, config, name)


def add_data_args(p: argparse.ArgumentParser, from_run: bool = False) -> None:
    """--data-dir, --device and the dataset options; ``from_run``: a command that loads a run,
    whose own data are the default (another dataset only with --allow-other-dataset)."""
    for name in ("data_dir", "device"):
        add_setting(p, TrainConfig, name)
    for name in DATA_OPTIONS:
        add_setting(p, TrainConfig, name, from_run=from_run)
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
