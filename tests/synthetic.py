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


# torchvision's colour datasets in their real on-disk formats, small. torchvision checks each
# file's MD5 against the real dataset's, which no synthetic file can match: the tests that read
# these patch the class's list of MD5s to the written files' own (``torchvision_md5s``), in the
# test only, so torchvision's digest check still runs, on these files; the code under test
# reads the class's lists as they are.


def md5(path: Path) -> str:
    import hashlib

    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def colour_images(n: int, h: int, w: int, num_classes: int, seed: int = 0):
    """uint8 [n, 3, h, w] (class k's bar in its own place and colour) and int64 [n] labels."""
    x, y = images(n, h, w, num_classes, seed)
    rgb = np.stack([x, x // 2 + 20 * (y[:, None, None] % 5), 255 - x], 1)
    return rgb.astype(np.uint8), y


def write_cifar10(root: Path, n_train: int = 50, n_test: int = 20, seed: int = 0):
    """``root/cifar-10-batches-py``: five pickled training batches, a test batch and
    batches.meta, as the real archive unpacks (rows of 3072 = R, G, B planes of 32 x 32)."""
    import pickle

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    xtr, ytr = colour_images(n_train, 32, 32, 10, seed)
    xte, yte = colour_images(n_test, 32, 32, 10, seed + 1)
    parts = np.array_split(np.arange(n_train), 5)
    for i, idx in enumerate(parts, start=1):
        batch = {
            "batch_label": f"training batch {i} of 5",
            "labels": ytr[idx].tolist(),
            "data": xtr[idx].reshape(len(idx), -1),
            "filenames": [f"{j}.png" for j in idx],
        }
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    test = {
        "batch_label": "testing batch 1 of 1",
        "labels": yte.tolist(),
        "data": xte.reshape(n_test, -1),
        "filenames": [f"{j}.png" for j in range(n_test)],
    }
    (folder / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    from pyro_vae.data.datasets import CIFAR10_CLASSES

    meta = {"label_names": list(CIFAR10_CLASSES), "num_cases_per_batch": 10000, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return xtr, ytr, xte, yte


def write_svhn(root: Path, n_train: int = 40, n_test: int = 20, seed: int = 0):
    """``root/SVHN/{train,test}_32x32.mat`` as the real files: X uint8 [32, 32, 3, N], y uint8
    [N, 1] with the digit 0 labelled 10 (scipy.io.savemat)."""
    import scipy.io

    folder = root / "SVHN"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        x, y = colour_images(n, 32, 32, 10, s)
        mat_y = np.where(y == 0, 10, y).astype(np.uint8)[:, None]
        scipy.io.savemat(folder / f"{split}_32x32.mat", {"X": x.transpose(2, 3, 1, 0), "y": mat_y})
        out += [x, y]
    return tuple(out)


CELEBA_ATTRS = ("Smiling", "Young")  # the real file has 40; torchvision reads any number


def write_celeba(root: Path, n_train: int = 6, n_test: int = 3, seed: int = 0) -> np.ndarray:
    """``root/celeba``: img_align_celeba/*.jpg (178 x 218, the aligned faces' size) and the five
    list files torchvision reads, partition 0 = train, 2 = test; returns the images
    uint8 [n, 218, 178, 3] as decoded from the JPEGs."""
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    n = n_train + n_test
    rng = np.random.default_rng(seed)
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    decoded = []
    for i, name in enumerate(names):
        a = (rng.random((218, 178, 3)) * 40 + np.linspace(0, 200, 178)[None, :, None]).astype(
            np.uint8
        )
        a[80 + 4 * i : 120, 50:130, i % 3] = 250  # a patch in the centre crop
        Image.fromarray(a).save(folder / "img_align_celeba" / name, quality=95)
        with Image.open(folder / "img_align_celeba" / name) as im:
            decoded.append(np.asarray(im.convert("RGB")))
    part = [0] * n_train + [2] * n_test
    lines = {
        "list_eval_partition.txt": [f"{f} {p}" for f, p in zip(names, part, strict=True)],
        "identity_CelebA.txt": [f"{f} {i % 4}" for i, f in enumerate(names)],
        "list_bbox_celeba.txt": [str(n), "image_id x_1 y_1 width height"]
        + [f"{f}  95  71 226 313" for f in names],
        "list_landmarks_align_celeba.txt": [
            str(n),
            "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x "
            "leftmouth_y rightmouth_x rightmouth_y",
        ]
        + [f"{f} 69 109 106 113 77 142 73 152 108 154" for f in names],  # fmt: skip
        "list_attr_celeba.txt": [str(n), " ".join(CELEBA_ATTRS)]
        + [
            f"{f} {' '.join(['1', '-1'][(i + k) % 2] for k in range(len(CELEBA_ATTRS)))}"
            for i, f in enumerate(names)
        ],  # fmt: skip
    }
    for name, rows in lines.items():
        (folder / name).write_text("\n".join(rows) + "\n")
    return np.stack(decoded)


def torchvision_md5s(monkeypatch, root: Path) -> None:
    """Points torchvision's CIFAR10, SVHN and CelebA MD5 lists at the synthetic files under
    ``root`` (those that exist), for this test only (``monkeypatch`` undoes it)."""
    from torchvision.datasets import CIFAR10, SVHN, CelebA

    cifar = root / CIFAR10.base_folder
    if cifar.is_dir():
        for attr in ("train_list", "test_list"):
            fixed = [[f, md5(cifar / f)] for f, _ in getattr(CIFAR10, attr)]
            monkeypatch.setattr(CIFAR10, attr, fixed)
        meta = {**CIFAR10.meta, "md5": md5(cifar / CIFAR10.meta["filename"])}
        monkeypatch.setattr(CIFAR10, "meta", meta)
    svhn = root / "SVHN"
    if svhn.is_dir():
        fixed = {k: [url, f, md5(svhn / f) if (svhn / f).is_file() else m]
                 for k, (url, f, m) in SVHN.split_list.items()}  # fmt: skip
        monkeypatch.setattr(SVHN, "split_list", fixed)
    celeba = root / CelebA.base_folder
    if celeba.is_dir():
        fixed = [(i, md5(celeba / f) if (celeba / f).is_file() else m, f)
                 for i, m, f in CelebA.file_list]  # fmt: skip
        monkeypatch.setattr(CelebA, "file_list", fixed)
