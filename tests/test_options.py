"""Runs recorded before the renames still load: their train_config held "binarize" (now
``data_mode``) and "extra" (read nowhere, dropped)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pyro_vae import TrainConfig
from pyro_vae.app.view import describe_run, run_info
from pyro_vae.runs.checkpoint import load_checkpoint

RESULTS = Path(__file__).resolve().parents[1] / "results" / "iwae-paper"


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
