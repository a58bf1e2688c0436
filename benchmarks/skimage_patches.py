"""A small RGB dataset from the colour photographs scikit-image ships: 32 x 32 patches as a
``tensor:`` file, for a colour run without a download.

    pip install scikit-image
    python benchmarks/skimage_patches.py --out data/skimage_patches.pt
    pyro-vae train --dataset tensor:data/skimage_patches.pt --network conv \
        --likelihood discretized-logistic --out runs/skimage --epochs 50
    pyro-vae evaluate runs/skimage --num-samples 1000   # bits/dim of the 8-bit patches

Each photograph (``PHOTOS``) is cut into ``--size`` x ``--size`` patches every ``--stride``
pixels, top left first; the label of a patch is its photograph's index in ``PHOTOS``, so
``--num-classes auto`` gives a conditional VAE. The file is uint8 ``x`` [N, 3, S, S] and int64
``y`` [N]; ``pyro-vae train`` holds out a fixed-seed 10% as the test set (patches of the same
photographs: a test of fitting these images, not of generalizing to others).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

# scikit-image's colour photographs that ship with the package (no download).
PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
    "retina",
)  # fmt: skip


def patches(image: np.ndarray, size: int = 32, stride: int = 32) -> np.ndarray:
    """uint8 [H, W, 3] -> [N, 3, size, size]: every whole patch at multiples of ``stride``,
    row by row."""
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
    h, w = image.shape[:2]
    out = [
        image[top : top + size, left : left + size].transpose(2, 0, 1)
        for top in range(0, h - size + 1, stride)
        for left in range(0, w - size + 1, stride)
    ]
    return np.stack(out).astype(np.uint8) if out else np.empty((0, 3, size, size), np.uint8)


def patch_dataset(
    photos: dict[str, np.ndarray], size: int = 32, stride: int = 32
) -> dict[str, torch.Tensor]:
    """{"x": uint8 [N, 3, size, size], "y": int64 [N]} from named RGB images, labels in order."""
    xs, ys = [], []
    for k, image in enumerate(photos.values()):
        p = patches(np.asarray(image)[..., :3], size, stride)
        xs.append(p)
        ys.append(np.full(len(p), k, dtype=np.int64))
    return {"x": torch.from_numpy(np.concatenate(xs)), "y": torch.from_numpy(np.concatenate(ys))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="data/skimage_patches.pt", help="the tensor file to write")
    p.add_argument("--size", type=int, default=32, help="patch side in pixels (default 32)")
    p.add_argument("--stride", type=int, default=32, help="pixels between patches (default 32)")
    p.add_argument("--photos", default=",".join(PHOTOS), help="comma list of skimage.data names")
    args = p.parse_args()
    try:
        import skimage.data
    except ImportError:
        raise SystemExit("needs scikit-image: pip install scikit-image") from None
    names = [n for n in args.photos.split(",") if n]
    data = patch_dataset({n: getattr(skimage.data, n)() for n in names}, args.size, args.stride)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, out)
    counts = np.bincount(data["y"].numpy(), minlength=len(names))
    print(f"wrote {out}: {len(data['x'])} RGB patches of {args.size}x{args.size}")
    for name, count in zip(names, counts, strict=True):
        print(f"  {name}: {count}")


if __name__ == "__main__":
    main()
