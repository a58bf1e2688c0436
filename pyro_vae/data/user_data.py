"""The user's own images: an image folder (torchvision's ``ImageFolder`` layout) or a tensor file.

Each reader returns :class:`Images`: uint8 pixels [N, C, H, W] (C = 1 grayscale, 3 RGB), int64
labels [N] (or None) and the class names. Everything a user can get wrong is a
:class:`~pyro_vae.data.images.DataError` whose one line names the problem and the fix;
``datasets.py`` splits, checks and records the result.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pyro_vae.data.errors import DataError, DataNotFoundError

# The layout a user is told to make.
FOLDER_LAYOUT = "PATH/<class>/<image>.png (torchvision's ImageFolder layout)"
TENSOR_KEYS = ("x", "y")


# What the figures can draw: grayscale or RGB.
CHANNELS = (1, 3)
# PIL modes of one channel (grayscale, with or without alpha); every other mode is colour.
GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")


@dataclass
class Images:
    """Images of one split, before flattening."""

    x: Tensor  # uint8 [N, C, H, W]
    y: Tensor | None  # int64 [N], or None for unlabelled images
    classes: tuple[str, ...]  # class k's name; () when unlabelled

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return int(self.x.shape[1]), int(self.x.shape[2]), int(self.x.shape[3])


def _folder_samples(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Class names and (path, class index) pairs, in torchvision's order (sorted)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    what = f"folder:{root}"
    if not root.is_dir():
        raise DataNotFoundError(f"{what}: no such folder; give one laid out as {FOLDER_LAYOUT}")
    try:
        classes, class_to_idx = find_classes(root)
    except FileNotFoundError:
        raise DataError(
            f"{what} has no class subfolders; put the images in {FOLDER_LAYOUT} "
            "(one subfolder, e.g. PATH/all/, for unlabelled images)"
        ) from None
    try:
        samples = make_dataset(root, class_to_idx, IMG_EXTENSIONS)
    except FileNotFoundError:  # torchvision: some class folder holds no image file
        empty = [c for c in classes if not _has_images(root / c, IMG_EXTENSIONS)]
        raise DataError(
            f"{what}: class folder(s) {', '.join(empty)} hold no images "
            f"({', '.join(IMG_EXTENSIONS[:4])}, ...); add images or remove the folder(s)"
        ) from None
    return classes, samples


def _has_images(folder: Path, extensions: tuple[str, ...]) -> bool:
    return any(p.suffix.lower() in extensions for p in folder.rglob("*") if p.is_file())


def read_folder(path: str | os.PathLike, image_size: int = 0, grayscale: bool = False) -> Images:
    """The images of an ``ImageFolder`` folder as uint8 [N, C, H, W]; labels are the
    subfolders (sorted names, as torchvision numbers them).

    Channels: grayscale files (PIL modes ``GRAY_MODES``) give C = 1, colour files (RGB, RGBA,
    palette, CMYK, ...) C = 3 by PIL's ``convert("RGB")`` (alpha dropped); one folder holds one
    kind. ``grayscale``: every image becomes one channel by PIL's ``convert("L")`` (ITU-R
    601-2 luma), colour or not (what folder: did before colour was kept).
    ``image_size`` S > 0: every image is resized to S x S (PIL's bilinear filter, which
    antialiases when shrinking); 0 keeps the sizes, which must then all be equal.
    """
    from PIL import Image

    root = Path(path)
    classes, samples = _folder_samples(root)
    pixels, labels, sizes, kinds = [], [], {}, {}
    for file, label in samples:
        try:
            with Image.open(file) as im:
                gray = grayscale or im.mode in GRAY_MODES
                kinds.setdefault(gray, (im.mode, file))
                im = im.convert("L" if gray else "RGB")
                if image_size:
                    im = im.resize((image_size, image_size), Image.Resampling.BILINEAR)
                a = np.asarray(im, dtype=np.uint8)
        except (OSError, ValueError) as e:
            raise DataError(
                f"folder:{root}: cannot read {file} as an image ({e}); remove it or replace it"
            ) from None
        if len(kinds) > 1:
            (m1, f1), (m2, f2) = kinds[True], kinds[False]
            raise DataError(
                f"folder:{root} holds grayscale and colour images ({m1} in {f1}, {m2} in {f2}); "
                "pass --grayscale to make them all one channel, or keep one kind in the folder"
            )
        sizes.setdefault(a.shape[:2], file)
        if len(sizes) > 1:
            (s1, f1), (s2, f2) = list(sizes.items())[:2]
            raise DataError(
                f"folder:{root} holds images of different sizes ({s1[0]}x{s1[1]} in {f1}, "
                f"{s2[0]}x{s2[1]} in {f2}); pass --image-size S to resize them all to S x S"
            )
        pixels.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
        labels.append(label)
    x = torch.from_numpy(np.stack(pixels))
    return Images(x, torch.tensor(labels, dtype=torch.long), tuple(classes))


def _tensor_file_error(path: Path, problem: str) -> DataError:
    return DataError(
        f"tensor:{path} {problem}; save it as torch.save({{'x': images, 'y': labels}}, FILE) "
        "with images uint8 (0-255) or float (0-1) [N, H, W] or [N, C, H, W] (C = 1 or 3) and "
        "optional int64 labels [N]"
    )


def read_tensor_file(
    path: str | os.PathLike, image_size: int = 0, grayscale: bool = False
) -> Images:
    """``torch.load(FILE)`` = {"x": images, "y": labels (optional)} as uint8 [N, C, H, W].

    x: uint8 (the 256 pixel values) or float in [0, 1], which becomes round(255 x); shape
    [N, C, H, W] with C = 1 (grayscale) or 3 (RGB), [N, H, W] (grayscale), or [N, D] with D a
    square number (D = S * S, grayscale). y: integer labels [N], >= 0; the classes are
    0 .. max(y). Read with ``weights_only=True``: a tensor file runs no code.
    """
    path = Path(path)
    if image_size:
        raise DataError(f"--image-size resizes folder: datasets; tensor:{path} keeps its size")
    if grayscale:
        raise DataError(f"--grayscale converts folder: images; tensor:{path} keeps its channels")
    if not path.is_file():
        raise DataNotFoundError(f"tensor:{path}: no such file; give a .pt file made by torch.save")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file means the same thing to a user
        problem = f"cannot be read by torch.load ({type(e).__name__})"
        raise _tensor_file_error(path, problem) from None
    if not isinstance(obj, dict):
        raise _tensor_file_error(path, f"holds a {type(obj).__name__}, not a dict")
    keys = sorted(map(str, obj))
    if "x" not in obj or set(obj) - set(TENSOR_KEYS):
        raise _tensor_file_error(path, f"holds the keys {keys}, not 'x' and optionally 'y'")
    x = _images(path, obj["x"])
    y = obj.get("y")
    if y is None:
        return Images(x, None, ())
    y = _labels(path, y, len(x))
    return Images(x, y, tuple(str(k) for k in range(int(y.max()) + 1 if len(y) else 0)))


def _images(path: Path, x: object) -> Tensor:
    if not torch.is_tensor(x):
        raise _tensor_file_error(path, f"has 'x' of type {type(x).__name__}, not a tensor")
    if x.dtype.is_floating_point:
        if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise _tensor_file_error(path, "has float 'x' outside [0, 1]; scale it to [0, 1]")
        x = (x.double() * 255).round().to(torch.uint8)
    elif x.dtype != torch.uint8:
        raise _tensor_file_error(path, f"has 'x' of dtype {x.dtype}, not uint8 or float")
    if x.dim() == 2:
        side = math.isqrt(x.shape[1])
        if side * side != x.shape[1]:
            raise _tensor_file_error(
                path, f"has 'x' of shape {list(x.shape)}: {x.shape[1]} is not S * S pixels"
            )
        x = x.reshape(-1, side, side)
    if x.dim() == 3:
        x = x[:, None]
    if x.dim() == 4 and x.shape[1] not in CHANNELS and x.shape[-1] in CHANNELS:
        raise _tensor_file_error(
            path,
            f"has 'x' of shape {list(x.shape)}, channels last; make it [N, C, H, W] with "
            "x.permute(0, 3, 1, 2)",
        )
    if x.dim() != 4 or x.shape[1] not in CHANNELS or x.shape[0] == 0 or min(x.shape) == 0:
        raise _tensor_file_error(
            path, f"has 'x' of shape {list(x.shape)}, not [N, H, W] or [N, C, H, W] (C = 1, 3)"
        )
    return x.contiguous()


def _labels(path: Path, y: object, n: int) -> Tensor:
    if not torch.is_tensor(y):
        raise _tensor_file_error(path, f"has 'y' of type {type(y).__name__}, not a tensor")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise _tensor_file_error(
            path, f"has labels 'y' of dtype {y.dtype}, not integers (use y.long() for classes)"
        )
    if y.shape != (n,):
        raise _tensor_file_error(path, f"has 'y' of shape {list(y.shape)} for {n} images")
    y = y.long()
    if n and y.min() < 0:
        raise _tensor_file_error(path, f"has negative labels (min {int(y.min())})")
    return y
