"""Training on real MNIST subsets: it learns, its run directory is complete, a checkpoint
reloads to the recorded loss, and ``resume`` continues exactly where the run stopped."""

from __future__ import annotations

import json
import math

import matplotlib.image
import pyro
import pytest
import torch
from conftest import PYRO_MODES

from pyro_vae import TrainConfig, VAEConfig, load_vae
from pyro_vae.data.images import ImageData
from pyro_vae.evaluation.elbo import evaluate_elbo
from pyro_vae.inference.objectives import elbo_terms
from pyro_vae.models.vae import VAE
from pyro_vae.runs.checkpoint import load_checkpoint
from pyro_vae.training.loop import EVAL_BATCH, train

pytestmark = pytest.mark.mnist

TRAIN_SUBSET, TEST_SUBSET = 3000, 1000
METRIC_KEYS = {
    "epoch",
    "estimator",
    "kl_kind",
    "train_neg_elbo",
    "train_recon",
    "train_kl",
    "test_neg_elbo",
    "test_recon",
    "test_kl",
    "seconds",
    "units",
}


def jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module", params=sorted(PYRO_MODES))
def run(request, mnist_dir, tmp_path_factory):
    """Two epochs of the default VAE (Pyro's example network) on 3000 training images, in each
    of Pyro's modes (the library changes neither)."""
    out = tmp_path_factory.mktemp("run") / "vae"
    config = TrainConfig(
        data_dir=str(mnist_dir),
        out=str(out),
        epochs=2,
        train_subset=TRAIN_SUBSET,
        test_subset=TEST_SUBSET,
        device="cpu",
    )
    lines_on_disk = []

    def log(line: str) -> None:  # called after each epoch: what a user tailing the file sees
        lines_on_disk.append(len(jsonl(out / "metrics.jsonl")))

    with pyro.settings.context(module_local_params=PYRO_MODES[request.param]):
        metrics = train(VAEConfig(), config, progress=False, log=log)
        assert pyro.settings.get("module_local_params") is PYRO_MODES[request.param]
    return {"out": out, "config": config, "metrics": metrics, "lines_on_disk": lines_on_disk}


def test_training_improves_the_test_elbo_by_a_clear_margin(run, mnist_dir):
    config = run["config"]
    torch.manual_seed(config.seed)
    untrained = VAE.from_config(VAEConfig())
    data = ImageData.load(
        mnist_dir, untrained.likelihood, "dynamic", "cpu", train_subset=1, test_subset=TEST_SUBSET
    )
    with torch.no_grad():
        before = evaluate_elbo(untrained, data.test_batches(EVAL_BATCH))["neg_elbo"]
    m1, m2 = run["metrics"]
    # An untrained decoder gives about 784 log 2 = 543 nats; 2 epochs on 3000 digits about 200.
    assert m2["test_neg_elbo"] < before - 200, (before, m1, m2)
    assert m2["test_neg_elbo"] < m1["test_neg_elbo"]
    assert m2["train_neg_elbo"] < m1["train_neg_elbo"]


def test_metrics_jsonl_has_one_flushed_line_per_epoch(run):
    assert run["lines_on_disk"] == [1, 2]  # each line was on disk when its epoch was reported
    rows = jsonl(run["out"] / "metrics.jsonl")
    assert rows == run["metrics"]
    for epoch, row in enumerate(rows, start=1):
        assert METRIC_KEYS <= set(row), METRIC_KEYS - set(row)
        assert row["epoch"] == epoch
        assert row["estimator"] == "Trace_ELBO" and row["kl_kind"] == "monte-carlo"
        assert row["units"] == "nats per image"
        for split in ("train", "test"):
            total = row[f"{split}_recon"] + row[f"{split}_kl"]
            assert row[f"{split}_neg_elbo"] == pytest.approx(total)
            assert row[f"{split}_kl"] > 0 and row[f"{split}_recon"] > 0
        assert row["seconds"] > 0


def test_run_directory_holds_config_checkpoint_and_figures(run):
    out = run["out"]
    saved = json.loads((out / "config.json").read_text())
    assert VAEConfig.from_dict(saved["vae"]) == VAEConfig()
    train_cfg = TrainConfig.from_dict(saved["train"])
    assert train_cfg.epochs == 2 and train_cfg.data_mode == "dynamic"
    ckpt = load_checkpoint(out)
    assert ckpt["epoch"] == 2
    assert {"vae_config", "train_config", "model", "optimizer", "scheduler", "world_size"} <= set(
        ckpt
    )
    assert not list(out.glob("*.tmp")), "a temporary checkpoint file was left behind"
    for name in ("reconstructions.png", "samples.png"):
        img = matplotlib.image.imread(out / "figures" / name)
        assert img.ndim == 3 and min(img.shape[:2]) > 100
        assert img[..., :3].std() > 0.05, f"{name} is blank"


def test_checkpoint_reloads_to_the_recorded_test_loss(run, mnist_dir):
    vae, ckpt = load_vae(run["out"], "cpu")
    data = ImageData.load(
        mnist_dir, vae.likelihood, "dynamic", "cpu", train_subset=1, test_subset=TEST_SUBSET
    )
    x = data.test_x
    draws = []
    for seed in (1, 2):
        pyro.set_rng_seed(seed)
        with torch.no_grad():
            t = elbo_terms(vae.model, vae.guide, x)
        draws.append(t.kl - t.log_lik)
    a, b = draws
    # Same images, independent z: (a - b) / sqrt(2) has the per-image Monte Carlo spread, so
    # the recorded mean and our mean (one draw each) differ by a Normal with this SE.
    se = math.sqrt(((a - b) ** 2).mean().item() / 2 / len(x) * 2)
    recorded = run["metrics"][-1]["test_neg_elbo"]
    assert abs(a.mean().item() - recorded) < 4 * se, (a.mean().item(), recorded, se)
    assert se < 1.0  # tight enough that the epoch-1 weights (~10 nats worse) would fail


def test_fresh_train_into_an_existing_run_refuses_and_keeps_the_checkpoint(run, mnist_dir):
    out = run["out"]
    before = (out / "checkpoint.pt").read_bytes(), (out / "metrics.jsonl").read_text()
    config = TrainConfig(data_dir=str(mnist_dir), out=str(out), epochs=1, device="cpu")
    with pytest.raises(ValueError, match="--resume"):
        train(VAEConfig(), config, progress=False)
    assert ((out / "checkpoint.pt").read_bytes(), (out / "metrics.jsonl").read_text()) == before


def test_resume_after_one_epoch_equals_two_epochs_straight(pyro_mode, mnist_dir, tmp_path):
    vae_config = VAEConfig(z_dim=8, hidden_dims=(32,))

    def config(out: str, epochs: int) -> TrainConfig:
        return TrainConfig(
            data_dir=str(mnist_dir),
            out=str(tmp_path / out),
            epochs=epochs,
            train_subset=1000,
            test_subset=200,
            device="cpu",
            seed=3,
        )

    quiet = {"progress": False, "write_figures": False, "log": lambda line: None}
    straight = train(vae_config, config("straight", 2), **quiet)
    train(vae_config, config("resumed", 1), **quiet)
    # Only the length of the run is given again; the model comes from the checkpoint.
    resumed = train(None, config("resumed", 2), resume=True, **quiet)

    a = load_checkpoint(tmp_path / "straight")
    b = load_checkpoint(tmp_path / "resumed")
    assert a["epoch"] == b["epoch"] == 2
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for pa, pb in zip(
        a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True
    ):
        for k in pa:
            assert torch.equal(pa[k], pb[k]), k
    timing = {"seconds", "eval_seconds"}

    def drop(rows):
        return [{k: v for k, v in r.items() if k not in timing} for r in rows]

    assert drop(resumed) == drop(straight)
    assert drop(jsonl(tmp_path / "resumed" / "metrics.jsonl")) == drop(straight)


class _Crash(Exception):
    """The process dying between two writes."""


def test_a_crash_between_an_epochs_two_writes_resumes_with_one_row_per_epoch(
    mnist_dir, tmp_path, monkeypatch
):
    """Each epoch writes its metrics row and its checkpoint. Whichever comes second, a crash
    just before it leaves a run that resumes with every epoch's row once, in order (a
    checkpoint written before its row would resume past a row that was never written)."""
    import pyro_vae.training.loop as training

    config = TrainConfig(
        data_dir=str(mnist_dir), out=str(tmp_path / "run"), epochs=3, train_subset=64,
        test_subset=32, device="cpu", step="eager",
    )  # fmt: skip
    quiet = {"progress": False, "write_figures": False, "log": lambda line: None}
    writes = []

    def crashing(name, write):
        def wrapped(*args, **kwargs):
            writes.append(name)
            if len(writes) == 4:  # the second write of epoch 2
                raise _Crash
            return write(*args, **kwargs)

        return wrapped

    with monkeypatch.context() as m:
        m.setattr(training, "save_checkpoint", crashing("checkpoint", training.save_checkpoint))
        m.setattr(training, "append_metrics", crashing("row", training.append_metrics))
        with pytest.raises(_Crash):
            train(VAEConfig(z_dim=2, hidden_dims=(16,)), config, **quiet)
    train(None, config, resume=True, **quiet)
    assert [r["epoch"] for r in jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3]


def _short(mnist_dir, out, step: str, epochs: int = 2) -> TrainConfig:
    return TrainConfig(
        data_dir=str(mnist_dir),
        out=str(out),
        epochs=epochs,
        batch_size=128,  # 1000 images: 7 full batches and a last one of 104, the eager fallback
        train_subset=1000,
        test_subset=200,
        device="cpu",
        seed=4,
        step=step,
    )


QUIET = {"progress": False, "write_figures": False, "log": lambda line: None}
SMALL = VAEConfig(z_dim=4, hidden_dims=(32,))
TIMING = {"seconds", "eval_seconds", "trace_seconds", "step"}


def _drop(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_replayed_graph_trains_exactly_as_the_eager_step(pyro_mode, mnist_dir, tmp_path):
    """The traced graph draws the same random numbers in the same order as the Pyro program:
    a run replaying it is the eager run, metric for metric and weight for weight."""
    eager = train(SMALL, _short(mnist_dir, tmp_path / "eager", "eager"), **QUIET)
    fx = train(SMALL, _short(mnist_dir, tmp_path / "fx", "fx"), **QUIET)
    assert [m["step"] for m in fx] == ["fx", "fx"] and fx[0]["trace_seconds"] > 0
    assert _drop(fx) == _drop(eager)
    a, b = load_checkpoint(tmp_path / "eager"), load_checkpoint(tmp_path / "fx")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_resume_with_the_replayed_graph_is_exact(mnist_dir, tmp_path):
    straight = train(SMALL, _short(mnist_dir, tmp_path / "straight", "fx"), **QUIET)
    train(SMALL, _short(mnist_dir, tmp_path / "resumed", "fx", epochs=1), **QUIET)
    resumed = train(None, _short(mnist_dir, tmp_path / "resumed", "fx"), resume=True, **QUIET)
    assert _drop(resumed) == _drop(straight)
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "resumed")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


@pytest.mark.parametrize("step", ["eager", "fx"])
def test_a_nan_stops_training_in_one_line_and_keeps_the_last_good_checkpoint(
    step, mnist_dir, tmp_path, capsys, monkeypatch
):
    import pyro_vae.training.start as training
    from pyro_vae.cli.main import main

    run = tmp_path / "run"
    common = ["--data-dir", str(mnist_dir), "--device", "cpu", "--no-progress"]
    first = ["train", "--out", str(run), "--epochs", "1", "--train-subset", "1000"]
    first += ["--test-subset", "200", "--z-dim", "4", "--hidden-dims", "32", "--step", step]
    assert main(first + common) == 0
    kept = (run / "checkpoint.pt").read_bytes(), (run / "metrics.jsonl").read_text()
    capsys.readouterr()

    build = training.build_step

    def poisoned(vae, *args, **kwargs):  # a weight turns NaN after the third step of epoch 2
        inner = build(vae, *args, **kwargs)
        calls = []

        def step_fn(x, y, full=True):
            calls.append(1)
            if len(calls) == 3:
                with torch.no_grad():
                    vae.model.decoder.net[0].weight[0, 0] = float("nan")
            return inner(x, y, full=full)

        return step_fn

    monkeypatch.setattr(training, "build_step", poisoned)
    code = main(["train", "--out", str(run), "--resume", "--epochs", "2"] + common)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "training stopped in epoch 2" in err and "checkpoint of epoch 1 is kept" in err
    assert ((run / "checkpoint.pt").read_bytes(), (run / "metrics.jsonl").read_text()) == kept
