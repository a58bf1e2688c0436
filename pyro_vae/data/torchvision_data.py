"""torchvision's IDX datasets (MNIST, Fashion-MNIST, KMNIST) read from their raw layout, with
torchvision's normal download path when the files are missing, and checks that name a damaged
file.

The data directory defaults to ``$PYRO_VAE_DATA_DIR`` when set, else ``./data``.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from pathlib import Path

from torch import Tensor

from pyro_vae.data.errors import DataDamagedError, DataNotFoundError

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
    """Images as uint8 [N, H, W] and labels as int64 [N] of one of torchvision's IDX datasets,
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
    return ds.data, ds.targets.long()


def load_mnist(root: str | os.PathLike, train: bool) -> tuple[Tensor, Tensor]:
    """Images as uint8 [N, 784] and labels as int64 [N] via torchvision (downloads if missing)."""
    x, y = load_torchvision(root, train)
    return x.reshape(len(x), -1), y
