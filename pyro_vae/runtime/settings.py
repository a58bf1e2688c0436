"""One table of options: each field of a config dataclass says, once, everything about itself.

``setting(default, help, ...)`` is a ``dataclasses.field`` whose metadata (a :class:`Setting`)
holds the help text, the command-line flag, how the command line parses the value, its choices
and whether a resumed run may change it. The CLI builds its options from these fields, the
resume check (``runs.options.resume_settings``) reads which may change, and
``check_settings`` validates a config's values by the same rules the command line parses by.

The parse types here are argparse ``type=`` callables; each also has ``check(value)``, the same
rule for a value already parsed (what a config built in Python is checked by).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

_KEY = "pyro_vae.setting"

# Registries that publish their names for a setting's choices (``registry_names``): a config
# names the registry, the registry module publishes itself on import, so the config need not
# import the module that imports the config.
_REGISTRIES: dict[str, Any] = {}


def publish_registry(name: str, registry: Any) -> None:
    """Makes ``registry`` (a dict of names) the choices of the settings that name it."""
    _REGISTRIES[name] = registry


def registry_names(name: str) -> Callable[[], list[str]]:
    """Choices read, when a parser is built, from the registry published as ``name``."""

    def names() -> list[str]:
        if name not in _REGISTRIES:
            raise LookupError(f"the {name} registry is not loaded; import pyro_vae first")
        return sorted(_REGISTRIES[name])

    names.__name__ = f"{name} registry"
    return names


@dataclass(frozen=True)
class Setting:
    """What a config field is on the command line and on resume (see :func:`setting`)."""

    help: str
    flag: str | None = None
    aliases: tuple[str, ...] = ()
    parse: Callable[[str], Any] | None = None
    choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None
    resumable: bool = False
    keeps_run: tuple[Any, ...] = ()
    shown: str | None = None
    cli_default: Callable[[], Any] | None = None
    valid: Callable[[Any], str | None] | None = None
    cli: bool = True

    def choice_list(self) -> list | None:
        """The choices, a registry's names read now when ``choices`` is a callable."""
        if self.choices is None:
            return None
        return list(self.choices() if callable(self.choices) else self.choices)

    def check(self) -> Callable[[Any], str | None] | None:
        """The value rule: ``valid`` when given, else the parse type's."""
        return self.valid or getattr(self.parse, "check", None)


def setting(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    aliases: Sequence[str] = (),
    parse: Callable[[str], Any] | None = None,
    choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None,
    resumable: bool = False,
    keeps_run: Sequence[Any] = (),
    shown: str | None = None,
    cli_default: Callable[[], Any] | None = None,
    valid: Callable[[Any], str | None] | None = None,
    cli: bool = True,
) -> Any:
    """A dataclass field with its default and what the command line and resume need to know.

    ``help``: the option's help; the CLI appends "(default ...)". ``flag``: the option's name
    when it is not ``--field-name``; ``aliases``: other names it is also accepted under.
    ``parse``: the argparse type (one of this module's, or any callable str -> value raising
    ``argparse.ArgumentTypeError``); a bool default makes an on/off flag. ``choices``: a tuple,
    the only values the field takes (checked by :func:`check_settings`), or a callable giving
    a registry's names, the command line's choices (the library resolves the name itself, so
    e.g. a custom prior's "custom" is valid). ``resumable``: a resumed run may change it.
    ``keeps_run``: values that, given to a resumed run, stand for the run's own ("auto").
    ``shown``: how the help states the default when the value alone says little.
    ``cli_default``: the command line's default when it is not the field's (read from the
    environment when the parser is built). ``valid``: the rule for the field's values when it
    is wider than what the command line accepts (the parse type's ``check`` otherwise).
    ``cli=False``: no option (a value the CLI derives, like the image size).
    """
    if isinstance(default, list | dict | set):
        raise TypeError(f"a setting's default must be immutable, got {default!r}")
    meta = Setting(
        help=help,
        flag=flag,
        aliases=tuple(aliases),
        parse=parse,
        choices=choices,
        resumable=resumable,
        keeps_run=tuple(keeps_run),
        shown=shown,
        cli_default=cli_default,
        valid=valid,
        cli=cli,
    )
    return dataclasses.field(default=default, metadata={_KEY: meta})


def settings_of(cls: Any) -> dict[str, tuple[dataclasses.Field, Setting]]:
    """Each field of the config dataclass ``cls`` (or instance) with its :class:`Setting`, in
    field order; TypeError for a field declared without :func:`setting`."""
    out = {}
    for f in dataclasses.fields(cls):
        if _KEY not in f.metadata:
            raise TypeError(f"{f.name} is not declared with setting(...)")
        out[f.name] = (f, f.metadata[_KEY])
    return out


def option_names(cls: Any) -> tuple[str, ...]:
    """The fields of ``cls`` that are command-line options, in field order."""
    return tuple(name for name, (_, s) in settings_of(cls).items() if s.cli)


def flag_of(name: str, s: Setting) -> str:
    """The option's command-line name: ``--field-name`` unless the setting names another."""
    return s.flag or "--" + name.replace("_", "-")


def cli_default_of(f: dataclasses.Field, s: Setting) -> Any:
    return s.cli_default() if s.cli_default is not None else f.default


def default_text(f: dataclasses.Field, s: Setting) -> str:
    """The default as the help states it."""
    return s.shown if s.shown is not None else shown(cli_default_of(f, s))


def check_settings(config: Any) -> None:
    """ValueError naming the first field of ``config`` whose value breaks its setting's rule:
    a choice outside a tuple of choices, or a value its parse type's ``check`` refuses. A
    default of None stays allowed (None = "not set")."""
    for name, (f, s) in settings_of(config).items():
        value = getattr(config, name)
        if value is None and f.default is None:
            continue
        if isinstance(s.choices, tuple) and value not in s.choices:
            raise ValueError(
                f"{name} must be one of {', '.join(map(str, s.choices))}, got {value!r}"
            )
        rule = s.check()
        problem = rule(value) if rule is not None else None
        if problem:
            raise ValueError(f"{name} {problem}")


def shown(value: object) -> str:
    """A setting as it is typed on the command line (sizes as 512,256; no sizes: none)."""
    if isinstance(value, tuple | list):
        return ",".join(map(str, value)) if value else "none"
    return str(value)


# Parse types. Each is an argparse type (its errors are argparse's one-line messages) with a
# ``check`` for values already parsed: None when the value is fine, else what is wrong.


def _with_check(check: Callable[[Any], str | None]):
    def attach(parse: Callable[[str], Any]) -> Callable[[str], Any]:
        parse.check = check  # type: ignore[attr-defined]
        return parse

    return attach


def _whole_number(s: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {s!r}") from None


def _number(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None


def at_least(low: int) -> Callable[[str], int]:
    """A whole number of at least ``low``."""

    def check(v: int) -> str | None:
        return None if v >= low else f"must be at least {low}, got {v}"

    @_with_check(check)
    def parse(s: str) -> int:
        v = _whole_number(s)
        if check(v):
            raise argparse.ArgumentTypeError(check(v))
        return v

    parse.__name__ = f"integer >= {low}"
    return parse


POSITIVE = at_least(1)
NONNEGATIVE = at_least(0)


def _positive(v: float) -> str | None:
    return None if v > 0 else f"must be positive, got {v}"


@_with_check(_positive)
def positive_float(s: str) -> float:
    """A number > 0."""
    if not _number(s) > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {s}")
    return float(s)


def _nonnegative(v: float) -> str | None:
    return None if v >= 0 else f"must be at least 0, got {v}"


@_with_check(_nonnegative)
def nonnegative_float(s: str) -> float:
    """A number >= 0."""
    if not _number(s) >= 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {s}")
    return float(s)


def _inside_unit(v: float) -> str | None:
    return None if 0 < v < 1 else f"must lie strictly between 0 and 1, got {v}"


@_with_check(_inside_unit)
def fraction(s: str) -> float:
    """A number strictly between 0 and 1."""
    if not 0 < _number(s) < 1:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {s}")
    return float(s)


def or_auto(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse``, or the word "auto" (which a command resolves later, e.g. from the data). A
    config holds the resolved value, never "auto": its values follow ``parse``'s rule."""

    @_with_check(parse.check)  # type: ignore[attr-defined]
    def parse_or_auto(s: str) -> Any:
        return "auto" if s == "auto" else parse(s)

    parse_or_auto.__name__ = f"{parse.__name__} or auto"
    return parse_or_auto


def _positive_sizes(v: tuple[int, ...]) -> str | None:
    # No sizes at all is a value (a network without hidden layers), not a command line.
    return None if all(h >= 1 for h in v) else f"must be positive sizes, got {v}"


@_with_check(_positive_sizes)
def sizes(s: str) -> tuple[int, ...]:
    """Positive sizes like 400 or 512,256."""
    try:
        values = tuple(int(v) for v in s.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 400 or 512,256, got {s!r}") from None
    if not values or _positive_sizes(values):
        raise argparse.ArgumentTypeError(f"expected positive sizes like 400 or 512,256, got {s!r}")
    return values


def _two_betas(v: tuple[float, ...]) -> str | None:
    ok = len(v) == 2 and all(0 <= b < 1 for b in v)
    return None if ok else f"must be two numbers in [0, 1), got {v}"


@_with_check(_two_betas)
def betas(s: str) -> tuple[float, float]:
    """Adam's two betas, like 0.9,0.999."""
    try:
        values = tuple(float(v) for v in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected two numbers like 0.9,0.999, got {s!r}"
        ) from None
    if _two_betas(values):
        raise argparse.ArgumentTypeError(
            f"expected two numbers in [0, 1) like 0.9,0.999, got {s!r}"
        )
    return values  # type: ignore[return-value]
