"""benchmarks/iwae_protocol_diffs.py: each difference between ``--preset iwae-paper`` and the
authors' code switched on alone. What its table reports rests on two things tested here: its
``preset`` run is the library's own run of the preset, and each variant changes what it names
and nothing else."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from pyro_vae import train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import iwae_paper  # noqa: E402
import iwae_protocol_diffs as diffs  # noqa: E402


def test_the_rounded_rates_are_the_authors_codes_and_the_exact_ones_the_presets():
    # shared/references/iwae-protocol.md: the code's rates, stage by stage.
    code = [1e-3, 7.2e-4, 5.2e-4, 3.7e-4, 2.7e-4, 1.9e-4, 1.4e-4, 1.0e-4]
    assert [diffs.rounded_rate(i) for i in range(8)] == pytest.approx(code, rel=1e-12)
    exact = [diffs.exact_rate(i) for i in range(8)]
    assert exact[1] == pytest.approx(7.1969e-4, rel=1e-4)  # not the code's 7.2e-4
    assert [diffs.stage_of_pass(p) for p in (1, 2, 4, 5, 13, 14, 40, 3280, 5000)] == [
        0, 1, 1, 2, 2, 3, 3, 7, 7,
    ]  # fmt: skip


def test_the_authors_adam_takes_the_codes_steps():
    """v starts at ones, the step is lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps):
    checked against the formula written out, for three steps; torch's Adam differs."""
    torch.manual_seed(0)
    w = torch.randn(5, requires_grad=True)
    ref = w.detach().clone()
    opt = diffs.AuthorsAdam([w], lr=1e-2, betas=(0.99, 0.999), eps=1e-4)
    m, v = torch.zeros(5), torch.ones(5)
    grads = [torch.randn(5) for _ in range(3)]
    for t, g in enumerate(grads, start=1):
        w.grad = g.clone()
        opt.step()
        m = 0.99 * m + 0.01 * g
        v = 0.999 * v + 0.001 * g * g
        ref = ref - 1e-2 * math.sqrt(1 - 0.999**t) / (1 - 0.99**t) * m / (v.sqrt() + 1e-4)
        torch.testing.assert_close(w.detach(), ref)
    torch_w = ref.clone().requires_grad_(True)  # negative control: torch's Adam, same gradients
    torch_opt = torch.optim.Adam([torch_w], lr=1e-2, betas=(0.99, 0.999), eps=1e-4)
    torch_w.grad = grads[0].clone()
    before = torch_w.detach().clone()
    torch_opt.step()
    w.grad = grads[0].clone()
    fresh = diffs.AuthorsAdam([w], lr=1e-2, betas=(0.99, 0.999), eps=1e-4)
    start = w.detach().clone()
    fresh.step()
    assert not torch.allclose(torch_w.detach() - before, w.detach() - start)


@pytest.mark.mnist
def test_the_preset_variant_is_the_librarys_run_and_every_variant_changes_it(
    mnist_dir, tmp_path, capsys, pyro_mode
):
    common = ["--data-dir", str(mnist_dir), "--passes", "2", "--step", "fx"]
    common += ["--train-subset", "200", "--test-subset", "100", "--seeds", "0"]
    results = diffs.main([*common, "--out", str(tmp_path / "diffs"), "--preset-seeds", "0"])
    table = capsys.readouterr().out
    assert set(results) == {(v, 0) for v in diffs.VARIANTS}
    # The script's preset run is the library's own run of the preset (as `pyro-vae train
    # --preset iwae-paper` makes it) on the same data, to the last digit.
    args = argparse.Namespace(
        data_dir=mnist_dir, passes=2, step="fx", train_subset=200, test_subset=100
    )
    vae_config, config = diffs.preset_configs(args, tmp_path / "library", 0, 0.9)
    library = train(vae_config, config, progress=False, log=lambda s: None, write_figures=False)
    keys = ("train_loss", "test_neg_elbo", "test_neg_L100", "lr")
    preset = results[("preset", 0)]
    assert [[r[k] for k in keys] for r in preset] == [[r[k] for k in keys] for r in library]
    # Every variant changes the run (the same seed: the same weights, order and noise).
    for variant in diffs.VARIANTS[1:]:
        assert results[(variant, 0)][-1]["train_loss"] != preset[-1]["train_loss"], variant
    # ... and what it names: beta_1, the rates, the head.
    betas = json.loads((tmp_path / "diffs" / "beta1-0.99-seed0" / "config.json").read_text())
    assert betas["train"]["betas"] == [0.99, 0.999]
    # Pass 2 is stage 1: the code's rounded 7.2e-4 against the exact 7.197e-4.
    assert results[("rounded-rates", 0)][1]["lr"] == pytest.approx(7.2e-4, rel=1e-12)
    assert results[("authors-adam", 0)][1]["lr"] == pytest.approx(preset[1]["lr"], rel=1e-12)
    assert preset[1]["lr"] != pytest.approx(7.2e-4, rel=1e-6)
    load = lambda v: torch.load(tmp_path / "diffs" / f"{v}-seed0" / "checkpoint.pt")  # noqa: E731
    assert load("exp-scale")["model"].keys() == load("preset")["model"].keys()
    assert "preset -L100 after 2 passes" in table and "exp-scale" in table
    # A finished run is read back, not trained again.
    again = diffs.main([*common, "--out", str(tmp_path / "diffs"), "--preset-seeds", "0"])
    assert again == results and "seed 0: epoch" not in capsys.readouterr().out


@pytest.mark.mnist
def test_the_iwae_paper_report_gives_the_stage_curve_active_units_and_binarizations(
    mnist_dir, capsys
):
    """benchmarks/iwae_paper.py on the committed VAE run: the stage-end bounds from its
    metrics, its active units on the test set and on 500 training images, and -L_K on other
    binarizations of the test set beside the fixed one every run is scored on."""
    from pyro_vae.data.images import ImageData
    from pyro_vae.data.pixels import TEST_DATA_SEED

    run = Path(__file__).resolve().parents[1] / "results" / "iwae-paper" / "vae-k1"
    argv = [str(run), "--data-dir", str(mnist_dir), "--binarizations", "2"]
    iwae_paper.main([*argv, "--iw-samples", "2", "--step", "fx"])
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    at40 = rows[39]
    assert f"| 40 | 3.7e-04 | {at40['test_neg_elbo']:.2f} | {at40['test_neg_L100']:.2f} |" in out
    au = json.loads((run / "eval.json").read_text()).get("active_units")
    line = next(s for s in out.splitlines() if "active units" in s)
    assert " of 50 on the 10000 test images" in line and "first 500 training images" in line
    if au is not None:
        assert line.split()[2] == str(au["active"])
    values = [float(s.split("-L_2 ")[1].split()[0]) for s in out.splitlines() if "-L_2 " in s]
    assert len(values) == 2 and values[0] != values[1]  # another binarization, another value
    assert "over 2 binarizations" in out
    # Seed TEST_DATA_SEED is the fixed binarization every run's test set is.
    lik = iwae_paper.load_vae(run)[0].likelihood
    raw = iwae_paper.load_dataset("mnist", mnist_dir)
    fixed = ImageData.load(mnist_dir, lik, "dynamic").test_x
    assert torch.equal(iwae_paper.binarized(raw.test_x, lik, TEST_DATA_SEED), fixed)
    assert not torch.equal(iwae_paper.binarized(raw.test_x, lik, TEST_DATA_SEED + 1), fixed)
    with pytest.raises(SystemExit):
        iwae_paper.main([str(run), "--binarizations", "2"])  # no --data-dir
