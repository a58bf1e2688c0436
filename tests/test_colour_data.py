"""Colour images end to end: CIFAR-10, SVHN and CelebA in their real on-disk formats (synthetic
files read by torchvision's own classes), a run on RGB data with the conv network, and runs
recorded before colour (one channel) that load and score as before.

torchvision checks CIFAR's, SVHN's and CelebA's files against the real datasets' MD5s, which no
synthetic file can match. These tests patch the class's MD5 lists to the written files' own
(``synthetic.torchvision_md5s``, undone after each test), so torchvision's digest check still
runs on the files; ``test_cifar_files_that_fail_torchvisions_md5_are_called_damaged`` leaves the
lists alone, as a user's run does.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error
from PIL import Image
from synthetic import (
    images,
    torchvision_md5s,
    write_celeba,
    write_cifar10,
    write_image_folder,
    write_svhn,
)

from pyro_vae import TrainConfig, VAEConfig
from pyro_vae.cli.main import main
from pyro_vae.data.datasets import (
    CIFAR10_CLASSES,
    hash_test_set,
    load_dataset,
    record_image_shape,
)
from pyro_vae.data.errors import DataDamagedError
from pyro_vae.data.torchvision_data import CELEBA_CROP, CELEBA_SIZE
from pyro_vae.figures import plots
from pyro_vae.runs.checkpoint import load_checkpoint


def test_cifar10_is_read_by_torchvision_as_rgb_channels_first(tmp_path, monkeypatch):
    xtr, ytr, xte, yte = write_cifar10(tmp_path)
    torchvision_md5s(monkeypatch, tmp_path)
    raw = load_dataset("cifar10", tmp_path)
    assert raw.image_shape == (3, 32, 32) and raw.record["channels"] == 3
    assert raw.record["image_shape"] == [32, 32] and raw.record["classes"] == list(CIFAR10_CLASSES)
    # The pickled rows are R, G, B planes: the flat values are (C, H, W) in that order.
    assert torch.equal(raw.train_x, torch.from_numpy(xtr.reshape(len(xtr), -1)))
    assert torch.equal(raw.test_x, torch.from_numpy(xte.reshape(len(xte), -1)))
    assert raw.train_y.tolist() == ytr.tolist() and raw.test_y.tolist() == yte.tolist()
    assert record_image_shape(raw.record) == (3, 32, 32)


def test_svhn_is_read_from_its_mat_files_with_digit_zero_as_zero(tmp_path, monkeypatch):
    xtr, ytr, xte, yte = write_svhn(tmp_path)
    torchvision_md5s(monkeypatch, tmp_path)
    raw = load_dataset("svhn", tmp_path)
    assert raw.image_shape == (3, 32, 32) and raw.record["classes"] == [str(k) for k in range(10)]
    assert torch.equal(raw.train_x, torch.from_numpy(xtr.reshape(len(xtr), -1)))
    assert raw.train_y.tolist() == ytr.tolist() and 0 in raw.test_y.tolist()  # 10 became 0
    assert torch.equal(raw.test_x, torch.from_numpy(xte.reshape(len(xte), -1)))


def test_svhn_without_scipy_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    write_svhn(tmp_path)
    torchvision_md5s(monkeypatch, tmp_path)
    monkeypatch.setitem(sys.modules, "scipy", None)  # `import scipy.io` raises ImportError
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    code = main(
        [
            "train",
            "--dataset",
            "svhn",
            "--data-dir",
            str(tmp_path),
            "--out",
            str(tmp_path / "run"),
            "--device",
            "cpu",
            "--epochs",
            "1",
        ]
    )
    assert_one_line_error(code, capsys.readouterr().err, "pip install scipy (or the [svhn] extra)")
    assert not (tmp_path / "run").exists()


def test_celeba_is_fed_from_a_local_folder_as_centred_64x64_crops(tmp_path, monkeypatch):
    decoded = write_celeba(tmp_path, n_train=4, n_test=2)
    torchvision_md5s(monkeypatch, tmp_path)
    raw = load_dataset("celeba", tmp_path)
    assert raw.image_shape == (3, 64, 64) and raw.record["classes"] == []
    assert (raw.record["num_train"], raw.record["num_test"]) == (4, 2)  # partition 0 and 2
    top, left = (218 - CELEBA_CROP) // 2, (178 - CELEBA_CROP) // 2
    crop = decoded[4][top : top + CELEBA_CROP, left : left + CELEBA_CROP]
    want = Image.fromarray(crop).resize((CELEBA_SIZE,) * 2, Image.Resampling.BILINEAR)
    got = raw.test_x[0].reshape(3, 64, 64).permute(1, 2, 0).numpy()
    assert np.array_equal(got, np.asarray(want))


def test_cifar_files_that_fail_torchvisions_md5_are_called_damaged(tmp_path, monkeypatch):
    # The MD5 lists untouched: torchvision's check refuses the synthetic files, tries to
    # download (offline here), and the error names the files and where they are.
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(k, "http://127.0.0.1:9")
    write_cifar10(tmp_path)
    with pytest.raises(DataDamagedError) as e:
        load_dataset("cifar10", tmp_path)
    msg = str(e.value)
    assert "data_batch_1" in msg and "batches.meta" in msg and "MD5 differs" in msg, msg
    assert str(tmp_path / "cifar-10-batches-py") in msg and "\n" not in msg


def test_a_conv_run_on_cifar10_trains_evaluates_in_bits_per_dim_and_draws_colour(
    tmp_path, monkeypatch, capsys
):
    write_cifar10(tmp_path / "data", n_train=40, n_test=10)
    torchvision_md5s(monkeypatch, tmp_path / "data")
    run = tmp_path / "run"
    common = ["--device", "cpu", "--data-dir", str(tmp_path / "data")]
    train = ["train", "--out", str(run), "--dataset", "cifar10", "--network", "conv"]
    train += ["--conv-channels", "4,8", "--z-dim", "2", "--likelihood", "discretized-logistic"]
    assert main([*train, "--epochs", "1", "--batch-size", "16", "--no-progress", *common]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["vae"]["image_shape"] == [3, 32, 32] and config["vae"]["network"] == "conv"
    assert config["vae"]["x_dim"] == 3072 and config["dataset"]["channels"] == 3
    assert main(["evaluate", str(run), "--elbo", "trace", "--num-samples", "2", *common]) == 0
    report = json.loads((run / "eval.json").read_text())
    assert report["num_dims"] == 3072 and report["data"] == "8-bit discrete"
    bpd = report["elbo"][0]["bits_per_dim"]
    assert bpd == pytest.approx(report["elbo"][0]["neg_elbo"] / (3072 * np.log(2)))
    assert "32x32 RGB" in capsys.readouterr().out
    drawn = []
    show = plots._show
    monkeypatch.setattr(plots, "_show", lambda ax, c: drawn.append(c.shape) or show(ax, c))
    assert main(["plot", str(run), *common]) == 0
    assert main(["sample", str(run), "--num", "8", "--device", "cpu"]) == 0
    assert drawn and all(s[-1] == 3 and len(s) == 3 for s in drawn), drawn  # every grid in colour
    with Image.open(run / "figures" / "samples.png") as im:
        assert im.mode == "RGB"  # colours kept, no palette
    assert {p.name for p in (run / "figures").iterdir()} >= {
        "reconstructions.png", "samples.png", "interpolation.png", "manifold.png",
    }  # fmt: skip


def test_a_grayscale_run_resumed_on_files_now_in_colour_says_the_channels(tmp_path, capsys):
    folder = write_image_folder(tmp_path / "f", per_class=10, sizes=((8, 8),), modes=("L",))
    run = tmp_path / "run"
    train = ["train", "--out", str(run), "--dataset", f"folder:{folder}", "--hidden-dims", "8"]
    train += ["--z-dim", "2", "--device", "cpu", "--no-progress"]
    assert main([*train, "--epochs", "1"]) == 0
    before = (run / "checkpoint.pt").read_bytes()
    write_image_folder(tmp_path / "f", per_class=10, sizes=((8, 8),), modes=("RGB",))
    capsys.readouterr()
    code = main(["train", "--out", str(run), "--resume", "--epochs", "2", "--device", "cpu"])
    assert_one_line_error(
        code, capsys.readouterr().err, "the model takes 1-channel (grayscale) images but folder:"
    )
    assert (run / "checkpoint.pt").read_bytes() == before
    # And the reverse: an RGB run evaluated on a grayscale folder of its size.
    write_image_folder(tmp_path / "g", per_class=10, sizes=((8, 8),), modes=("RGB",))
    gray = write_image_folder(tmp_path / "h", per_class=10, sizes=((8, 8),), modes=("L",))
    rgb_run = tmp_path / "rgb"
    argv = [a if a != str(run) else str(rgb_run) for a in train]
    argv = [a if a != f"folder:{folder}" else f"folder:{tmp_path / 'g'}" for a in argv]
    assert main([*argv, "--epochs", "1"]) == 0
    evaluate = ["evaluate", str(rgb_run), "--dataset", f"folder:{gray}", "--device", "cpu"]
    code = main([*evaluate, "--allow-other-dataset"])
    assert_one_line_error(
        code, capsys.readouterr().err, "the model takes 3-channel (RGB) images but folder:"
    )


# Runs recorded before colour: one channel everywhere, the same hash, the same behaviour.


def test_a_grayscale_test_set_hashes_as_it_did_before_channels():
    x, y = images(6, 5, 4, 2)
    flat, labels = torch.from_numpy(x.reshape(6, -1)), torch.from_numpy(y)
    import hashlib

    h = hashlib.sha256(f"pyro-vae test set v1 {(5, 4)} {['a', 'b']}".encode())  # the v1 recipe
    h.update(flat.numpy().tobytes())
    h.update(labels.numpy().tobytes())
    assert hash_test_set(flat, labels, (1, 5, 4), ("a", "b")) == h.hexdigest()
    assert hash_test_set(flat, labels, (3, 5, 4), ("a", "b")) != h.hexdigest()  # C counts


def test_records_from_before_channels_mean_one_channel():
    old = {"x_dim": 600, "z_dim": 3, "hidden_dims": [8], "activation": "softplus",
           "num_classes": 0, "prior": "normal", "likelihood": "bernoulli",
           "prior_components": 10, "likelihood_scale": None}  # fmt: skip
    config = VAEConfig.from_dict(old)
    assert config.network == "mlp" and config.channels == 1 and config.x_dim == 600
    assert VAEConfig.from_dict({**old, "x_dim": 784}).image_shape == (1, 28, 28)
    assert record_image_shape({"name": "folder:x", "image_shape": [20, 30]}) == (1, 20, 30)
    assert record_image_shape(None) is None
    # folder: made every image grayscale before --grayscale: such a run keeps doing so.
    assert TrainConfig.from_dict({"dataset": "folder:/imgs"}).grayscale is True
    assert TrainConfig.from_dict({"dataset": "tensor:t.pt", "test_dataset": "folder:/t"}).grayscale
    assert TrainConfig.from_dict({"dataset": "mnist"}).grayscale is False
    assert TrainConfig.from_dict({"dataset": "folder:/imgs", "grayscale": False}).grayscale is False


def test_a_run_recorded_before_channels_resumes_and_evaluates(tmp_path, capsys):
    """A folder run as recorded before colour (no channels, no image_shape, no network, no
    grayscale) on RGB files: it still reads them as grayscale, with the hash it recorded."""
    folder = write_image_folder(tmp_path / "f", per_class=10, sizes=((8, 8),))  # RGB files
    run = tmp_path / "run"
    train = ["train", "--out", str(run), "--dataset", f"folder:{folder}", "--grayscale"]
    train += ["--hidden-dims", "8", "--z-dim", "2", "--device", "cpu", "--no-progress"]
    assert main([*train, "--epochs", "1"]) == 0
    ckpt = load_checkpoint(run)
    for key in ("image_shape", "network", "conv_channels"):
        del ckpt["vae_config"][key]
    del ckpt["train_config"]["grayscale"]
    del ckpt["dataset"]["channels"], ckpt["dataset"]["grayscale"]
    torch.save(ckpt, run / "checkpoint.pt")
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--device", "cpu"]) == 0
    assert main(["evaluate", str(run), "--elbo", "trace", "--device", "cpu"]) == 0
    assert json.loads((run / "eval.json").read_text())["other_dataset"] is False
