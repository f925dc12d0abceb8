"""SimMIM: masked-image pre-training of Swin and Swin V2 encoders, without labels.

Xie et al., "SimMIM: A Simple Framework for Masked Image Modeling", CVPR 2022. A learned mask
token replaces the embedded patches under the mask; the encoder's last feature map goes
through a one-layer decoder (a 1x1 convolution to stride^2 x 3 channels, then a pixel shuffle)
back to pixels, and the loss is the L1 distance on the masked pixels only. The names are the
reference's (`encoder.*`, `encoder.mask_token`, `decoder.0.*`), so its published pre-training
weights load here and fine-tune into the classifiers.
"""

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from models.hierarchy import SwinClassifier


def local_statistics(images: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation (unbiased, +1e-6 under the root) of each pixel's `window` x `window`
    neighbourhood, per channel; neighbourhoods are cut at the border."""
    pad = window // 2
    mean = F.avg_pool2d(images, window, stride=1, padding=pad, count_include_pad=False)
    square_mean = F.avg_pool2d(images**2, window, stride=1, padding=pad, count_include_pad=False)
    count = F.avg_pool2d(torch.ones_like(images), window, stride=1, padding=pad, count_include_pad=True) * window**2
    variance = ((square_mean - mean**2) * (count / (count - 1))).clamp(min=0.0)
    return mean, (variance + 1e-6).sqrt()


def normalized_target(images: torch.Tensor, window: int) -> torch.Tensor:
    """Each pixel standardised by the statistics of its neighbourhood: the reference's normalised-pixel
    target (MODEL.SIMMIM.NORM_TARGET), which makes the model learn structure rather than brightness."""
    mean, std = local_statistics(images, window)
    return (images - mean) / std


def masked_l1(prediction: torch.Tensor, target: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the masked pixels of every channel; images B, C, H, W and mask B, 1, H, W."""
    total = ((prediction - target).abs() * pixel_mask).sum()
    return total / (pixel_mask.sum() + 1e-5) / prediction.shape[1]


def pixel_mask(mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """A patch mask B, H/p, W/p spread to the pixels it covers: B, 1, H, W."""
    return mask.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2).unsqueeze(1)  # B, 1, H, W


class SimMIM(nn.Module):
    """A Swin-family encoder (built without a head) with a mask token and a pixel decoder.

    `forward(images, mask)` returns the loss, so the training loop (and DDP) treat it as a model
    whose output is what to minimise; `reconstruct` gives the predicted pixels.
    """

    def __init__(self, encoder: SwinClassifier, norm_target_window: int = 0) -> None:
        super().__init__()
        if encoder.num_classes != 0:
            raise ValueError("the SimMIM encoder must be built without a classifier head (num_classes 0)")
        self.encoder = encoder
        # On the encoder, registered after its own parameters, where the reference keeps it.
        encoder.mask_token = nn.Parameter(torch.zeros(1, 1, encoder.embed_dim))
        trunc_normal_(encoder.mask_token, mean=0.0, std=0.02)
        self.patch_size = encoder.patch_embed.patch_size[0]
        self.in_chans = encoder.patch_embed.in_chans
        self.encoder_stride = self.patch_size * 2 ** (encoder.num_layers - 1)
        self.decoder = nn.Sequential(
            nn.Conv2d(encoder.num_features, self.encoder_stride**2 * self.in_chans, kernel_size=1),
            nn.PixelShuffle(self.encoder_stride),
        )
        self.norm_target_window = norm_target_window

    def reconstruct(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pixels B, 3, H, W predicted from `images` with the patches where `mask` (B, H/p, W/p) is set hidden."""
        x = self.encoder.patch_embed(images)  # B, H/p, W/p, C
        hidden = mask.unsqueeze(-1).to(x.dtype)  # B, H/p, W/p, 1
        x = x * (1.0 - hidden) + self.encoder.mask_token.to(x.dtype) * hidden
        features = self.encoder.forward_feature_map(x).permute(0, 3, 1, 2)  # B, num_features, H/s, W/s
        return self.decoder(features)  # B, 3, H, W

    def target(self, images: torch.Tensor) -> torch.Tensor:
        """What the decoder learns to output: the pixels, or their normalised form (MODEL.SIMMIM.NORM_TARGET)."""
        return normalized_target(images, self.norm_target_window) if self.norm_target_window else images

    def loss(self, images: torch.Tensor, mask: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
        """The L1 distance of `prediction` (from `reconstruct`) to the target over the masked pixels, a scalar."""
        return masked_l1(prediction.float(), self.target(images.float()), pixel_mask(mask, self.patch_size).float())

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The training objective: the reconstruction loss of `images` with `mask` hidden."""
        return self.loss(images, mask, self.reconstruct(images, mask))

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{name}" for name in self.encoder.no_weight_decay()} | {"encoder.mask_token"}

    @torch.jit.ignore
    def no_weight_decay_keywords(self) -> set[str]:
        # Matched anywhere in a name, so without the prefix: the reference prefixes them with `encoder.`, which
        # never matches, and decays its bias tables in pre-training although it exempts them everywhere else.
        return set(self.encoder.no_weight_decay_keywords())
