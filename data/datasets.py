"""Datasets: image folders, the reference zip + map layout, synthetic images and the built-in digits.

Every dataset returns (image, label), keeps `classes` (names by label) and names the file in
the error when an image cannot be read.
"""

import io
import os
import re
import zipfile
import zlib
from typing import Any, Callable, Optional

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

from utils import DataError, kind_problem

Transform = Optional[Callable]
# The most classes a map file may number: ImageNet-22k has 21,841; a label beyond this is a typo, and the list of
# class names built up to it would not fit in memory.
MAX_CLASSES = 1_000_000


def rgb_image(img: Image.Image) -> Image.Image:
    """`img` in RGB, every decoder's last step: 16-bit greys (modes I;16*, and I, as which older Pillow opens
    16-bit PNGs) scaled 65535 -> 255 to the nearest level, where PIL's own conversion clips them at 255 (a mid
    grey became white). 16-bit colour PNGs PIL opens as RGB already, from the high bytes (within a level)."""
    if img.mode == "I" or img.mode.startswith("I;16"):
        wide = np.clip(np.asarray(img).astype(np.int64), 0, 65535)  # H, W
        img = Image.fromarray(((wide + 128) // 257).astype(np.uint8))  # mode L, round(v / 257)
    return img.convert("RGB")


def open_rgb(source: io.BytesIO | str) -> Image.Image:
    """Decode to RGB; an image that decoded to RGB and closed its file is returned as it is (convert copies)."""
    img = Image.open(source)
    try:
        img.load()
    except BaseException:
        img.close()
        raise
    if img.mode == "RGB" and getattr(img, "fp", None) is None:
        return img
    with img:
        return rgb_image(img)


def decode_image(data: bytes | str, name: str, transform: Transform = None) -> Any:
    """An RGB image from file bytes or a path; a DataError naming `name` when it does not decode.

    A transform with a `decode` method decodes the file itself (the torch backend draws its crop first).
    """
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        return getattr(transform, "decode", open_rgb)(source)
    except UnidentifiedImageError:
        reason = "empty file" if not data or (isinstance(data, str) and os.path.getsize(data) == 0) else \
            "not an image format PIL reads"
    except Image.DecompressionBombError as err:
        reason = f"too large to decode safely: {str(err).split('(')[0].strip()}"
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        reason = str(err) or type(err).__name__
    raise DataError(f"image {name} cannot be decoded ({reason}); remove or replace the file")


def image_files(folder: str) -> list[str]:
    """The image files below `folder`, sorted, following links but visiting each real folder once (a link
    that loops back would otherwise repeat the same images until the OS stops the walk).

    An image name on something that is not a regular file (a FIFO, a device, a link to nothing) is a DataError:
    reading a FIFO would hang the loader, and the others fail later, in a worker, far from the name.
    """
    seen, files, pending = set(), [], [folder]
    while pending:
        current = pending.pop()
        real = os.path.realpath(current)
        if real in seen:
            continue
        seen.add(real)
        try:
            entries = list(os.scandir(current))
        except OSError as err:
            raise DataError(f"folder {current} cannot be listed ({err.strerror}); make it readable or remove it"
                            ) from None
        for entry in entries:
            if entry.is_dir():
                pending.append(entry.path)
            elif entry.name.lower().endswith(IMG_EXTENSIONS):
                if not entry.is_file():
                    what = "a link to nothing" if entry.is_symlink() and not os.path.exists(entry.path) else \
                        "not a regular file (a FIFO, socket or device)"
                    raise DataError(f"image {entry.path} is {what}; remove it or put the image file there")
                files.append(entry.path)
    return sorted(files)


class ImageFolderDataset(Dataset):
    """`<root>/<class>/<image>` with classes in sorted order, as torchvision's ImageFolder numbers them."""

    def __init__(self, root: str, transform: Transform = None) -> None:
        if problem := kind_problem(root, "folder"):
            raise DataError(f"image folder {root} {problem}; point --data-path at a folder with train/ and val/")
        self.root = root
        self.transform = transform
        self.classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
        if not self.classes:
            raise DataError(f"image folder {root} has no class sub-folders; put images in {root}/<class>/")
        self.samples: list[tuple[str, int]] = []
        for label, name in enumerate(self.classes):
            files = image_files(os.path.join(root, name))
            if not files:
                raise DataError(f"class folder {os.path.join(root, name)} has no images; add images or remove it")
            self.samples.extend((f, label) for f in files)
        self.targets = [label for _, label in self.samples]

    def label_by(self, names: list[str]) -> None:
        """Number the classes as a model trained on `names` does; this folder may hold a subset of them."""
        unknown = sorted(set(self.classes) - set(names))
        if unknown:
            raise DataError(f"image folder {self.root} has class {unknown[0]!r}, which the model was not trained on "
                            f"(it knows {len(names)} classes: {', '.join(names[:3])}, ...); evaluate on its classes")
        index = {name: i for i, name in enumerate(names)}
        self.samples = [(path, index[self.classes[label]]) for path, label in self.samples]
        self.targets = [label for _, label in self.samples]
        self.classes = list(names)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple:
        path, label = self.samples[index]
        image = decode_image(path, path, self.transform)
        return (self.transform(image) if self.transform else image), label


class ImageFilesDataset(Dataset):
    """Every image below `root`, in class folders or not, for training without labels (each gets label 0)."""

    def __init__(self, root: str, transform: Transform = None) -> None:
        if problem := kind_problem(root, "folder"):
            raise DataError(f"image folder {root} {problem}; point --data-path at a folder of images")
        self.root = root
        self.transform = transform
        self.files = image_files(root)
        if not self.files:
            raise DataError(f"image folder {root} holds no images (.jpg, .png, ...); point --data-path at the "
                            "folder that holds them")
        self.classes = ["images"]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple:
        path = self.files[index]
        image = decode_image(path, path, self.transform)
        return (self.transform(image) if self.transform else image), 0


def read_map_file(path: str) -> list[tuple[str, int]]:
    """Lines `<path in zip>\\t<label>` of a reference map file (UTF-8, with or without a byte-order mark)."""
    if problem := kind_problem(path, "file"):
        raise DataError(f"map file {path} {problem}; write it with `python -m data.make_map`")
    entries = []
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as err:
        raise DataError(f"map file {path} is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not re.fullmatch(r"\s*-?[0-9]+\s*", parts[1]):
            raise DataError(f"map file {path} line {number} is not `<path>\\t<label>`: {line.strip()[:80]!r}")
        label = int(parts[1])
        if label < 0:
            raise DataError(f"map file {path} line {number} has label {label}; labels count from 0")
        if label >= MAX_CLASSES:
            raise DataError(f"map file {path} line {number} has label {label}, which would make {label + 1:,} "
                            f"classes; labels number the classes from 0 (at most {MAX_CLASSES:,})")
        entries.append((parts[0], label))
    if not entries:
        raise DataError(f"map file {path} is empty; it needs one `<path>\\t<label>` line per image")
    return entries


class ZipMapDataset(Dataset):
    """The reference zip layout: images inside `<split>.zip`, labels in `<split>_map.txt`.

    Cache modes as the reference defines them: `no` reads each image on demand, `full` holds
    every image's bytes in memory, `part` holds only the images whose index falls to this
    shard (index % num_shards == shard). The zip is opened lazily in each worker process.
    """

    def __init__(
        self, zip_path: str, map_path: str, transform: Transform = None, cache_mode: str = "no",
        shard: int = 0, num_shards: int = 1,
    ) -> None:
        if problem := kind_problem(zip_path, "file"):
            raise DataError(f"zip file {zip_path} {problem}; --zip expects train.zip and val.zip in --data-path")
        self.zip_path = zip_path
        self.transform = transform
        self.samples = read_map_file(map_path)
        self.targets = [label for _, label in self.samples]
        with self._open(zip_path) as archive:
            names = set(archive.namelist())
            missing = [p for p, _ in self.samples if p not in names]
            if missing:
                raise DataError(f"map file {map_path} names {missing[0]}, which is not in {zip_path} "
                                f"({len(missing)} missing); rewrite the map file")
            self._cache = {
                i: self._read_member(archive, p)
                for i, (p, _) in enumerate(self.samples)
                if cache_mode == "full" or (cache_mode == "part" and i % num_shards == shard)
            }
        self.classes = _class_names(self.samples)
        self._archive: Optional[zipfile.ZipFile] = None
        self._archive_pid = -1

    @staticmethod
    def _open(zip_path: str) -> zipfile.ZipFile:
        try:
            return zipfile.ZipFile(zip_path)
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise DataError(f"zip file {zip_path} cannot be opened ({err}); it is truncated or not a zip: "
                            "copy it again") from None

    def _read_member(self, archive: zipfile.ZipFile, name: str) -> bytes:
        try:
            return archive.read(name)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as err:
            raise DataError(f"image {self.zip_path}:{name} cannot be read from the zip ({err}); the zip is "
                            "damaged: copy it again") from None
        except (RuntimeError, NotImplementedError) as err:  # an encrypted member, an unsupported compression
            raise DataError(f"image {self.zip_path}:{name} cannot be read from the zip ({err}); write the zip "
                            "again unencrypted, its members stored or deflated") from None

    def _read(self, index: int) -> bytes:
        if index in self._cache:
            return self._cache[index]
        if self._archive is None or self._archive_pid != os.getpid():
            self._archive = self._open(self.zip_path)
            self._archive_pid = os.getpid()
        return self._read_member(self._archive, self.samples[index][0])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple:
        name, label = self.samples[index]
        image = decode_image(self._read(index), f"{self.zip_path}:{name}", self.transform)
        return (self.transform(image) if self.transform else image), label

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_archive"], state["_archive_pid"] = None, -1
        return state


def _class_names(samples: list[tuple[str, int]]) -> list[str]:
    """Class names from the folder part of the paths, when every label has one folder; else the label numbers."""
    folders: dict[int, set[str]] = {}
    for path, label in samples:
        folders.setdefault(label, set()).add(os.path.dirname(path))
    count = max(folders) + 1
    if len(folders) == count and all(len(f) == 1 and next(iter(f)) for f in folders.values()):
        return [os.path.basename(next(iter(folders[i]))) for i in range(count)]
    return [str(i) for i in range(count)]


class DigitsDataset(Dataset):
    """scikit-learn's 1,797 real 8x8 handwritten digits, upscaled to 32x32: the built-in demo set.

    The split is fixed: every fifth image (index % 5 == 0) is validation, the rest training.
    """

    def __init__(self, train: bool, transform: Transform = None) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        keep = (np.arange(len(digits.target)) % 5 != 0) == train
        pixels = (digits.images[keep] * (255.0 / 16.0)).round().astype(np.uint8)  # n, 8, 8
        self.images = pixels.repeat(4, axis=1).repeat(4, axis=2)  # n, 32, 32
        self.targets = digits.target[keep].tolist()
        self.classes = [str(d) for d in range(10)]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple:
        image = Image.fromarray(self.images[index], mode="L").convert("RGB")
        return (self.transform(image) if self.transform else image), self.targets[index]


class FakeDataset(Dataset):
    """Random normalised images with random labels, the same for the same index: for throughput and smoke runs."""

    def __init__(self, size: int, img_size: int, num_classes: int) -> None:
        self.size = size
        self.img_size = img_size
        self.classes = [str(i) for i in range(max(num_classes, 1))]
        self.targets = [i % len(self.classes) for i in range(size)]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple:
        generator = torch.Generator().manual_seed(index)
        return torch.randn(3, self.img_size, self.img_size, generator=generator), self.targets[index]
