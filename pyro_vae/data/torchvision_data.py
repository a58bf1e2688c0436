"""torchvision's datasets read by torchvision's own classes, with torchvision's normal download
path when the files are missing, and errors that name the files and the folder searched:

- the IDX datasets (MNIST, Fashion-MNIST, KMNIST), with checks that name a damaged file;
- CIFAR-10 (its pickled batches), SVHN (its .mat files, read with scipy) and CelebA (the
  aligned JPEGs and the partition lists, fed from a local folder: torchvision's download is
  from Google Drive, often refused), whose files torchvision checks against its MD5s.

The data directory defaults to ``$PYRO_VAE_DATA_DIR`` when set, else ``./data``.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pyro_vae.data.errors import DataDamagedError, DataError, DataNotFoundError

DATA_ENV = "PYRO_VAE_DATA_DIR"
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# IDX files (LeCun's format, torchvision's raw layout): magic 0 0 8 N for uint8 with N dims,
# then N big-endian int32 sizes, then the bytes. Images have 3 dims, labels 1.
_IDX_NDIM = {"images": 3, "labels": 1}


def default_data_dir() -> str:
    return os.environ.get(DATA_ENV, "data")


def idx_problem(path: str | os.PathLike, ndim: int) -> str:
    """What is wrong with an uint8 IDX file of ``ndim`` dims ("" when nothing is)."""
    path = Path(path)
    size = path.stat().st_size
    header = 4 + 4 * ndim
    if size == 0:
        return "the file is empty"
    with open(path, "rb") as f:
        head = f.read(header)
    if len(head) < header:
        return f"{size} bytes is shorter than the {header}-byte header"
    if head[:3] != b"\x00\x00\x08" or head[3] != ndim:
        return f"it does not start like an uint8 IDX file of {ndim} dims (bytes {head[:4].hex()})"
    dims = [int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + math.prod(dims)
    if size != expected:
        return f"expected {expected} bytes for shape {dims}, found {size} (truncated or padded)"
    return ""


def check_mnist_files(raw: Path, title: str = "MNIST") -> None:
    """Raises DataDamagedError for a raw IDX file of ``title`` (MNIST, Fashion-MNIST, KMNIST:
    the same four file names) that is present but unreadable."""
    for name in MNIST_FILES:
        path = raw / name
        if path.is_file():
            kind = "images" if "images" in name else "labels"
            problem = idx_problem(path, _IDX_NDIM[kind])
            if problem:
                raise DataDamagedError(
                    f"{title} file {path} is damaged: {problem}; delete it so that it is "
                    "downloaded again, or copy an intact one there"
                )


def load_torchvision(
    root: str | os.PathLike, train: bool, folder: str = "MNIST", title: str = "MNIST"
) -> tuple[Tensor, Tensor]:
    """Images as uint8 [N, 1, H, W] and labels as int64 [N] of one of torchvision's IDX datasets,
    its class ``folder`` (MNIST, FashionMNIST, KMNIST) read from ``root/folder/raw``
    (downloaded there if missing)."""
    import torchvision.datasets

    raw = Path(root) / folder / "raw"
    check_mnist_files(raw, title)
    try:
        # torchvision prints its download attempts; the error below says what matters.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            ds = getattr(torchvision.datasets, folder)(root=str(root), train=train, download=True)
    except Exception as e:  # noqa: BLE001 - any download failure means the same thing to a user
        raise DataNotFoundError(
            f"{title} not found in {raw} and could not be downloaded ({type(e).__name__}); put "
            f"{', '.join(MNIST_FILES)} there or point --data-dir (or ${DATA_ENV}) at a folder "
            f"holding {folder}/raw"
        ) from None
    return ds.data[:, None], ds.targets.long()


def load_mnist(root: str | os.PathLike, train: bool) -> tuple[Tensor, Tensor]:
    """Images as uint8 [N, 784] and labels as int64 [N] via torchvision (downloads if missing)."""
    x, y = load_torchvision(root, train)
    return x.reshape(len(x), -1), y


def _quietly(make):
    """``make()`` with torchvision's download chatter swallowed."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return make()


def _missing_or_damaged(title: str, folder: Path, files: list[tuple[str, str | None]], e, fix):
    """The error for a dataset torchvision could not open: the files (name, MD5) missing from
    ``folder`` (DataNotFoundError), or else those whose MD5 is not torchvision's (damaged)."""
    from torchvision.datasets.utils import check_integrity

    missing = [name for name, _ in files if not (folder / name).is_file()]
    if missing:
        return DataNotFoundError(
            f"{title} not found in {folder} and could not be downloaded ({type(e).__name__}); "
            f"missing {', '.join(missing)}: {fix}"
        )
    damaged = [name for name, md5 in files if not check_integrity(str(folder / name), md5)]
    if damaged:
        return DataDamagedError(
            f"{title} file(s) {', '.join(damaged)} in {folder} are damaged (MD5 differs from "
            "torchvision's); delete them so that they are downloaded again, or copy intact ones"
        )
    return DataError(f"{title} in {folder} could not be read ({type(e).__name__}: {e})")


def load_cifar10(root: str | os.PathLike, train: bool) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    """CIFAR-10 by torchvision's class: uint8 [N, 3, 32, 32], int64 [N], the class names;
    files in ``root/cifar-10-batches-py`` (the archive downloaded into ``root`` if missing)."""
    from torchvision.datasets import CIFAR10

    folder = Path(root) / CIFAR10.base_folder
    try:
        ds = _quietly(lambda: CIFAR10(root=str(root), train=train, download=True))
    except Exception as e:  # noqa: BLE001 - any download failure means the same thing to a user
        meta = [CIFAR10.meta["filename"], CIFAR10.meta["md5"]]
        files = [*CIFAR10.train_list, *CIFAR10.test_list, meta]
        fix = (
            f"put them there (or {CIFAR10.filename} in {root}) or point --data-dir (or "
            f"${DATA_ENV}) at a folder holding {CIFAR10.base_folder}"
        )
        raise _missing_or_damaged("CIFAR-10", folder, [tuple(f) for f in files], e, fix) from None
    x = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))  # HWC -> CHW
    return x, torch.tensor(ds.targets, dtype=torch.long), tuple(ds.classes)


def load_svhn(root: str | os.PathLike, train: bool) -> tuple[Tensor, Tensor]:
    """SVHN (cropped digits) by torchvision's class: uint8 [N, 3, 32, 32], int64 [N] (digit 0
    as 0); files ``train_32x32.mat`` and ``test_32x32.mat`` in ``root/SVHN`` (downloaded there
    if missing). Reading them needs scipy."""
    from torchvision.datasets import SVHN

    folder = Path(root) / "SVHN"
    split = "train" if train else "test"
    try:
        import scipy.io  # noqa: F401 - torchvision imports it only after the download
    except ImportError:
        raise DataError(
            "SVHN's .mat files are read with scipy: pip install scipy (or the [svhn] extra)"
        ) from None
    try:
        ds = _quietly(lambda: SVHN(root=str(folder), split=split, download=True))
    except Exception as e:  # noqa: BLE001 - any download failure means the same thing to a user
        files = [tuple(SVHN.split_list[s][1:]) for s in ("train", "test")]
        fix = f"put them there or point --data-dir (or ${DATA_ENV}) at a folder holding SVHN"
        raise _missing_or_damaged("SVHN", folder, files, e, fix) from None
    return torch.from_numpy(np.ascontiguousarray(ds.data)), torch.from_numpy(ds.labels).long()


# CelebA as the VAE baselines (Pythae, AntixK) take it: the aligned 178 x 218 faces, a centred
# 148 x 148 crop, resized to 64 x 64.
CELEBA_CROP, CELEBA_SIZE = 148, 64


def load_celeba(root: str | os.PathLike, train: bool) -> Tensor:
    """CelebA by torchvision's class (split "train" or "test" of list_eval_partition.txt):
    uint8 [N, 3, 64, 64], unlabelled; ``root/celeba`` holds img_align_celeba/ and the five
    list files torchvision checks. Decoding 160k JPEGs takes minutes."""
    from PIL import Image
    from torchvision.datasets import CelebA

    folder = Path(root) / CelebA.base_folder
    split = "train" if train else "test"
    try:
        ds = _quietly(lambda: CelebA(root=str(root), split=split, target_type=[], download=True))
    except Exception as e:  # noqa: BLE001 - any download failure means the same thing to a user
        files = [(name, md5) for _, md5, name in CelebA.file_list if not name.endswith(".zip")]
        if not (folder / "img_align_celeba").is_dir():
            files.append(("img_align_celeba/", None))
        fix = (
            f"put them there (img_align_celeba.zip unpacked) or point --data-dir (or "
            f"${DATA_ENV}) at a folder holding celeba"
        )
        raise _missing_or_damaged("CelebA", folder, files, e, fix) from None
    out = np.empty((len(ds.filename), 3, CELEBA_SIZE, CELEBA_SIZE), dtype=np.uint8)
    for i, name in enumerate(ds.filename):
        with Image.open(folder / "img_align_celeba" / name) as im:
            w, h = im.size
            left, top = (w - CELEBA_CROP) // 2, (h - CELEBA_CROP) // 2
            im = im.convert("RGB").crop((left, top, left + CELEBA_CROP, top + CELEBA_CROP))
            im = im.resize((CELEBA_SIZE, CELEBA_SIZE), Image.Resampling.BILINEAR)
            out[i] = np.asarray(im).transpose(2, 0, 1)
    return torch.from_numpy(out)
