"""The torch training-transform backend (DATA.TRANSFORM_BACKEND torch): the reference's augmentation, with the
same random draws in the same order, its slowest steps computed faster on a core.

- The random crop is drawn from the image header before decoding; JPEGs are decoded by torchvision's
  decoder (the same pixels as PIL's, faster), or by PIL at 1/2, 1/4 or 1/8 scale when the crop is large
  enough, and the crop is resized by torch's antialiased uint8 kernel instead of PIL's (within about a
  grey level of it). The horizontal flip that follows is drawn there too, from torch's generator as
  torchvision's flip draws it, and mirrors the resized pixels (a PIL image less per sample).
- RandAugment's shear and translate ops are PIL bicubic affine warps that move pixels along rows or columns
  only, so they are one-dimensional resamplings: computed as such (PIL's a = -1 cubic, truncated, clamped
  edges, the fill colour where the source falls outside), equal to PIL's output within one grey level.
"""

import io
import random
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import auto_augment as timm_auto_augment
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision import transforms
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode

from data.datasets import open_rgb, rgb_image


@dataclass
class PlannedCrop:
    """A decoded image with the random crop and interpolation that were drawn for it before it was decoded."""

    pixels: torch.Tensor  # H, W, C uint8
    crop: tuple[int, int, int, int]  # top, left, height, width in `pixels`
    interpolation: InterpolationMode


# Start-of-frame markers (baseline, progressive, lossless, arithmetic): their segment holds the image size.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_header(data: bytes) -> Optional[tuple[int, int, int]]:
    """Width, height and colour components of a JPEG from its start-of-frame segment; None when `data` is not
    a JPEG this reads (PIL then opens it). Parsing only the markers costs a fraction of PIL's Image.open."""
    if data[:2] != b"\xff\xd8":
        return None
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker == 0xDA:  # start of scan before any frame header
            return None
        length = int.from_bytes(data[at + 2:at + 4], "big")
        if marker in _SOF_MARKERS and at + 10 <= len(data):
            height, width = int.from_bytes(data[at + 5:at + 7], "big"), int.from_bytes(data[at + 7:at + 9], "big")
            return (width, height, data[at + 9]) if width and height else None
        at += 2 + length
    return None


def _decode_jpeg(data: bytes) -> torch.Tensor:
    """H, W, 3 uint8 pixels of a JPEG by torchvision's decoder (libjpeg-turbo, the same pixels as PIL's)."""
    try:
        with warnings.catch_warnings():  # torchvision 0.29 announces that TorchCodec will take its decoders over
            warnings.simplefilter("ignore", DeprecationWarning)
            pixels = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError as err:  # libjpeg's errors; decode_image turns OSError into one line naming the file
        raise OSError("corrupt or truncated JPEG data") from err
    return pixels.permute(1, 2, 0)  # H, W, C


class TorchRandomResizedCrop(RandomResizedCropAndInterpolation):
    """timm's RandomResizedCrop with the same draws (crop, then interpolation), resized by torch; with
    `flip_p` it also takes the place of the RandomHorizontalFlip that follows it, drawing the flip from torch's
    generator as that does and mirroring the resized pixels before they become a PIL image (an exact mirror).

    As the dataset's decoder (`decode`) it draws the crop from the image header, then decodes a JPEG by
    torchvision's faster decoder, or at 1/2, 1/4 or 1/8 scale by PIL when the crop keeps at least the
    output size at that scale.
    """

    flip_p = 0.0

    def _draw(self, img: Image.Image) -> tuple[tuple[int, int, int, int], InterpolationMode]:
        crop = self.get_params(img, self.scale, self.ratio)
        interpolation = self.interpolation
        if isinstance(interpolation, (tuple, list)):
            interpolation = random.choice(interpolation)
        return crop, interpolation

    def _reduction(self, crop: tuple[int, int, int, int]) -> int:
        """The largest JPEG decoding scale-down (1, 2, 4 or 8) that keeps the crop at least the output size."""
        reduction = 1
        while reduction < 8 and min(crop[2:]) >= 2 * reduction * max(self.size):
            reduction *= 2
        return reduction

    def decode(self, source: io.BytesIO | str) -> PlannedCrop:
        """Decode an image file for this crop: the crop is drawn from the header before the pixels are read."""
        if isinstance(source, io.BytesIO):
            data = source.getvalue()
        else:
            with open(source, "rb") as file:
                data = file.read()
        header = jpeg_header(data)
        if header is not None and header[2] in (1, 3) and header[0] * header[1] <= Image.MAX_IMAGE_PIXELS:
            crop, interpolation = self._draw(torch.empty(()).expand(1, header[1], header[0]))  # the size only
            if self._reduction(crop) == 1:
                return PlannedCrop(_decode_jpeg(data), crop, interpolation)
        else:
            crop = interpolation = None
        with Image.open(io.BytesIO(data)) as img:  # other formats, and JPEGs decoded at reduced scale
            if crop is None:
                crop, interpolation = self._draw(img)
            full_size = img.size
            if img.format == "JPEG":
                reduction = self._reduction(crop)
                img.draft("RGB", (img.size[0] // reduction, img.size[1] // reduction))
            rgb = rgb_image(img)
        if rgb.size != full_size:  # decoded at reduced scale: the crop's edges in its pixels
            sx, sy = rgb.size[0] / full_size[0], rgb.size[1] / full_size[1]
            top, left = round(crop[0] * sy), round(crop[1] * sx)
            crop = top, left, round((crop[0] + crop[2]) * sy) - top, round((crop[1] + crop[3]) * sx) - left
        return PlannedCrop(torch.from_numpy(np.array(rgb)), crop, interpolation)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", flip_p={self.flip_p})"

    def __call__(self, img: Image.Image | PlannedCrop) -> Image.Image:
        if isinstance(img, PlannedCrop):
            (i, j, h, w), interpolation = img.crop, img.interpolation
            crop = img.pixels[i:i + h, j:j + w]  # h, w, C
        else:
            (i, j, h, w), interpolation = self._draw(img)
            crop = torch.from_numpy(np.array(img.crop((j, i, j + w, i + h))))  # h, w, C
        # 1, C, h, w stored channels-last: torch's uint8 kernels then resize in that layout and return it, so the
        # result is already the H, W, C array PIL takes (a crop view of the image is not channels-last contiguous)
        crop = crop.permute(2, 0, 1).unsqueeze(0).contiguous(memory_format=torch.channels_last)
        exact = interpolation == InterpolationMode.NEAREST
        resized = F.interpolate(crop, size=self.size, mode=interpolation.value, antialias=not exact)  # 1, C, H, W
        if self.flip_p and torch.rand(1) < self.flip_p:
            resized = resized.flip(3)
        return Image.fromarray(resized[0].permute(1, 2, 0).contiguous().numpy())  # H, W, C


class TorchBackendCompose(transforms.Compose):
    """The torch backend's training transform; datasets decode images with its `decode`."""

    def decode(self, source: io.BytesIO | str) -> Image.Image | PlannedCrop:
        first = self.transforms[0]
        if isinstance(first, TorchRandomResizedCrop):
            return first.decode(source)
        return open_rgb(source)


def resample_rows(pixels: torch.Tensor, offsets: np.ndarray, fill: int) -> torch.Tensor:
    """Each row r resampled at x + offsets[r] as PIL's bicubic affine transform samples it.

    Pixels are packed four bytes to an int32 (PIL's own RGBX layout), so the taps are gathered one word per
    pixel and the fill is one word. What is per row (shifts, weights, the span of outputs inside the source)
    is computed by numpy, whose calls cost a microsecond where torch's cost ten; the float result goes back to
    bytes by numpy, whose cast is several times faster than torch's float-to-uint8 conversion.

    Args:
        pixels: R, L int32 packed pixels.
        offsets: R float64 shifts in pixels (positive reads from the right).
        fill: the packed colour of outputs whose source lies outside the row.

    Returns:
        R, L int32 packed pixels.
    """
    R, L = pixels.shape
    offsets = np.asarray(offsets, dtype=np.float64)
    shift = np.floor(offsets)
    d = offsets - shift  # R, the fraction of each shift
    weights = np.stack([-d * (1 - d) ** 2, 1 - 2 * d ** 2 + d ** 3, d * (1 + d - d ** 2), -d ** 2 * (1 - d)], 1)
    weights = torch.from_numpy(weights.astype(np.float32)).view(R, 4, 1, 1)  # PIL's cubic with a = -1, taps -1..2
    span = np.clip(np.arange(-1, L + 2, dtype=np.int32) + shift.astype(np.int32)[:, None], 0, L - 1)  # R, L+3
    span += np.arange(0, R * L, L, dtype=np.int32)[:, None]  # flat index: each row's taps, edges clamped
    taps = pixels.reshape(R * L).index_select(0, torch.from_numpy(span).view(-1))
    taps = taps.view(torch.uint8).view(R, L + 3, 4).float()
    out = taps[:, 0:L] * weights[:, 0]  # R, L, 4
    for k in (1, 2, 3):
        out.addcmul_(taps[:, k:k + L], weights[:, k])
    resampled = out.clamp_(0, 255).numpy().astype(np.uint8).view(np.int32).reshape(R, L)
    # outputs whose source x + 1/2 + offset lies in [0, L): columns first..last-1 of each row
    first = np.clip(np.ceil(-0.5 - offsets), 0, L).astype(np.int32)[:, None]
    last = np.clip(np.ceil(L - 0.5 - offsets), 0, L).astype(np.int32)[:, None]
    columns = np.arange(L, dtype=np.int32)
    return torch.from_numpy(np.where((columns >= first) & (columns < last), resampled, np.int32(fill)))


def pack_rgb(img: Image.Image) -> torch.Tensor:
    """H, W int32: an RGB image's pixels four bytes each (R, G, B, 0), as PIL keeps them."""
    return torch.frombuffer(bytearray(img.tobytes("raw", "RGBX")), dtype=torch.int32).view(img.size[1], img.size[0])


def unpack_rgb(pixels: torch.Tensor) -> Image.Image:
    """The RGB image of H, W int32 packed pixels."""
    return Image.frombytes("RGB", (pixels.shape[1], pixels.shape[0]), pixels.contiguous().numpy().tobytes(),
                           "raw", "RGBX")


def pack_colour(colour: tuple[int, ...]) -> int:
    """An RGB colour as one packed pixel."""
    return int(torch.tensor([*colour[:3], 0], dtype=torch.uint8).view(torch.int32))


def _warp(img: Image.Image, along_columns: bool, offset: Callable[[np.ndarray], np.ndarray],
          fillcolor: tuple[int, ...]) -> Image.Image:
    """Resample every row (or column) r of the image at x + offset(r)."""
    pixels = pack_rgb(img)  # H, W
    if along_columns:
        pixels = pixels.t()  # W, H
    lines = np.arange(pixels.shape[0], dtype=np.float64)
    out = resample_rows(pixels, offset(lines), pack_colour(tuple(fillcolor)))
    return unpack_rgb(out.t() if along_columns else out)


def _one_dimensional(pil_op: Callable, along_columns: bool, offset: Callable[[Image.Image, float, np.ndarray],
                                                                             np.ndarray]) -> Callable:
    """A RandAugment op with timm's signature: bicubic warps computed by `_warp`, other resampling by PIL.

    The interpolation is drawn (when timm's settings leave it random) exactly where timm draws it.
    """

    def op(img: Image.Image, magnitude: float, fillcolor: tuple[int, ...] = (0, 0, 0),
           resample: Any = Image.Resampling.BICUBIC, **_: object) -> Image.Image:
        if isinstance(resample, (list, tuple)):
            resample = random.choice(resample)
        if resample != Image.Resampling.BICUBIC or img.mode != "RGB":
            return pil_op(img, magnitude, fillcolor=fillcolor, resample=resample)
        return _warp(img, along_columns, lambda lines: offset(img, magnitude, lines), fillcolor)

    op.__name__ = pil_op.__name__
    op.__doc__ = f"timm's {pil_op.__name__}, a one-dimensional resampling when bicubic."
    return op


# PIL's affine matrices (1, f, 0, 0, 1, 0), (1, 0, 0, f, 1, 0), (1, 0, px, 0, 1, 0) and (1, 0, 0, 0, 1, px):
# row y read from x + f (y + 1/2), column x from y + f (x + 1/2), every row or column shifted by px.
shear_x = _one_dimensional(timm_auto_augment.shear_x, False, lambda img, factor, lines: factor * (lines + 0.5))
shear_y = _one_dimensional(timm_auto_augment.shear_y, True, lambda img, factor, lines: factor * (lines + 0.5))
translate_x_rel = _one_dimensional(timm_auto_augment.translate_x_rel, False,
                                   lambda img, pct, lines: np.full_like(lines, pct * img.size[0]))
translate_y_rel = _one_dimensional(timm_auto_augment.translate_y_rel, True,
                                   lambda img, pct, lines: np.full_like(lines, pct * img.size[1]))
ONE_DIMENSIONAL_OPS = {  # timm's op -> its one-dimensional version above
    timm_auto_augment.shear_x: shear_x,
    timm_auto_augment.shear_y: shear_y,
    timm_auto_augment.translate_x_rel: translate_x_rel,
    timm_auto_augment.translate_y_rel: translate_y_rel,
}


def use_torch_backend(transform: transforms.Compose) -> TorchBackendCompose:
    """The training transform with its RandomResizedCrop, and the horizontal flip right after it, swapped for
    TorchRandomResizedCrop, every setting and random draw kept (build_transform also points RandAugment at
    ONE_DIMENSIONAL_OPS)."""
    steps = list(transform.transforms)
    at = next((i for i, step in enumerate(steps) if isinstance(step, RandomResizedCropAndInterpolation)), None)
    if at is not None:
        swapped = TorchRandomResizedCrop(steps[at].size, steps[at].scale, steps[at].ratio)
        swapped.interpolation = steps[at].interpolation
        if at + 1 < len(steps) and type(steps[at + 1]) is transforms.RandomHorizontalFlip:
            swapped.flip_p = steps.pop(at + 1).p
        steps[at] = swapped
    return TorchBackendCompose(steps)
