"""Which data: the registry of datasets, the test split of the user's own data, and the record a
run keeps of its data.

``--dataset`` (``TrainConfig.dataset``) takes a registry name or ``KIND:PATH``:

- ``mnist`` (the default), ``fashion-mnist``, ``kmnist``: torchvision's own classes, read from
  (or downloaded into) ``DATA_DIR/MNIST/raw``, ``DATA_DIR/FashionMNIST/raw``,
  ``DATA_DIR/KMNIST/raw``, with their official train/test split; grayscale 28 x 28;
- ``cifar10`` (``DATA_DIR/cifar-10-batches-py``), ``svhn`` (``DATA_DIR/SVHN``): RGB 32 x 32,
  torchvision's classes and download; ``celeba`` (``DATA_DIR/celeba``, fed from a local
  folder): RGB 64 x 64 crops of the aligned faces, unlabelled;
- ``folder:PATH``: an image folder in ``ImageFolder`` layout (labels = subfolder names), its
  channels kept (grayscale files: 1, colour files: 3) or made one with ``grayscale``, resized
  to ``image_size`` x ``image_size`` when that is set;
- ``tensor:FILE``: ``torch.save({"x": images, "y": labels})`` (``user_data.read_tensor_file``),
  images [N, H, W] or [N, C, H, W].

Images are (C, H, W): the record keeps ``image_shape`` [H, W] and ``channels`` C (1 for the
records made before colour).

The user's own data get their test set from ``test_dataset`` (another ``folder:``/``tensor:``),
or else a fixed-seed split: the test set is the first round(N * test_fraction) images of
``torch.randperm(N, generator=torch.Generator().manual_seed(SPLIT_SEED))``, the rest train.
The same files give the same split on every machine; the record's hash of the test set shows it.
A new kind of dataset is one entry in ``DATASETS``.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pyro_vae.data.torchvision_data import (
    load_celeba,
    load_cifar10,
    load_svhn,
    load_torchvision,
)
from pyro_vae.data.user_data import Images, read_folder, read_tensor_file

SPLIT_SEED = 0
# folder:/tensor: data without a test set: the share of images held out (TrainConfig's default).
DEFAULT_TEST_FRACTION = 0.1
# A run made before datasets were recorded was trained on MNIST.
LEGACY_RECORD = {"name": "mnist"}


@dataclass(frozen=True)
class DatasetKind:
    """One entry of the registry: a dataset with an official split (``official(root, train)``)
    or the user's own images at a path (``read(path, image_size, grayscale)``)."""

    title: str
    official: Callable[[str | os.PathLike, bool], Images] | None = None
    read: Callable[[str, int, bool], Images] | None = None
    # Official datasets: known without reading a file (what the CLI needs to build the model).
    image_shape: tuple[int, int, int] | None = None  # (C, H, W)
    classes: Callable[[], tuple[str, ...]] | None = None


def _torchvision(folder: str, title: str) -> DatasetKind:
    """One of torchvision's IDX datasets: class ``folder``, files in ``DATA_DIR/folder/raw``."""

    def classes() -> tuple[str, ...]:
        import torchvision.datasets

        return tuple(getattr(torchvision.datasets, folder).classes)

    def official(root: str | os.PathLike, train: bool) -> Images:
        x, y = load_torchvision(root, train, folder, title)
        return Images(x, y, classes())

    return DatasetKind(title, official, image_shape=(1, 28, 28), classes=classes)


# CIFAR-10's classes in its label order (batches.meta), known before the files are read.
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
DIGITS = tuple(str(k) for k in range(10))


def _cifar10(root: str | os.PathLike, train: bool) -> Images:
    x, y, classes = load_cifar10(root, train)
    return Images(x, y, classes)


def _svhn(root: str | os.PathLike, train: bool) -> Images:
    x, y = load_svhn(root, train)
    return Images(x, y, DIGITS)


def _celeba(root: str | os.PathLike, train: bool) -> Images:
    return Images(load_celeba(root, train), None, ())


DATASETS: dict[str, DatasetKind] = {
    "mnist": _torchvision("MNIST", "MNIST"),
    "fashion-mnist": _torchvision("FashionMNIST", "Fashion-MNIST"),
    "kmnist": _torchvision("KMNIST", "KMNIST"),
    "cifar10": DatasetKind("CIFAR-10", _cifar10, None, (3, 32, 32), lambda: CIFAR10_CLASSES),
    "svhn": DatasetKind("SVHN", _svhn, None, (3, 32, 32), lambda: DIGITS),
    "celeba": DatasetKind("CelebA", _celeba, None, (3, 64, 64), lambda: ()),
    "folder": DatasetKind("image folder", read=read_folder),
    "tensor": DatasetKind("tensor file", read=read_tensor_file),
}
USAGE = "mnist, fashion-mnist, kmnist, cifar10, svhn, celeba, folder:PATH or tensor:FILE"


def parse_dataset(name: str) -> tuple[str, DatasetKind, str]:
    """'fashion-mnist' -> ('fashion-mnist', kind, ''); 'folder:imgs' -> ('folder', kind, 'imgs').
    ValueError for a name that is not in the registry."""
    key, colon, path = name.partition(":")
    kind = DATASETS.get(key)
    if kind is None or (kind.read is None and colon):
        raise ValueError(f"unknown dataset {name!r}; use {USAGE}")
    if kind.read is not None and not path:
        raise ValueError(f"{key}: needs a path, e.g. {key}:data/my_images")
    return key, kind, path


@dataclass(frozen=True)
class DatasetSpec:
    """What ``--dataset`` and its options say (TrainConfig's fields of the same names)."""

    dataset: str = "mnist"
    # folder: only; resize every image to S x S (0: keep; then all must share one size).
    image_size: int = 0
    # folder: only; every image becomes one channel (else the files' channels are kept).
    grayscale: bool = False
    # folder:/tensor: only; the test set ("" = a fixed-seed split of test_fraction).
    test_dataset: str = ""
    test_fraction: float = DEFAULT_TEST_FRACTION

    @classmethod
    def of(cls, config: Any, **given: Any) -> DatasetSpec:
        """The spec of a TrainConfig (or argparse namespace), with ``given`` fields (not None)
        replacing its own."""
        fields = {f: getattr(config, f, getattr(cls, f)) for f in cls.__dataclass_fields__}
        return cls(**{**fields, **{k: v for k, v in given.items() if v is not None}})


def _as_spec(spec: str | DatasetSpec) -> DatasetSpec:
    return DatasetSpec(spec) if isinstance(spec, str) else spec


@dataclass
class RawData:
    """A dataset's uint8 pixels, flattened, with labels; ``record`` says what it is."""

    train_x: Tensor  # uint8 [N, D], D = C * H * W (channel by channel, row by row)
    train_y: Tensor  # int64 [N] (zeros when unlabelled)
    test_x: Tensor  # uint8 [M, D]
    test_y: Tensor  # int64 [M]
    image_shape: tuple[int, int, int]  # (C, H, W)
    record: dict


def record_image_shape(record: dict | None) -> tuple[int, int, int] | None:
    """(C, H, W) of a dataset record; C = 1 for records made before colour; None for a
    record without a shape (runs from before records: MNIST's (1, 28, 28))."""
    shape = (record or {}).get("image_shape")
    if not shape:
        return None
    return int(record.get("channels", 1)), int(shape[-2]), int(shape[-1])


def peek_dataset(
    spec: str | DatasetSpec, root: str | os.PathLike
) -> tuple[tuple[int, int, int], tuple]:
    """((C, H, W), class names) without reading an official dataset's files: what the CLI
    needs to build the model before training loads the data. A user's data are read."""
    spec = _as_spec(spec)
    _, kind, _ = parse_dataset(spec.dataset)
    if kind.image_shape is not None and kind.classes is not None:
        return kind.image_shape, kind.classes()
    raw = load_dataset(spec, root)
    return raw.image_shape, tuple(raw.record["classes"])


def load_dataset(spec: str | DatasetSpec, root: str | os.PathLike) -> RawData:
    """The train and test images of ``spec`` (``root``: the folder of the official datasets),
    uint8 [N, C*H*W], and its record: name, title, image shape, channels, classes, split,
    sizes, and the SHA-256 of the test set (pixels, labels, shape, class names)."""
    spec = _as_spec(spec)
    key, kind, path = parse_dataset(spec.dataset)
    if spec.image_size and key != "folder":
        raise ValueError(f"--image-size resizes folder: datasets, not {spec.dataset}")
    test_key = parse_dataset(spec.test_dataset)[0] if spec.test_dataset else ""
    if spec.grayscale and "folder" not in (key, test_key):
        raise ValueError(f"--grayscale converts folder: images, not {spec.dataset}")
    if not 0 < spec.test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {spec.test_fraction}")
    split: dict[str, Any]
    if kind.official is not None:
        if spec.test_dataset:
            raise ValueError(
                f"{spec.dataset} has its own test set; --test-dataset is for folder:/tensor:"
            )
        train, test = kind.official(root, True), kind.official(root, False)
        split = {"split": "official"}
    else:
        train = _read(kind, key, path, spec)
        if spec.test_dataset:
            test_key, test_kind, test_path = parse_dataset(spec.test_dataset)
            if test_kind.read is None:
                raise ValueError(f"--test-dataset takes folder:PATH or tensor:FILE, not {test_key}")
            test = _aligned(train, _read(test_kind, test_key, test_path, spec), spec)
            split = {"split": "given", "test_dataset": spec.test_dataset}
        else:
            train, test = fixed_split(train, spec.test_fraction, spec.dataset)
            split = {"split": "fixed-seed", "test_fraction": spec.test_fraction}
            split["split_seed"] = SPLIT_SEED
    if path:  # where the files were, as the run found them
        split["path"] = str(Path(path).resolve())
    if key == "folder":
        split["image_size"] = spec.image_size
    if spec.grayscale:
        split["grayscale"] = True
    title = kind.title if kind.official is not None else spec.dataset  # the user's own name
    return _flattened(spec.dataset, title, train, test, split)


def _read(kind: DatasetKind, key: str, path: str, spec: DatasetSpec) -> Images:
    """A user's images; --image-size and --grayscale go to folder: only (tensor: refuses a
    size; an official test set refuses both earlier)."""
    if key == "folder":
        return kind.read(path, spec.image_size, spec.grayscale)
    return kind.read(path, spec.image_size)


def fixed_split(images: Images, fraction: float, name: str) -> tuple[Images, Images]:
    """(train, test): test = the first round(N * fraction) of a SPLIT_SEED permutation."""
    n = len(images.x)
    m = max(1, round(n * fraction))
    if n - m < 1:
        raise ValueError(f"{name} has {n} image(s), too few to split; add images or --test-dataset")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))

    def take(idx: Tensor) -> Images:
        y = images.y[idx] if images.y is not None else None
        return Images(images.x[idx], y, images.classes)

    return take(perm[m:]), take(perm[:m])


def _aligned(train: Images, test: Images, spec: DatasetSpec) -> Images:
    """The test images with labels numbered as the training set's classes (by name)."""
    where = f"--test-dataset {spec.test_dataset}"
    if test.image_shape[0] != train.image_shape[0]:
        raise ValueError(
            f"{where} has {_kind(test.image_shape)} images, {spec.dataset} "
            f"{_kind(train.image_shape)}; give both the same channels (--grayscale for folders)"
        )
    if test.image_shape != train.image_shape:
        raise ValueError(
            f"{where} has {_hw(test.image_shape)} images, {spec.dataset} {_hw(train.image_shape)}"
            "; give both the same size (--image-size for folders)"
        )
    if (test.y is None) != (train.y is None):
        raise ValueError(f"{where} and {spec.dataset}: one has labels and the other not")
    if test.y is None:
        return test
    extra = sorted(set(test.classes) - set(train.classes))
    if extra:
        raise ValueError(f"{where} has classes the training data lack: {', '.join(extra[:5])}")
    index = torch.tensor([train.classes.index(c) for c in test.classes], dtype=torch.long)
    return Images(test.x, index[test.y] if len(test.y) else test.y, train.classes)


def _hw(shape: tuple[int, ...] | list[int]) -> str:
    """'28x28': the last two sizes (H, W) of a shape."""
    return f"{shape[-2]}x{shape[-1]}"


def _kind(shape: tuple[int, ...] | list[int]) -> str:
    """'1-channel (grayscale)' or '3-channel (RGB)' for (C, H, W)."""
    c = shape[0]
    return f"{c}-channel{' (grayscale)' if c == 1 else ' (RGB)' if c == 3 else ''}"


def _flattened(name: str, title: str, train: Images, test: Images, split: dict) -> RawData:
    shape = train.image_shape

    def flat(images: Images) -> tuple[Tensor, Tensor]:
        y = images.y if images.y is not None else torch.zeros(len(images.x), dtype=torch.long)
        return images.x.reshape(len(images.x), -1).contiguous(), y

    (train_x, train_y), (test_x, test_y) = flat(train), flat(test)
    record = {
        "name": name,
        "title": title,
        "image_shape": list(shape[1:]),  # [H, W], as records made before colour
        "channels": shape[0],
        "num_classes": len(train.classes),
        "classes": list(train.classes),
        **split,
        "num_train": len(train_x),
        "num_test": len(test_x),
        "test_sha256": hash_test_set(test_x, test_y, shape, train.classes),
    }
    return RawData(train_x, train_y, test_x, test_y, shape, record)


def hash_test_set(x: Tensor, y: Tensor, shape: tuple[int, ...], classes: tuple[str, ...]) -> str:
    """SHA-256 of a test set: its uint8 pixels [M, D], int64 labels [M], shape and classes.

    ``shape`` (C, H, W); one channel hashes as (H, W), as before colour, so a grayscale test set
    keeps the hash its runs recorded."""
    shape = tuple(shape[1:]) if len(shape) == 3 and shape[0] == 1 else tuple(shape)
    h = hashlib.sha256(f"pyro-vae test set v1 {shape} {list(classes)}".encode())
    h.update(x.contiguous().numpy().tobytes())
    h.update(y.to(torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


def describe(record: dict) -> str:
    """'fashion-mnist (28x28, 10 classes; 60000 train / 10000 test, official split)'; colour
    data say so: 'cifar10 (32x32 RGB, ...)'."""
    if "image_shape" not in record:
        return record.get("name", "mnist")
    classes = f"{record['num_classes']} classes" if record["num_classes"] else "unlabelled"
    channels = record.get("channels", 1)
    colour = "" if channels == 1 else " RGB" if channels == 3 else f" {channels}-channel"
    return (
        f"{record['name']} ({_hw(record['image_shape'])}{colour}, {classes}; "
        f"{record['num_train']} train / {record['num_test']} test, {record['split']} split)"
    )


def check_num_classes(name: str, classes: tuple | list, num_classes: int) -> None:
    """ValueError unless a conditional VAE of ``num_classes`` fits the data's classes."""
    if not num_classes:
        return
    if not classes:
        raise ValueError(f"{name} has no labels; a conditional VAE (--num-classes) needs them")
    if len(classes) < 2:
        raise ValueError(
            f"{name} has one class only ({classes[0]}); a conditional VAE (--num-classes) needs "
            "at least 2: add class folders or labels, or drop --num-classes"
        )
    if num_classes != len(classes):
        raise ValueError(
            f"{name} has {len(classes)} classes, not {num_classes}: pass --num-classes "
            f"{len(classes)} (or auto)"
        )


def same_dataset(recorded: dict | None, loaded: dict) -> bool:
    """Whether ``loaded`` (a record, or just {"name": ...} before loading) is the data a run
    ``recorded`` (None: a run from before records, i.e. MNIST).

    With both test set hashes known, the hashes decide (a moved folder is the same data; other
    files, size or split are not); else the kind of dataset (mnist, kmnist, ..., folder, tensor).
    """
    recorded = recorded or LEGACY_RECORD
    mine, theirs = recorded.get("test_sha256"), loaded.get("test_sha256")
    if mine and theirs:
        return mine == theirs
    return parse_dataset(recorded["name"])[0] == parse_dataset(loaded["name"])[0]


def check_same_dataset(recorded: dict | None, loaded: dict, where: str) -> None:
    """ValueError unless ``same_dataset(recorded, loaded)``; the message names both and the fix."""
    if same_dataset(recorded, loaded):
        return
    recorded = recorded or LEGACY_RECORD
    fix = "drop --dataset and its options to use the run's data, or pass --allow-other-dataset"
    if parse_dataset(recorded["name"])[0] != parse_dataset(loaded["name"])[0]:
        raise ValueError(f"{where} was trained on {recorded['name']}, not {loaded['name']}; {fix}")
    raise ValueError(
        f"the test set of {loaded['name']} here ({describe(loaded)}, sha256 "
        f"{loaded['test_sha256'][:12]}) is not the one {where} recorded ({describe(recorded)}, "
        f"sha256 {recorded['test_sha256'][:12]}); {fix}"
    )


def check_outside_data(
    out: str | os.PathLike, spec: DatasetSpec, option: str = "--out", record: dict | None = None
) -> None:
    """ValueError when ``out`` is, or lies inside, an image folder of ``spec`` (a ``folder:``
    dataset or test set; ``record``: a run's record, whose folder is checked too): the PNGs
    written there would become images of the dataset. Paths are compared resolved (symlinks,
    relative paths)."""
    folders = []
    for name in (spec.dataset, spec.test_dataset):
        key, _, path = parse_dataset(name) if name else ("", None, "")
        if key == "folder":
            folders.append((name, path))
    if record and record.get("path") and parse_dataset(record["name"])[0] == "folder":
        folders.append((record["name"], record["path"]))
    where = Path(out).resolve()
    for name, path in folders:
        folder = Path(path).resolve()
        if where == folder or folder in where.parents:
            raise ValueError(
                f"{option} {out} lies inside the image folder of {name}: the PNGs written there "
                f"would become images of the dataset; choose {option} outside {folder}"
            )


def check_run_data(config: Any, data: Any, checkpoint: dict | None = None) -> None:
    """ValueError when a model of ``config`` (a VAEConfig) cannot take ``data`` (an
    ``ImageData``), or when a resumed run's ``checkpoint`` recorded another test set (the
    files changed). The channels first: a grayscale run given colour images says so."""
    check_fits_data(config, data.dataset, data.image_shape)
    if checkpoint is not None:
        check_same_dataset(checkpoint.get("dataset"), data.dataset, "the run")


def check_fits_data(config: Any, record: dict, image_shape: tuple[int, ...]) -> None:
    """ValueError when a model of ``config`` (a VAEConfig: its images (C, H, W) and network)
    cannot take images of ``image_shape`` (C, H, W): other channels, another number of
    values, or (any network but the MLP, which takes any H x W of its number of values, as
    before image shapes were recorded) another H x W."""
    name = record.get("name", "the data")
    model_shape = getattr(config, "image_shape", None)
    if model_shape is None:  # a user's model: its values per image, once it learned them
        x_dim, d = getattr(config, "x_dim", None), math.prod(image_shape)
        if x_dim is not None and x_dim != d:
            raise ValueError(
                f"the model takes {x_dim} values per image but {name} has "
                f"{_hw(image_shape)} = {d}; train a model on these"
            )
        return
    (c, h, w), (dc, dh, dw) = model_shape, image_shape
    if c != dc:
        fix = "; pass --grayscale for a folder of colour images" if c == 1 and dc == 3 else ""
        raise ValueError(
            f"the model takes {_kind(model_shape)} images but {name} has {_kind(image_shape)} "
            f"images ({dh}x{dw}); use data of the run's kind, or train a model on these{fix}"
        )
    if c * h * w != dc * dh * dw:
        raise ValueError(
            f"the model takes {c * h * w} values per image ({_hw(model_shape)}) but {name} has "
            f"{_hw(image_shape)} = {dc * dh * dw}; build it with image_shape={tuple(image_shape)}"
        )
    if config.network != "mlp" and (h, w) != (dh, dw):
        raise ValueError(
            f"the model's {config.network} network takes {_hw(model_shape)} images but {name} "
            f"has {dh}x{dw}; build it with image_shape={tuple(image_shape)}"
        )
