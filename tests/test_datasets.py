"""Datasets beyond MNIST, with no network: Fashion-MNIST and KMNIST in torchvision's raw layout
(synthetic IDX files the real torchvision classes parse), an image folder of PNGs and a tensor
file. Each trains, resumes, evaluates, plots and samples through the CLI with figures of the
data's shape; a run records its data and is scored only on them; every bad input is one line.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import assert_one_line_error
from synthetic import (
    canvas_fits,
    images,
    write_idx_dataset,
    write_image_folder,
    write_tensor_file,
)

from pyro_vae.cli.main import main
from pyro_vae.data.datasets import (
    DATASETS,
    SPLIT_SEED,
    DatasetSpec,
    hash_test_set,
    load_dataset,
    parse_dataset,
)
from pyro_vae.data.errors import DataDamagedError, DataNotFoundError
from pyro_vae.data.torchvision_data import MNIST_FILES
from pyro_vae.figures import plots

# Any download attempt hits a closed local port at once: "offline", whatever the machine has.
OFFLINE = {
    k: "http://127.0.0.1:9" for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")
}
OFFICIAL = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}
TITLES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "kmnist": "KMNIST"}


def offline(monkeypatch) -> None:
    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)
    for k in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(k, raising=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """Every form of data, small: IDX files for Fashion-MNIST and KMNIST (60 train, 20 test),
    a folder of RGB PNGs of two sizes in two classes, a tensor file of float 16x20 images."""
    root = tmp_path_factory.mktemp("data")
    idx = root / "idx"
    fashion = write_idx_dataset(idx, "FashionMNIST", seed=0)
    kmnist = write_idx_dataset(idx, "KMNIST", seed=7)
    folder = write_image_folder(root / "shapes", per_class=30, sizes=((20, 20), (24, 18)))
    tensor = write_tensor_file(root / "t.pt", n=90, shape=(16, 20), num_classes=3)
    return {"root": root, "idx": idx, "fashion": fashion, "kmnist": kmnist, "folder": folder,
            "tensor": tensor}  # fmt: skip


@pytest.mark.parametrize("name", ["fashion-mnist", "kmnist"])
def test_official_datasets_are_read_by_torchvisions_own_classes(data, name):
    import torchvision.datasets

    raw = load_dataset(name, data["idx"])
    xtr, ytr, xte, yte = data["fashion" if name == "fashion-mnist" else "kmnist"]
    assert torch.equal(raw.train_x, torch.from_numpy(xtr).reshape(60, 784))
    assert torch.equal(raw.test_y, torch.from_numpy(yte))
    r = raw.record
    assert (r["name"], r["title"], r["image_shape"], r["split"]) == (
        name, TITLES[name], [28, 28], "official"
    )  # fmt: skip
    assert r["classes"] == list(getattr(torchvision.datasets, OFFICIAL[name]).classes)
    assert (r["num_train"], r["num_test"], r["num_classes"]) == (60, 20, 10)
    assert r["test_sha256"] == hash_test_set(raw.test_x, raw.test_y, (28, 28), r["classes"])


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_offline_error_names_the_datasets_files_and_folder(tmp_path, monkeypatch, name):
    offline(monkeypatch)
    with pytest.raises(DataNotFoundError) as e:
        load_dataset(name, tmp_path)
    msg = str(e.value)
    raw = tmp_path / OFFICIAL[name] / "raw"
    assert msg.startswith(f"{TITLES[name]} not found in {raw} ") and "\n" not in msg
    assert all(f in msg for f in MNIST_FILES) and "--data-dir" in msg
    assert f"a folder holding {OFFICIAL[name]}/raw" in msg


@pytest.mark.parametrize("name", ["fashion-mnist", "kmnist"])
def test_a_damaged_file_is_named_with_its_dataset(tmp_path, name):
    write_idx_dataset(tmp_path, OFFICIAL[name])
    bad = tmp_path / OFFICIAL[name] / "raw" / "t10k-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(DataDamagedError, match=f"^{TITLES[name]} file {bad} is damaged: expected"):
        load_dataset(name, tmp_path)


def test_every_registry_entry_is_reachable_by_name():
    for key, kind in DATASETS.items():
        name = key if kind.official else f"{key}:some/where"
        assert parse_dataset(name)[:2] == (key, kind)
    for bad in ("cifar100", "mnist:x", "folder", "folder:", "MNIST"):
        with pytest.raises(ValueError, match="unknown dataset|needs a path"):
            parse_dataset(bad)


def test_the_fixed_seed_split_is_the_documented_one(data):
    spec = DatasetSpec(f"tensor:{data['tensor']}", test_fraction=0.2)
    raw = load_dataset(spec, data["root"])
    saved = torch.load(data["tensor"], weights_only=True)
    x = (saved["x"].double() * 255).round().to(torch.uint8).reshape(90, -1)
    # README: the first round(N * f) of torch.randperm(N) under manual_seed(SPLIT_SEED) test.
    perm = torch.randperm(90, generator=torch.Generator().manual_seed(SPLIT_SEED))
    assert torch.equal(raw.test_x, x[perm[:18]]) and torch.equal(raw.train_x, x[perm[18:]])
    assert torch.equal(raw.test_y, saved["y"][perm[:18]])
    r = raw.record
    assert (r["split"], r["test_fraction"], r["split_seed"]) == ("fixed-seed", 0.2, SPLIT_SEED)
    assert load_dataset(spec, data["root"]).record == r  # the same files: the same split


def test_the_test_hash_changes_with_the_test_set_only(data, tmp_path):
    x, y = images(50, 8, 8, 2)
    base = {"x": torch.from_numpy(x), "y": torch.from_numpy(y)}
    torch.save(base, tmp_path / "a.pt")
    a = load_dataset(f"tensor:{tmp_path / 'a.pt'}", tmp_path)
    test_idx = torch.randperm(50, generator=torch.Generator().manual_seed(SPLIT_SEED))[0]
    train_idx = torch.randperm(50, generator=torch.Generator().manual_seed(SPLIT_SEED))[-1]
    for idx, same in ((train_idx, True), (test_idx, False)):
        changed = {"x": base["x"].clone(), "y": base["y"]}
        changed["x"][idx, 0, 0] ^= 1
        torch.save(changed, tmp_path / "a.pt")
        b = load_dataset(f"tensor:{tmp_path / 'a.pt'}", tmp_path)
        assert (a.record["test_sha256"] == b.record["test_sha256"]) == same


def test_a_given_test_folder_keeps_the_training_folders_class_numbers(tmp_path):
    train = write_image_folder(tmp_path / "train", classes=("a", "b", "c"), per_class=4)
    test = write_image_folder(tmp_path / "test", classes=("c",), per_class=3)
    raw = load_dataset(DatasetSpec(f"folder:{train}", test_dataset=f"folder:{test}"), tmp_path)
    assert raw.record["split"] == "given" and raw.record["classes"] == ["a", "b", "c"]
    assert raw.test_y.tolist() == [2, 2, 2] and raw.train_y.bincount().tolist() == [4, 4, 4]
    other = write_image_folder(tmp_path / "other", classes=("d",), per_class=2)
    with pytest.raises(ValueError, match="has classes the training data lack: d"):
        load_dataset(DatasetSpec(f"folder:{train}", test_dataset=f"folder:{other}"), tmp_path)


# The forms end to end: (options, z_dim, image shape (H, W), number of classes of a CVAE or 0,
# channels). The folder's PNGs are RGB: kept in colour, or made grayscale by --grayscale.
CASES = {
    "fashion-mnist": (["--dataset", "fashion-mnist"], 3, (28, 28), 0, 1),
    "kmnist": (["--dataset", "kmnist", "--num-classes", "10"], 3, (28, 28), 10, 1),
    "folder": (["--dataset", "folder:FOLDER", "--image-size", "16"], 2, (16, 16), 0, 3),
    "folder-grayscale": (
        ["--dataset", "folder:FOLDER", "--image-size", "16", "--grayscale"],
        2,
        (16, 16),
        0,
        1,
    ),
    "tensor": (["--dataset", "tensor:TENSOR", "--num-classes", "auto"], 2, (16, 20), 3, 1),
}


def _placed(argv: list[str], data: dict) -> list[str]:
    return [a.replace("FOLDER", str(data["folder"])).replace("TENSOR", str(data["tensor"]))
            for a in argv]  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_train_resume_evaluate_plot_sample(case, data, tmp_path, monkeypatch, capsys):
    options, z_dim, shape, num_classes, channels = CASES[case]
    options = _placed(options, data)
    run = tmp_path / "run"
    common = ["--device", "cpu", "--data-dir", str(data["idx"])]
    train = ["train", "--out", str(run), "--hidden-dims", "16", "--z-dim", str(z_dim)]
    train += ["--batch-size", "32", "--no-progress", *common]
    assert main([*train, *options, "--epochs", "1"]) == 0
    config = json.loads((run / "config.json").read_text())
    record = config["dataset"]
    assert record["image_shape"] == list(shape) and record["num_classes"] >= num_classes
    assert record["channels"] == channels and record.get("grayscale", False) == case.endswith("e")
    assert config["vae"]["x_dim"] == channels * shape[0] * shape[1]
    assert config["vae"]["image_shape"] == [channels, *shape]
    assert config["vae"]["num_classes"] == num_classes
    assert re.fullmatch("[0-9a-f]{64}", record["test_sha256"])
    assert record["split"] == ("official" if case.endswith("mnist") else "fixed-seed")

    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", *common]) == 0
    rows = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(row)["epoch"] for row in rows] == [1, 2]

    evaluate = ["evaluate", str(run), "--num-samples", "3", "--elbo", "trace", *common]
    assert main([*evaluate, "--samples-per-class", "4"]) == 0
    report = json.loads((run / "eval.json").read_text())
    assert report["test_set"] == record and report["other_dataset"] is False
    assert report["num_dims"] == channels * shape[0] * shape[1]
    assert report["log_likelihood"]["num_images"] == record["num_test"]
    assert report["elbo"][0]["dataset"] == f"binarized {record['title']}"
    if num_classes:  # the label classifier of this dataset's classes judged the samples
        assert len(report["conditioning"]["per_class"]) == num_classes
        info = report["conditioning"]["classifier"]
        assert info["dataset"]["test_sha256"] == record["test_sha256"]
    out = capsys.readouterr().out
    assert (
        f"dataset: {record['name']} ({shape[0]}x{shape[1]}{' RGB' if channels == 3 else ''}" in out
    )

    drawn = []
    show = plots._show
    monkeypatch.setattr(
        plots, "_show", lambda ax, canvas: drawn.append(canvas.shape) or show(ax, canvas)
    )
    assert main(["plot", str(run), *common]) == 0
    assert main(["sample", str(run), "--num", "16", "--ncols", "8", "--device", "cpu"]) == 0
    written = {p.name for p in (run / "figures").iterdir()}
    assert ("manifold.png" in written) == (z_dim == 2 and not num_classes)
    assert ("class_grid.png" in written) == bool(num_classes)
    # Every tiled image is whole images of the data's shape; MNIST's 28x28 would not fit them
    # (the negative control: the check can tell the shapes apart).
    assert len(drawn) >= 4 and all(canvas_fits(s, shape) for s in drawn), drawn
    h, w = shape
    rgb = (3,) if channels == 3 else ()  # RGB images are drawn in colour
    assert all(len(s) == 2 + len(rgb) for s in drawn if s[-1] != 3 or rgb), drawn
    assert drawn[-1] == (2 * (h + 2) - 2, 8 * (w + 2) - 2, *rgb)  # sample: 16 images, 8 per row
    if shape != (28, 28):
        assert not canvas_fits(drawn[-1], (28, 28))


def test_evaluate_refuses_another_dataset_unless_asked(data, tmp_path, capsys):
    run = tmp_path / "run"
    common = ["--device", "cpu", "--data-dir", str(data["idx"])]
    train = ["train", "--out", str(run), "--dataset", "kmnist", "--hidden-dims", "8"]
    assert main([*train, "--z-dim", "2", "--epochs", "1", "--no-progress", *common]) == 0
    evaluate = ["evaluate", str(run), "--elbo", "trace", "--dataset", "fashion-mnist", *common]
    capsys.readouterr()
    assert main(evaluate) == 2
    err = capsys.readouterr().err
    assert "was trained on kmnist, not fashion-mnist" in err and "--allow-other-dataset" in err
    assert not (run / "eval.json").exists()
    assert main([*evaluate, "--allow-other-dataset"]) == 0
    report = json.loads((run / "eval.json").read_text())
    assert report["other_dataset"] is True and report["test_set"]["name"] == "fashion-mnist"


def test_a_moved_file_is_the_same_data_but_resume_refuses_changed_data(data, tmp_path, capsys):
    path = write_tensor_file(tmp_path / "t.pt", n=40, shape=(8, 8), num_classes=2)
    run = tmp_path / "run"
    train = ["train", "--out", str(run), "--dataset", f"tensor:{path}", "--hidden-dims", "8"]
    train += ["--device", "cpu", "--no-progress"]
    assert main([*train, "--epochs", "1"]) == 0
    # The same file elsewhere is the same data (the test set hashes agree): accepted.
    moved = tmp_path / "moved" / "t.pt"
    moved.parent.mkdir()
    moved.write_bytes(path.read_bytes())
    evaluate = ["evaluate", str(run), "--elbo", "trace", "--device", "cpu"]
    assert main([*evaluate, "--dataset", f"tensor:{moved}"]) == 0
    assert json.loads((run / "eval.json").read_text())["other_dataset"] is False
    write_tensor_file(path, n=40, shape=(8, 8), num_classes=2, x=torch.ones(40, 8, 8))
    before = (run / "checkpoint.pt").read_bytes()
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--device", "cpu"]) == 2
    assert "is not the one the run recorded" in capsys.readouterr().err
    assert (run / "checkpoint.pt").read_bytes() == before


# Bad inputs: one line on stderr naming the problem and the fix, exit code 2, no traceback, and
# an existing run left byte-identical. RUN is a run on TENSOR (3 classes of 16x20 images).
BAD_INPUTS: list[tuple[str, list[str], str]] = [
    (
        "unknown dataset",
        ["train", "--dataset", "cifar100"],
        "unknown dataset 'cifar100'; use mnist",
    ),
    ("folder: without a path", ["train", "--dataset", "folder:"], "folder: needs a path"),
    ("missing folder", ["train", "--dataset", "folder:MISSING"], "no such folder"),
    ("folder without class folders", ["train", "--dataset", "folder:EMPTY"], "no class subfolders"),
    ("folder without images", ["train", "--dataset", "folder:NOIMAGES"], "hold no images"),
    ("mixed image sizes", ["train", "--dataset", "folder:FOLDER"], "pass --image-size S"),
    (
        "one class with --num-classes",
        ["train", "--dataset", "folder:ONECLASS", "--num-classes", "2"],
        "has one class only (a); a conditional VAE (--num-classes) needs at least 2",
    ),
    (
        "one class with --num-classes auto",
        ["train", "--dataset", "folder:ONECLASS", "--num-classes", "auto"],
        "has one class only",
    ),
    (
        "--num-classes not the data's",
        ["train", "--dataset", "tensor:TENSOR", "--num-classes", "5"],
        "has 3 classes, not 5: pass --num-classes 3 (or auto)",
    ),
    (
        "--num-classes on unlabelled data",
        ["train", "--dataset", "tensor:UNLABELLED", "--num-classes", "2"],
        "has no labels",
    ),
    (
        "--num-classes auto on unlabelled data",
        ["train", "--dataset", "tensor:UNLABELLED", "--num-classes", "auto"],
        "has no labels; a conditional VAE (--num-classes) needs them",
    ),
    ("tensor: wrong keys", ["train", "--dataset", "tensor:WRONGKEYS"], "holds the keys ['images']"),
    ("tensor: wrong dtype", ["train", "--dataset", "tensor:INT32"], "dtype torch.int32"),
    ("tensor: float labels", ["train", "--dataset", "tensor:FLOATLABELS"], "not integers"),
    ("tensor: not a torch file", ["train", "--dataset", "tensor:FILE"], "cannot be read"),
    ("--image-size on mnist", ["train", "--image-size", "16"], "--image-size resizes folder:"),
    ("--image-size 0", ["train", "--image-size", "0"], "--image-size: must be at least 1"),
    ("--test-fraction 1", ["train", "--test-fraction", "1"], "strictly between 0 and 1, got 1"),
    ("--test-dataset mnist", ["train", "--test-dataset", "mnist"], "expected folder:PATH"),
    (
        "--test-dataset on kmnist",
        ["train", "--dataset", "kmnist", "--test-dataset", "tensor:TENSOR"],
        "kmnist has its own test set",
    ),
    (
        "--resume with another dataset",
        ["train", "--out", "RUN", "--resume", "--dataset", "kmnist"],
        "--dataset kmnist (TrainConfig.dataset; the run has tensor:",
    ),
    ("evaluate on another dataset", ["evaluate", "RUN", "--dataset", "kmnist"], "not kmnist;"),
    (
        "evaluate on another split",
        ["evaluate", "RUN", "--test-fraction", "0.5"],
        "is not the one RUN recorded",
    ),
    (
        "evaluate on another size, allowed",
        ["evaluate", "RUN", "--dataset", "kmnist", "--allow-other-dataset"],
        "the model takes 320 values per image (16x20) but kmnist has 28x28 = 784",
    ),
    (
        "evaluate a grayscale run on RGB images",
        ["evaluate", "RUN", "--dataset", "folder:COLOUR", "--allow-other-dataset"],
        "the model takes 1-channel (grayscale) images but folder:COLOUR has 3-channel (RGB) "
        "images (16x20); use data of the run's kind, or train a model on these; pass --grayscale",
    ),
    (
        "evaluate a grayscale run on RGB images, not allowed",
        ["evaluate", "RUN", "--dataset", "folder:COLOUR"],
        "was trained on tensor",
    ),
    (
        "grayscale and colour in one folder",
        ["train", "--dataset", "folder:MIXED"],
        "holds grayscale and colour images (L in ",
    ),
    (
        "--grayscale on a tensor file",
        ["train", "--dataset", "tensor:TENSOR", "--grayscale"],
        "--grayscale converts folder: images, not tensor:",
    ),
    (
        "--grayscale on cifar10",
        ["train", "--dataset", "cifar10", "--grayscale"],
        "--grayscale converts folder: images, not cifar10",
    ),
    (
        "tensor file channels last",
        ["train", "--dataset", "tensor:CHANNELSLAST"],
        "channels last; make it [N, C, H, W] with x.permute(0, 3, 1, 2)",
    ),
    (
        "cifar10 offline",
        ["train", "--dataset", "cifar10"],
        "CIFAR-10 not found in IDX/cifar-10-batches-py and could not be downloaded",
    ),
    (
        "svhn offline",
        ["train", "--dataset", "svhn"],
        "SVHN not found in IDX/SVHN and could not be downloaded",
    ),
    (
        "celeba offline",
        ["train", "--dataset", "celeba"],
        "CelebA not found in IDX/celeba and could not be downloaded",
    ),
    (
        "conv network on images too small for its layers",
        [
            "train",
            "--dataset",
            "tensor:TENSOR",
            "--network",
            "conv",
            "--conv-channels",
            "8,8,8,8,8",
        ],
        "need images of at least 32x32, got 16x20; give fewer --conv-channels",
    ),
    ("plot on another dataset", ["plot", "RUN", "--dataset", "kmnist"], "--allow-other-dataset"),
    (
        "compare-elbo on another dataset",
        ["compare-elbo", "RUN", "--dataset", "kmnist"],
        "not kmnist",
    ),
    ("evaluate --dataset typo", ["evaluate", "RUN", "--dataset", "kmnst"], "unknown dataset"),
]


@pytest.fixture(scope="module")
def places(data, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("bad")
    run = root / "run"
    train = ["train", "--out", str(run), "--dataset", f"tensor:{data['tensor']}", "--z-dim", "2"]
    train += ["--hidden-dims", "8", "--epochs", "1", "--device", "cpu", "--no-progress"]
    assert main(train) == 0
    (root / "empty").mkdir()
    (root / "noimages" / "a").mkdir(parents=True)
    (root / "noimages" / "a" / "notes.txt").write_text("no images here")
    (root / "file").write_text("I am a file")
    tensors = {
        "UNLABELLED": {"x": torch.zeros(10, 8, 8)},
        "WRONGKEYS": {"images": torch.zeros(10, 8, 8)},
        "INT32": {"x": torch.zeros(10, 8, 8, dtype=torch.int32)},
        "CHANNELSLAST": {"x": torch.zeros(10, 8, 8, 3)},
        "FLOATLABELS": {"x": torch.zeros(10, 8, 8), "y": torch.zeros(10)},
    }
    for name, content in tensors.items():
        torch.save(content, root / f"{name}.pt")
    return {
        "RUN": run,
        "FILE": root / "file",
        "EMPTY": root / "empty",
        "MISSING": root / "missing",
        "NOIMAGES": root / "noimages",
        "FOLDER": data["folder"],  # two sizes: needs --image-size
        "ONECLASS": write_image_folder(root / "one", classes=("a",), per_class=5),
        "COLOUR": write_image_folder(
            root / "colour", classes=("a",), per_class=5, sizes=((16, 20),)
        ),
        "MIXED": write_image_folder(root / "mixed", per_class=3, modes=("RGB", "L")),
        "TENSOR": data["tensor"],
        **{name: root / f"{name}.pt" for name in tensors},
    }


def _snapshot(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "argv,expected", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_is_one_line_exit_2_and_leaves_the_run_intact(
    argv, expected, places, data, capsys, monkeypatch
):
    offline(monkeypatch)

    def place(a: str) -> str:
        for key in sorted(places, key=len, reverse=True):  # TENSOR before RUN's prefix use
            if a == key or a.endswith(":" + key):
                return a[: len(a) - len(key)] + str(places[key])
        return a

    argv = [place(a) for a in argv]
    expected = expected.replace("RUN", str(places["RUN"])).replace("IDX", str(data["idx"]))
    expected = expected.replace("folder:COLOUR", f"folder:{places['COLOUR']}")
    if argv[0] == "train" and "--out" not in argv:
        argv += ["--out", str(places["EMPTY"] / "new")]
    argv += ["--device", "cpu", "--data-dir", str(data["idx"])]
    before = _snapshot(places["RUN"])
    code = main(argv)
    assert_one_line_error(code, capsys.readouterr().err, expected)
    assert _snapshot(places["RUN"]) == before
    assert not (places["EMPTY"] / "new").exists()
