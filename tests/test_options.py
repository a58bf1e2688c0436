"""The options table: every option of ``pyro-vae train`` is one field of TrainConfig or
VAEConfig, stated once (default, help, flag, parse type, choices, resumable), and one resume
check serves the command line and ``pyro_vae.train(..., resume=True)`` alike.

The tests read the parser and the signatures the code builds, and the source of the modules that
build ``train``'s options, so a default stated a second time (and then drifting) fails here.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import assert_one_line_error
from synthetic import write_tensor_file

import pyro_vae.cli.args as cli_args
import pyro_vae.cli.train as cli_train
from pyro_vae import VAE, TrainConfig, VAEConfig, train
from pyro_vae.app.view import describe_run, run_info
from pyro_vae.cli.args import Parser, UsageError, add_settings, typed_options
from pyro_vae.cli.main import build_parser, main
from pyro_vae.runs.checkpoint import load_checkpoint, save_checkpoint
from pyro_vae.runs.options import RESUMABLE, resume_settings
from pyro_vae.runtime.settings import (
    flag_of,
    option_names,
    positive_float,
    setting,
    settings_of,
    shown,
)

TABLES = (TrainConfig, VAEConfig)
RESULTS = Path(__file__).resolve().parents[1] / "results" / "iwae-paper"


def train_parser():
    return build_parser()._subparsers._group_actions[0].choices["train"]


def actions_by_dest(parser) -> dict:
    return {a.dest: a for a in parser._actions}


# One table: the parser, the signature and the resume check all come from the fields.


@pytest.mark.parametrize("config", TABLES, ids=lambda c: c.__name__)
def test_every_option_of_train_is_its_field_default_help_flag_type_and_choices(config):
    actions = actions_by_dest(train_parser())
    for name, (f, s) in settings_of(config).items():  # every field is declared with setting()
        assert s.help, name
        if not s.cli:
            assert name not in actions, name
            continue
        a = actions[name]
        assert a.option_strings == [flag_of(name, s), *s.aliases], name
        expected = s.cli_default() if s.cli_default else f.default
        assert a.default == expected, name
        if isinstance(f.default, bool):
            assert a.nargs == 0 and a.const is True, name  # an on/off flag, off by default
            continue
        # The help states the parser's own default (or says in words what it means).
        stated = s.shown if s.shown is not None else shown(a.default)
        assert a.help == f"{s.help} (default {stated})", name
        assert a.type is s.parse, name
        assert a.choices == s.choice_list(), name


def test_train_has_no_option_outside_the_table_but_its_own_few():
    table = {n for config in TABLES for n in option_names(config)}
    dests = set(actions_by_dest(train_parser())) - {"help"}
    assert dests - table == {"resume", "no_progress"}
    assert table - dests == set()


def test_the_flags_that_differ_from_the_field_names_and_the_data_mode_alias():
    parser = build_parser()
    args = parser.parse_args(["train", "--adam-betas", "0.5,0.6", "--adam-eps", "0.1"])
    assert (args.betas, args.eps) == ((0.5, 0.6), 0.1)
    for flag in ("--data-mode", "--binarize"):  # --binarize: the old name, still accepted
        argv = ["train", flag, "threshold"]
        args = parser.parse_args(argv)
        assert args.data_mode == "threshold"
        assert "data_mode" in typed_options(train_parser(), argv)
    with pytest.raises(UsageError, match="argument --data-mode/--binarize: invalid choice"):
        parser.parse_args(["train", "--binarize", "binary"])


@pytest.mark.parametrize("command", ["evaluate", "plot", "serve", "compare-elbo"])
def test_commands_that_load_a_run_take_its_data_by_default(command):
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    actions = actions_by_dest(sub)
    for name in cli_args.DATA_OPTIONS:
        assert actions[name].default is None, (command, name)
        assert actions[name].help.endswith("(default the run's)"), (command, name)
        assert actions[name].type is settings_of(TrainConfig)[name][1].parse
    assert actions["data_dir"].default == settings_of(TrainConfig)["data_dir"][1].cli_default()


def test_resumable_is_what_the_table_marks():
    assert RESUMABLE == tuple(n for n, (_, s) in settings_of(TrainConfig).items() if s.resumable)
    assert set(RESUMABLE) == {
        "epochs", "data_dir", "device", "out", "step", "tensorboard", "test_iw_samples",
    }  # fmt: skip


def test_vae_init_takes_its_defaults_from_vaeconfig():
    params = inspect.signature(VAE.__init__).parameters
    fields = {f.name: f.default for f in dataclasses.fields(VAEConfig)}
    assert set(fields) <= set(params)
    for name, default in fields.items():
        assert params[name].default == default, name
    assert VAE(z_dim=2).config == VAEConfig(z_dim=2)


# No default stated twice: the modules that build train's options hold no literal default of an
# option of the table. (main.py's other commands have options of their own, with their own
# defaults: evaluate's --batch-size is the NLL's batch, not training's.)
TRAIN_PARSER_MODULES = (cli_train, cli_args)


def restated_defaults(source: str) -> list[str]:
    """The add_argument calls in ``source`` that state a default for an option of the table."""
    flags = {flag_of(n, s) for c in TABLES for n, (_, s) in settings_of(c).items()}
    flags |= {a for c in TABLES for _, s in settings_of(c).values() for a in s.aliases}
    names = {n for c in TABLES for n in settings_of(c)}
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument"):
            continue
        strings = {a.value for a in node.args if isinstance(a, ast.Constant)}
        keywords = {k.arg: k.value for k in node.keywords}
        dest = keywords.get("dest")
        table_option = strings & flags or (isinstance(dest, ast.Constant) and dest.value in names)
        if table_option and "default" in keywords:
            found.append(ast.unparse(node))
    return found


def test_no_default_of_the_table_is_restated_where_train_builds_its_options():
    assert cli_train.add_train_parser.__module__ == cli_train.__name__
    assert cli_train.add_data_args.__module__ == cli_args.__name__
    for module in TRAIN_PARSER_MODULES:
        assert restated_defaults(inspect.getsource(module)) == [], module.__name__


def test_the_source_check_finds_a_planted_default():
    planted = (
        "def add(t):\n"
        "    t.add_argument('--epochs', type=POSITIVE, default=10, help='epochs (default 10)')\n"
        "    t.add_argument('--adam-eps', dest='eps', type=positive_float, default=1e-8)\n"
        "    t.add_argument('--binarize', choices=MODES, default='auto')\n"
        "    t.add_argument('--no-progress', action='store_true')\n"
        "    t.add_argument('--resume', action='store_true', default=False)\n"
    )
    found = restated_defaults(planted)
    flagged = [next(flag for flag in ("--epochs", "--adam-eps", "--binarize") if flag in f)
               for f in found]  # fmt: skip
    assert flagged == ["--epochs", "--adam-eps", "--binarize"]  # not --resume, --no-progress


def test_a_new_field_is_an_option_with_its_default_type_and_check():
    """What the other engineer's kl_weight will get from its one line."""

    @dataclass
    class Config:
        kl_weight: float = setting(1.0, "weight of the KL term", parse=positive_float)

        def __post_init__(self) -> None:
            from pyro_vae.runtime.settings import check_settings

            check_settings(self)

    parser = Parser(prog="p")
    add_settings(parser, Config)
    assert parser.parse_args([]).kl_weight == 1.0
    assert parser.parse_args(["--kl-weight", "0.5"]).kl_weight == 0.5
    assert "weight of the KL term (default 1.0)" in parser.format_help()
    with pytest.raises(UsageError, match="argument --kl-weight: must be positive, got 0"):
        parser.parse_args(["--kl-weight", "0"])
    with pytest.raises(ValueError, match="kl_weight must be positive, got -1"):
        Config(kl_weight=-1)


def test_configs_check_their_values_by_the_tables_rules():
    for bad, match in [
        (dict(epochs=0), "epochs must be at least 1, got 0"),
        (dict(lr=-1.0), "lr must be positive"),
        (dict(betas=(0.9, 1.0)), r"betas must be two numbers in \[0, 1\)"),
        (dict(elbo="elbow"), "elbo must be one of auto, trace, meanfield, iwae, enum, got 'elbow'"),
        (dict(data_mode="binary"), "data_mode must be one of auto, dynamic"),
        (dict(image_size=-1), "image_size must be at least 0"),
        (dict(test_fraction=1.0), "test_fraction must lie strictly between 0 and 1"),
    ]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(**bad)
    TrainConfig(image_size=0, preset="iwae-paper")  # 0 keeps the size; the CLI takes a size
    for bad, match in [
        (dict(z_dim=0), "z_dim must be at least 1"),
        (dict(hidden_dims=(0,)), "hidden_dims must be positive sizes"),
        (dict(num_classes=-1), "num_classes must be at least 0"),
        (dict(likelihood_scale=0.0), "likelihood_scale must be positive"),
    ]:
        with pytest.raises(ValueError, match=match):
            VAEConfig(**bad)
    VAEConfig(prior="custom", likelihood="custom")  # a registry's names are the CLI's only


# Runs recorded before the renames: train_config held "binarize" (and "extra", read nowhere).


def legacy(train_config: dict) -> dict:
    old = dict(train_config)
    old["binarize"] = old.pop("data_mode")
    old["extra"] = {}
    return old


def test_a_legacy_train_config_loads_with_its_data_mode():
    old = legacy(TrainConfig(data_mode="threshold", epochs=3).to_dict())
    config = TrainConfig.from_dict(old)
    assert config == TrainConfig(data_mode="threshold", epochs=3)
    assert not hasattr(config, "extra") and not hasattr(config, "binarize")
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({"binarise": "dynamic"})


@pytest.mark.parametrize("run", ["vae-k1", "iwae-k5"])
def test_the_recorded_iwae_paper_runs_still_load(run):
    config = json.loads((RESULTS / run / "config.json").read_text())
    assert "binarize" in config["train"] and "extra" in config["train"]  # written before
    assert TrainConfig.from_dict(config["train"]).data_mode == "dynamic"
    ckpt = load_checkpoint(RESULTS / run)
    recorded = TrainConfig.from_dict(ckpt["train_config"])
    assert (recorded.data_mode, recorded.preset) == ("dynamic", "iwae-paper")
    assert "data: binarized" in describe_run(run_info(RESULTS / run, ckpt))


# One resume check, two entry points: the same cases give the same answers and messages.


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("options")
    path = write_tensor_file(root / "t.pt", n=40, shape=(8, 8), num_classes=2)
    run = root / "run"
    argv = ["train", "--out", str(run), "--dataset", f"tensor:{path}", "--hidden-dims", "8"]
    argv += ["--z-dim", "2", "--epochs", "1", "--batch-size", "20", "--device", "cpu"]
    assert main([*argv, "--no-progress", "--step", "eager"]) == 0
    return run


def copy_of(run: Path, tmp_path: Path, name: str) -> Path:
    return Path(shutil.copytree(run, tmp_path / name))


def the_runs_config(run: Path, **changes) -> TrainConfig:
    """What a Python user resuming ``run`` passes: the run's own settings, with ``changes``."""
    recorded = TrainConfig.from_dict(load_checkpoint(run)["train_config"])
    return dataclasses.replace(recorded, out=str(run), **changes)


FLAGS = "only --data-dir, --epochs, --device, --step, --test-iw-samples, --tensorboard may change"
REFUSED = [
    (["--lr", "0.01"], {"lr": 0.01}, "--lr 0.01 (TrainConfig.lr; the run has 0.001); drop it"),
    (["--adam-eps", "0.1"], {"eps": 0.1}, "--adam-eps 0.1 (TrainConfig.eps; the run has 1e-08)"),
    (
        ["--binarize", "threshold"],
        {"data_mode": "threshold"},
        "--data-mode threshold (TrainConfig.data_mode; the run has dynamic)",
    ),
    (
        ["--seed", "3", "--batch-size", "10"],
        {"seed": 3, "batch_size": 10},
        "--batch-size 10 (TrainConfig.batch_size; the run has 20), --seed 3 (TrainConfig.seed; "
        f"the run has 0); drop them ({FLAGS}), or train a new run with another --out",
    ),
]


@pytest.mark.parametrize("argv,changes,message", REFUSED, ids=lambda v: str(v)[:24])
def test_both_entry_points_refuse_the_same_changes_with_one_message(
    tiny_run, argv, changes, message, capsys
):
    before = {p.name: p.read_bytes() for p in tiny_run.iterdir() if p.is_file()}
    cli = ["train", "--out", str(tiny_run), "--resume", "--device", "cpu", *argv]
    assert main(cli) == 2
    err = capsys.readouterr().err
    assert_one_line_error(2, err, message)
    with pytest.raises(ValueError) as e:
        train(None, the_runs_config(tiny_run, **changes), resume=True, progress=False)
    assert err == f"pyro-vae train: error: {e.value}\n"  # the very same message
    assert err.startswith("pyro-vae train: error: --resume keeps the run's settings, but ")
    assert {p.name: p.read_bytes() for p in tiny_run.iterdir() if p.is_file()} == before


def test_the_model_options_are_refused_on_the_command_line(tiny_run, capsys):
    cli = ["train", "--out", str(tiny_run), "--resume", "--device", "cpu"]
    assert main([*cli, "--z-dim", "3", "--hidden-dims", "8"]) == 2  # 8: the run's, accepted
    err = capsys.readouterr().err
    assert_one_line_error(2, err, "--z-dim 3 (VAEConfig.z_dim; the run has 2); drop it")
    assert "--hidden-dims" not in err


@pytest.mark.parametrize(
    "argv,changes",
    [
        ([], {}),
        (["--data-mode", "auto"], {"data_mode": "auto"}),  # auto: the run's own mode
        (["--binarize", "dynamic", "--lr", "0.001"], {"data_mode": "dynamic", "lr": 0.001}),
    ],
    ids=["length only", "data mode auto", "the run's own values"],
)
def test_both_entry_points_resume_the_same_run_the_same_way(
    tiny_run, tmp_path, argv, changes, capsys
):
    by_cli, by_python = copy_of(tiny_run, tmp_path, "cli"), copy_of(tiny_run, tmp_path, "py")
    cli = ["train", "--out", str(by_cli), "--resume", "--epochs", "2", "--device", "cpu"]
    assert main([*cli, "--num-classes", "auto", "--no-progress", *argv]) == 0, capsys.readouterr()
    config = the_runs_config(by_python, epochs=2, **changes)
    train(None, config, resume=True, progress=False, write_figures=False, log=lambda s: None)
    a, b = (load_checkpoint(run)["train_config"] for run in (by_cli, by_python))
    assert a["epochs"] == b["epochs"] == 2 and a["data_mode"] == "dynamic"
    assert {**a, "out": ""} == {**b, "out": ""}


def test_the_validator_takes_the_run_as_it_was_recorded():
    saved = TrainConfig(data_mode="dynamic", lr=1e-3)
    model = VAEConfig(hidden_dims=(16,))
    resumed = resume_settings(
        saved, {"epochs": 5, "data_mode": "auto", "num_classes": "auto"}, model
    )
    assert (resumed.epochs, resumed.data_mode) == (5, "dynamic")
    assert resume_settings(saved, {"betas": [0.9, 0.999], "hidden_dims": [16]}, model) == saved
    with pytest.raises(ValueError, match="unknown settings"):
        resume_settings(saved, {"z_dim": 3})  # no model given: VAEConfig's are not settings here


def test_a_legacy_run_resumes_from_the_command_line(tiny_run, tmp_path, capsys):
    run = copy_of(tiny_run, tmp_path, "legacy")
    ckpt = load_checkpoint(run)
    ckpt["train_config"] = legacy(ckpt["train_config"])
    save_checkpoint(run / "checkpoint.pt", ckpt)
    cli = ["train", "--out", str(run), "--resume", "--device", "cpu", "--no-progress"]
    assert main([*cli, "--binarize", "threshold"]) == 2
    assert "the run has dynamic" in capsys.readouterr().err
    assert main([*cli, "--epochs", "2"]) == 0
    resumed = load_checkpoint(run)["train_config"]
    assert resumed["data_mode"] == "dynamic" and "binarize" not in resumed
    assert "extra" not in resumed
