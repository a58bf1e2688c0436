"""The user's own images: an ImageFolder folder (its channels kept, grayscale on request,
resized on request) and a tensor file are read into uint8 [N, C, H, W] with their labels, and
everything a user gets wrong is a DataError naming the problem and the fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic import write_image_folder, write_tensor_file

from pyro_vae.data.errors import DataError, DataNotFoundError
from pyro_vae.data.user_data import read_folder, read_tensor_file


def test_folder_reads_grayscale_with_subfolder_labels(tmp_path):
    root = write_image_folder(tmp_path / "f", classes=("b", "a"), per_class=3, sizes=((12, 10),))
    images = read_folder(root, grayscale=True)
    assert images.classes == ("a", "b")  # sorted, as torchvision numbers ImageFolder classes
    assert images.x.dtype == torch.uint8 and images.x.shape == (6, 1, 12, 10)
    assert images.y.tolist() == [0, 0, 0, 1, 1, 1]
    with Image.open(root / "b" / "001.png") as im:
        assert im.mode == "RGB"
        grey = np.array(im.convert("L"))
    assert torch.equal(images.x[4, 0], torch.from_numpy(grey))  # b's second image, PIL's luma


def test_folder_keeps_colour_and_grayscale_files_channels(tmp_path):
    root = write_image_folder(tmp_path / "rgb", per_class=2, sizes=((12, 10),))
    images = read_folder(root)
    assert images.x.shape == (4, 3, 12, 10) and images.image_shape == (3, 12, 10)
    with Image.open(root / "bars" / "001.png") as im:
        rgb = np.array(im)  # [H, W, 3]
    assert torch.equal(images.x[1], torch.from_numpy(rgb).permute(2, 0, 1))  # channels first
    gray = write_image_folder(tmp_path / "gray", per_class=2, sizes=((12, 10),), modes=("L",))
    images = read_folder(gray)
    with Image.open(gray / "bars" / "001.png") as im:
        assert im.mode == "L"
        want = np.array(im)
    assert images.x.shape == (4, 1, 12, 10) and torch.equal(images.x[1, 0], torch.from_numpy(want))
    # A grayscale file with alpha is one channel too; a palette image is colour.
    for mode, channels in (("LA", 1), ("P", 3), ("RGBA", 3)):
        folder = write_image_folder(tmp_path / mode, per_class=1, sizes=((6, 5),), modes=(mode,))
        assert read_folder(folder).image_shape == (channels, 6, 5), mode


def test_folder_of_grayscale_and_colour_files_needs_grayscale(tmp_path):
    root = write_image_folder(tmp_path / "f", per_class=2, sizes=((8, 8),), modes=("RGB", "L"))
    with pytest.raises(
        DataError, match=r"holds grayscale and colour images \(L in .*, RGB in"
    ) as e:
        read_folder(root)
    assert "pass --grayscale" in str(e.value) and "\n" not in str(e.value)
    assert read_folder(root, grayscale=True).image_shape == (1, 8, 8)


def test_folder_resizes_every_image_to_the_size_asked_for(tmp_path):
    root = write_image_folder(tmp_path / "f", per_class=4, sizes=((20, 20), (24, 18)))
    with pytest.raises(DataError, match=r"different sizes \(20x20 in .*, 24x18 in .*--image-size"):
        read_folder(root)
    images = read_folder(root, image_size=16, grayscale=True)
    assert images.x.shape == (8, 1, 16, 16)
    with Image.open(root / "bars" / "001.png") as im:
        want = np.array(im.convert("L").resize((16, 16), Image.Resampling.BILINEAR))
    assert torch.equal(images.x[1, 0], torch.from_numpy(want))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda r: None, "no such folder"),
        (lambda r: r.mkdir(), "has no class subfolders"),
        (
            lambda r: (r / "a").mkdir(parents=True) or (r / "a" / "n.txt").write_text("x"),
            "no images",
        ),
        (
            lambda r: (r / "a").mkdir(parents=True) or (r / "a" / "x.png").write_text("x"),
            "cannot read",
        ),
    ],
    ids=["missing", "no-class-folders", "no-images", "not-an-image"],
)
def test_folder_errors_name_the_problem(tmp_path, make, match):
    root = tmp_path / "f"
    make(root)
    with pytest.raises(DataError, match=match) as e:
        read_folder(root)
    assert str(root) in str(e.value) and "\n" not in str(e.value)


def test_tensor_file_float_pixels_become_the_256_levels(tmp_path):
    path = write_tensor_file(tmp_path / "t.pt", n=12, shape=(16, 20), num_classes=3)
    saved = torch.load(path, weights_only=True)
    images = read_tensor_file(path)
    assert images.x.dtype == torch.uint8 and images.x.shape == (12, 1, 16, 20)
    assert torch.equal(images.x[:, 0], (saved["x"].double() * 255).round().to(torch.uint8))
    assert torch.equal(images.y, saved["y"]) and images.classes == ("0", "1", "2")


def test_tensor_file_of_flat_square_images_and_without_labels(tmp_path):
    x = torch.randint(0, 256, (5, 64), dtype=torch.uint8)
    torch.save({"x": x}, tmp_path / "t.pt")
    images = read_tensor_file(tmp_path / "t.pt")
    assert (
        torch.equal(images.x, x.reshape(5, 1, 8, 8)) and images.y is None and images.classes == ()
    )


@pytest.mark.parametrize("channels", [1, 3])
def test_tensor_file_of_images_with_channels(tmp_path, channels):
    x = torch.randint(0, 256, (5, channels, 6, 7), dtype=torch.uint8)
    torch.save({"x": x}, tmp_path / "t.pt")
    images = read_tensor_file(tmp_path / "t.pt")
    assert torch.equal(images.x, x) and images.image_shape == (channels, 6, 7)


BAD_TENSOR_FILES = [
    ({"images": torch.zeros(4, 8, 8)}, "holds the keys ['images'], not 'x'"),
    ({"x": torch.zeros(4, 8, 8), "y": torch.zeros(4).long(), "z": 1}, "keys ['x', 'y', 'z']"),
    ({"x": torch.zeros(4, 8, 8, dtype=torch.int32)}, "dtype torch.int32, not uint8 or float"),
    ({"x": torch.full((4, 8, 8), 2.0)}, "float 'x' outside [0, 1]"),
    ({"x": torch.zeros(4, 10)}, "10 is not S * S pixels"),
    ({"x": torch.zeros(4, 2, 8, 8)}, "not [N, H, W] or [N, C, H, W] (C = 1, 3)"),
    ({"x": torch.zeros(4, 1, 1, 8, 8)}, "not [N, H, W] or [N, C, H, W]"),
    ({"x": torch.zeros(4, 8, 8, 3)}, "channels last; make it [N, C, H, W]"),
    ({"x": [[0.0]]}, "'x' of type list, not a tensor"),
    ({"x": torch.zeros(4, 8, 8), "y": torch.tensor([0.0, 1, 0, 1])}, "not integers"),
    ({"x": torch.zeros(4, 8, 8), "y": torch.tensor([True, False] * 2)}, "not integers"),
    ({"x": torch.zeros(4, 8, 8), "y": torch.tensor([0, 1])}, "'y' of shape [2] for 4 images"),
    ({"x": torch.zeros(4, 8, 8), "y": torch.tensor([0, -1, 0, 1])}, "negative labels"),
    (torch.zeros(4, 8, 8), "holds a Tensor, not a dict"),
]


@pytest.mark.parametrize("content, match", BAD_TENSOR_FILES)
def test_tensor_file_errors_name_the_problem_and_the_layout(tmp_path, content, match):
    torch.save(content, tmp_path / "t.pt")
    with pytest.raises(DataError) as e:
        read_tensor_file(tmp_path / "t.pt")
    msg = str(e.value)
    assert match in msg and "torch.save({'x': images, 'y': labels}, FILE)" in msg, msg


def test_tensor_file_missing_or_unreadable(tmp_path):
    with pytest.raises(DataNotFoundError, match="no such file"):
        read_tensor_file(tmp_path / "nothing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file" * 4)
    with pytest.raises(DataError, match="cannot be read by torch.load"):
        read_tensor_file(tmp_path / "junk.pt")
