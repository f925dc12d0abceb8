"""SimMIM pre-training samples: the reference's crop and random patch masks over any image source, labels dropped."""

import math
from typing import Callable

import torch
from torch.utils.data import Dataset
from torchvision import transforms
from yacs.config import CfgNode

from configuration.checks import architecture_group
from data.transforms import ToNormalizedTensor


class MaskGenerator:
    """A random `mask_patch_size` grid over the image with ceil(ratio x cells) cells masked, given at the
    model's patch resolution (each cell repeated over the model patches it covers), as the reference draws it.

    Draws from torch's global generator, which the loader seeds per sample for exact resumption.
    """

    def __init__(self, input_size: int, mask_patch_size: int, model_patch_size: int, mask_ratio: float) -> None:
        self.cells = input_size // mask_patch_size
        self.scale = mask_patch_size // model_patch_size
        self.mask_count = math.ceil(self.cells**2 * mask_ratio)

    def __call__(self) -> torch.Tensor:
        mask = torch.zeros(self.cells**2, dtype=torch.bool)
        mask[torch.randperm(self.cells**2)[: self.mask_count]] = True
        mask = mask.view(self.cells, self.cells)  # g, g
        return mask.repeat_interleave(self.scale, 0).repeat_interleave(self.scale, 1)  # H/p, W/p


def build_mask_generator(config: CfgNode) -> MaskGenerator:
    """The masks of DATA.MASK_PATCH_SIZE and DATA.MASK_RATIO over the model's patches at DATA.IMG_SIZE."""
    patch_size = config.MODEL[architecture_group(config)].PATCH_SIZE
    return MaskGenerator(config.DATA.IMG_SIZE, config.DATA.MASK_PATCH_SIZE, patch_size, config.DATA.MASK_RATIO)


def build_simmim_transform(img_size: int) -> Callable:
    """The reference's pre-training view: random resized crop (scale 0.67-1, ratio 3/4-4/3), flip, normalise."""
    return transforms.Compose([
        transforms.RandomResizedCrop(img_size, scale=(0.67, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)),
        transforms.RandomHorizontalFlip(),
        ToNormalizedTensor(),
    ])


class MaskedImages(Dataset):
    """(image, mask) pairs from a dataset of (image, label): the label is dropped, a fresh mask drawn per sample."""

    def __init__(self, dataset: Dataset, masks: MaskGenerator) -> None:
        self.dataset = dataset
        self.masks = masks
        self.classes = getattr(dataset, "classes", [])

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, _ = self.dataset[index]
        return image, self.masks()
