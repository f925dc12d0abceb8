"""The paper's training augmentation (through timm) and the evaluation resize and crop."""

from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageOps
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from timm.data import auto_augment as timm_auto_augment
from timm.data.transforms import MaybeToTensor, str_to_interp_mode
from torchvision import transforms
from yacs.config import CfgNode

from data.fast_transforms import ONE_DIMENSIONAL_OPS, use_torch_backend


def posterize_keeping_zero_bits(img: Image.Image, bits_to_keep: int, **_: object) -> Image.Image:
    """Posterize that keeps `bits_to_keep` = 0 meaning a black image, as Pillow did before version 13.

    timm's RandAugment asks for 0 bits at magnitude 10 (rand-m9-mstd0.5 reaches it); Pillow 13
    raises ValueError there instead, which would stop a training epoch.
    """
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def replace_augment_ops(transform: transforms.Compose, replacements: dict[Callable, Callable]) -> None:
    """Point every RandAugment op of the transform whose function is a key of `replacements` at its value (timm's
    sampling of ops and magnitudes is kept; only how an op computes changes)."""
    for step in transform.transforms:
        for op in getattr(step, "ops", ()):
            op.aug_fn = replacements.get(op.aug_fn, op.aug_fn)


def fix_posterize(transform: transforms.Compose) -> None:
    """Point every Posterize op of the transform's RandAugment at `posterize_keeping_zero_bits`."""
    replace_augment_ops(transform, {timm_auto_augment.posterize: posterize_keeping_zero_bits})


class ToNormalizedTensor:
    """A PIL RGB image to the normalised C, H, W float tensor of ToTensor then Normalize (equal within fp32
    rounding) in one pass over the pixels instead of three: about a fifth of their time per image."""

    def __init__(self, mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
                 std: tuple[float, ...] = IMAGENET_DEFAULT_STD) -> None:
        self.mean, self.std = tuple(mean), tuple(std)
        self.scale = 1.0 / (255.0 * torch.tensor(self.std).view(-1, 1, 1))  # C, 1, 1
        self.shift = torch.tensor(self.mean).view(-1, 1, 1) / torch.tensor(self.std).view(-1, 1, 1)  # C, 1, 1

    def __call__(self, img: Image.Image) -> torch.Tensor:
        pixels = torch.from_numpy(np.array(img, dtype=np.uint8))  # H, W, C
        tensor = pixels.permute(2, 0, 1).to(torch.float32, memory_format=torch.contiguous_format)  # C, H, W
        return tensor.mul_(self.scale).sub_(self.shift)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


def _one_pass_to_tensor(transform: transforms.Compose) -> None:
    """Replace the training transform's ToTensor + Normalize pair by ToNormalizedTensor."""
    steps = transform.transforms
    at = next(i for i, step in enumerate(steps) if isinstance(step, MaybeToTensor))
    normalize = steps[at + 1]
    steps[at:at + 2] = [ToNormalizedTensor(tuple(normalize.mean.tolist()), tuple(normalize.std.tolist()))]


class ResizeIfOtherSize:
    """Resize to `size` x `size` only images of another size: at 32px and below the reference crops and
    evaluates without resizing, which breaks (or cannot batch) images that are not already that size."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, img: Image.Image) -> Image.Image:
        if img.size == (self.size, self.size):
            return img
        return img.resize((self.size, self.size), Image.Resampling.BICUBIC)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


def build_transform(is_train: bool, config: CfgNode) -> Callable:
    """Training: RandomResizedCrop, flip, RandAugment, colour jitter, random erasing (at 32px and below
    RandomCrop with padding 4, unless AUG.SMALL_IMAGE_CROP is random_resized); DATA.TRANSFORM_BACKEND torch
    resizes the random crop with torch instead of PIL. Evaluation: resize to
    256/224 of the size and center crop, or resize straight to the size when TEST.CROP is False."""
    img_size = config.DATA.IMG_SIZE
    resize_im = img_size > 32
    if is_train:
        aug = config.AUG
        transform = create_transform(
            input_size=img_size,
            is_training=True,
            color_jitter=aug.COLOR_JITTER if aug.COLOR_JITTER > 0 else None,
            auto_augment=aug.AUTO_AUGMENT if aug.AUTO_AUGMENT != "none" else None,
            re_prob=aug.REPROB,
            re_mode=aug.REMODE,
            re_count=aug.RECOUNT,
            interpolation=config.DATA.INTERPOLATION,
        )
        fix_posterize(transform)
        _one_pass_to_tensor(transform)
        if not resize_im and aug.SMALL_IMAGE_CROP == "pad":
            # The reference's CIFAR crop; images of another size are first brought to the configured one.
            transform.transforms[0:1] = [ResizeIfOtherSize(img_size), transforms.RandomCrop(img_size, padding=4)]
        if config.DATA.TRANSFORM_BACKEND == "torch":
            transform = use_torch_backend(transform)
            replace_augment_ops(transform, ONE_DIMENSIONAL_OPS)
        return transform
    steps = [] if resize_im else [ResizeIfOtherSize(img_size)]
    if resize_im:
        interpolation = str_to_interp_mode(config.DATA.INTERPOLATION if config.DATA.INTERPOLATION != "random"
                                           else "bicubic")
        if config.TEST.CROP:
            steps += [transforms.Resize(int(256 / 224 * img_size), interpolation=interpolation),
                      transforms.CenterCrop(img_size)]
        else:
            steps.append(transforms.Resize((img_size, img_size), interpolation=interpolation))
    steps.append(ToNormalizedTensor())
    return transforms.Compose(steps)
