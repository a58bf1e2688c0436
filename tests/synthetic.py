"""Small synthetic datasets in every form ``--dataset`` reads, written without a network:
torchvision's raw IDX layout (Fashion-MNIST, KMNIST), an image folder of PNGs, a tensor file.

Each class draws a bright bar in its own place on a noisy background, so classes differ."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pyro_vae.data.torchvision_data import MNIST_FILES


def images(
    n: int, h: int, w: int, num_classes: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [n, h, w] images and int64 [n] labels 0, 1, ..., num_classes - 1 in turn."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % num_classes
    x = rng.integers(0, 60, size=(n, h, w))
    for i, k in enumerate(y):
        row = (k * h) // num_classes
        x[i, row : row + max(1, h // num_classes)] = 230
    return x.astype(np.uint8), y.astype(np.int64)


def idx_bytes(a: np.ndarray) -> bytes:
    """An uint8 IDX file: magic 0 0 8 ndim, big-endian int32 sizes, the bytes."""
    head = bytes([0, 0, 8, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    return head + a.astype(np.uint8).tobytes()


def write_idx_dataset(root: Path, folder: str, n_train: int = 60, n_test: int = 20, seed: int = 0):
    """``root/folder/raw`` with the four files torchvision's class ``folder`` reads (28 x 28,
    10 classes); returns (train x, train y, test x, test y)."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    xtr, ytr = images(n_train, 28, 28, 10, seed)
    xte, yte = images(n_test, 28, 28, 10, seed + 1)
    for name, a in zip(MNIST_FILES, (xtr, ytr, xte, yte), strict=True):
        (raw / name).write_bytes(idx_bytes(a))
    return xtr, ytr, xte, yte


def write_image_folder(
    root: Path,
    classes: tuple[str, ...] = ("bars", "dots"),
    per_class: int = 30,
    sizes=((16, 16),),
    modes=("RGB",),
) -> Path:
    """``root/<class>/<i>.png``: images of PIL modes ``modes`` ("RGB" colour, "L" grayscale)
    and sizes (h, w), each taken in turn."""
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = sizes[i % len(sizes)]
            x, _ = images(len(classes), h, w, len(classes), seed=100 * k + i)
            grey = x[k]  # class k's bar
            rgb = np.stack([grey, grey // 2, 255 - grey], -1).astype(np.uint8)
            image = Image.fromarray(rgb, "RGB")
            mode = modes[i % len(modes)]
            (image if mode == "RGB" else image.convert(mode)).save(root / name / f"{i:03d}.png")
    return root


def write_tensor_file(
    path: Path, n: int = 90, shape=(16, 20), num_classes: int = 3, labels: bool = True, **extra
) -> Path:
    """``torch.save({"x": float [n, H, W] in [0, 1], "y": int64 [n]})`` (y left out when
    ``labels`` is false); ``extra`` entries replace or add keys."""
    x, y = images(n, *shape, num_classes)
    obj = {"x": torch.from_numpy(x).float() / 255}
    if labels:
        obj["y"] = torch.from_numpy(y)
    obj.update(extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def canvas_fits(shape: tuple[int, ...], image_shape: tuple[int, ...]) -> bool:
    """Whether a tiled canvas [h, w] (or RGB [h, w, 3]) is whole images of ``image_shape``
    ((H, W) or (C, H, W)) with 2-pixel gaps (grids) or none (manifolds)."""
    (h, w), (ih, iw) = shape[:2], image_shape[-2:]
    gaps = (h + 2) % (ih + 2) == 0 and (w + 2) % (iw + 2) == 0
    return gaps or (h % ih == 0 and w % iw == 0)
