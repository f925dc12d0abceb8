"""data/datasets.py: the digits, class folders and zips with map files; images decode to RGB (16-bit too) and a
bad one is named, or skipped and counted.
"""

import os
import struct
import zipfile
import zlib

import numpy as np
import pytest
from bad_inputs import image_tree
from conftest import IMAGENET_SAMPLES, TINY_CFG, requires_dataset, run_main, two_class_images
from PIL import Image

from config import load_config
from data.datasets import DigitsDataset, ImageFolderDataset, ZipMapDataset, decode_image, read_map_file, rgb_image
from data.fast_transforms import PlannedCrop
from data.transforms import build_transform
from utils import DataError

HEIGHT, WIDTH = 24, 40  # the 16-bit test images


def test_digits_split_is_fixed_and_complete():
    train, val = DigitsDataset(True), DigitsDataset(False)
    assert (len(train), len(val)) == (1437, 360)
    assert sorted(set(val.targets)) == list(range(10))
    image, label = val[0]
    assert image.size == (32, 32) and image.mode == "RGB" and label == 0


@requires_dataset("imagenet-samples")
def test_imagenet_samples_with_grayscale_images():
    dataset = ImageFolderDataset(os.path.join(IMAGENET_SAMPLES, "val"),
                                 build_transform(False, load_config("configs/swin_tiny.yaml")))
    assert len(dataset) == 1000 and len(dataset.classes) == 1000
    assert dataset.classes[0] == "n01440764" and dataset.targets[:3] == [0, 1, 2]
    grayscale = [i for i, (path, _) in enumerate(dataset.samples) if Image.open(path).mode == "L"]
    assert len(grayscale) == 23
    image, label = dataset[grayscale[0]]
    assert image.shape == (3, 224, 224) and label == grayscale[0]


def test_empty_class_folder_names_it(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "x.png")
    with pytest.raises(DataError, match=r"class folder .*b has no images"):
        ImageFolderDataset(str(tmp_path))


def test_corrupt_image_names_the_file(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"bad\.jpg cannot be decoded"):
        ImageFolderDataset(str(tmp_path))[0]


def test_map_file_naming_a_missing_entry(tmp_path):
    with zipfile.ZipFile(tmp_path / "train.zip", "w") as archive:
        archive.writestr("a/1.jpg", b"")
    (tmp_path / "train_map.txt").write_text("a/1.jpg\t0\na/2.jpg\t0\n")
    with pytest.raises(DataError, match=r"names a/2\.jpg, which is not in"):
        ZipMapDataset(str(tmp_path / "train.zip"), str(tmp_path / "train_map.txt"))


def test_map_file_with_a_byte_order_mark_reads_its_first_line(tmp_path):
    (tmp_path / "map.txt").write_bytes("\ufeffa/1.jpg\t0\nb/2.jpg\t1\n".encode("utf-8"))
    assert read_map_file(str(tmp_path / "map.txt")) == [("a/1.jpg", 0), ("b/2.jpg", 1)]


def levels(channels: int) -> np.ndarray:
    """8-bit pixels covering 0-255, mid grey included: H, W, channels."""
    rng = np.random.default_rng(channels)
    pixels = rng.integers(0, 256, (HEIGHT, WIDTH, channels), dtype=np.uint8)
    pixels[0, :4] = [[0], [127], [128], [255]]
    return pixels


def as_16_bit(pixels: np.ndarray) -> np.ndarray:
    """The 16-bit values of 8-bit `pixels` (k -> 257 k, as scaling 255 -> 65535 gives), off by up to 100 of 65535."""
    noise = np.random.default_rng(7).integers(-100, 101, pixels.shape)
    return np.clip(pixels.astype(np.int64) * 257 + noise, 0, 65535).astype(np.uint16)


def png_16_bit(values: np.ndarray) -> bytes:
    """A 16-bit PNG (grey, or RGB, which PIL cannot write) of H, W, C uint16 `values`, chunk by chunk."""
    height, width, channels = values.shape
    rows = b"".join(b"\0" + values[y].astype(">u2").tobytes() for y in range(height))  # filter 0 per row

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 16, {1: 0, 3: 2}[channels], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def decoders() -> dict:
    """What each path decodes a file to, as H, W, 3 uint8: evaluation and the two training backends."""
    opts = ("DATA.IMG_SIZE", "16", "AUG.SMALL_IMAGE_CROP", "random_resized")
    pil, torch_backend = (build_transform(True, load_config("tests/configs/tiny.yaml", (*opts, *backend)))
                          for backend in ((), ("DATA.TRANSFORM_BACKEND", "torch")))

    def torch_pixels(path: str) -> np.ndarray:
        planned = decode_image(path, path, torch_backend)
        assert isinstance(planned, PlannedCrop)
        return planned.pixels.numpy()

    return {"evaluation": lambda path: np.array(decode_image(path, path)),
            "pil backend": lambda path: np.array(decode_image(path, path, pil)),
            "torch backend": torch_pixels}


@pytest.mark.parametrize("writer, channels", [("pil", 1), ("chunks", 1), ("chunks", 3)])  # PIL writes no 16-bit RGB
def test_16_bit_png_decodes_to_its_8_bit_pixels_in_every_backend(tmp_path, writer, channels):
    eight = levels(channels)
    path = str(tmp_path / "sixteen.png")
    if writer == "pil":
        Image.fromarray(as_16_bit(eight)[..., 0]).save(path)  # mode I;16
    else:
        with open(path, "wb") as f:
            f.write(png_16_bit(as_16_bit(eight)))
    with Image.open(path) as img:
        assert img.mode in ("I;16", "I", "RGB") and (img.mode == "RGB") == (channels == 3)
    expected = np.broadcast_to(eight, (HEIGHT, WIDTH, 3)).astype(int)
    for name, decode in decoders().items():
        pixels = decode(path)
        assert pixels.shape == (HEIGHT, WIDTH, 3) and pixels.dtype == np.uint8, name
        assert np.abs(pixels.astype(int) - expected).max() <= 1, name
        assert abs(int(pixels[0, 2, 0]) - 128) <= 1, name  # mid grey stays mid grey (it became 255, white)


def test_wide_grey_modes_scale_65535_to_255():
    """Mode I (older Pillow opens 16-bit grey PNGs so) and the 16-bit modes: the nearest 8-bit level, clamped."""
    values = np.array([[0, 257, 32768, 65535, 70000, -5]], dtype=np.int32)
    want = [0, 1, 128, 255, 255, 0]
    assert np.array(rgb_image(Image.fromarray(values)))[0, :, 0].tolist() == want  # mode I
    sixteen = Image.fromarray(values[:, :4].astype(np.uint16))
    assert sixteen.mode == "I;16" and np.array(rgb_image(sixteen))[0, :, 1].tolist() == want[:4]
    assert rgb_image(Image.new("L", (2, 2), 9)).getpixel((1, 1)) == (9, 9, 9)


def test_a_symlink_loop_in_a_class_folder_is_walked_once(tmp_path):
    from data.datasets import ImageFolderDataset

    root = image_tree(str(tmp_path / "data"))
    os.symlink(os.path.join(root, "train", "a"), os.path.join(root, "train", "a", "loop"))
    dataset = ImageFolderDataset(os.path.join(root, "train"))
    assert len(dataset) == 16 and sorted(set(dataset.targets)) == [0, 1]


def test_corrupt_image_can_be_skipped_and_counted(tmp_path):
    root = two_class_images(tmp_path / "data", corrupt=True)
    result = run_main("--cfg", TINY_CFG, "--output", str(tmp_path / "out"), "--data-path", root, "--batch-size", "4",
                      "--opts", "DATA.DATASET", "'imagenet'", "MODEL.NUM_CLASSES", "2", "DATA.DECODE_ERRORS", "'skip'")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("skipped: image") == 2  # once per epoch
