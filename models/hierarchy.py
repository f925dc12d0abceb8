"""What the Swin families share around their blocks: patch embedding, stages, the classifier shell.

A family (V1, V2, MLP) supplies its block and merging classes; `SwinClassifier` lays them out
in stages of halving resolution and doubling width, with the reference module names
(`patch_embed`, `absolute_pos_embed`, `layers.i.blocks.j`, `layers.i.downsample`, `norm`, `head`).
"""

from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import trunc_normal_
from torch import nn


class Mlp(nn.Module):
    """Two-layer perceptron of the transformer block (fc1 -> GELU -> fc2)."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def fit_window(input_resolution: tuple[int, int], window_size: int, shift_size: int) -> tuple[int, int]:
    """(window, shift) for a stage: a window that covers the whole map needs no shift, as in the reference."""
    if min(input_resolution) <= window_size:
        return min(input_resolution), 0
    return window_size, shift_size


def concat_2x2(x: torch.Tensor) -> torch.Tensor:
    """B, H, W, C to B, H/2, W/2, 4C: each 2x2 neighbourhood concatenated (odd sizes zero-padded).

    The reference concatenates x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]: column
    parity is the slower of the two neighbour axes, which the permute reproduces in one copy.
    """
    B, H, W, C = x.shape
    x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))  # B, H', W', C with even H', W'
    H, W = x.shape[1:3]
    x = x.reshape(B, H // 2, 2, W // 2, 2, C)  # B, H/2, dh, W/2, dw, C
    return x.permute(0, 1, 3, 4, 2, 5).reshape(B, H // 2, W // 2, 4 * C)  # B, H/2, W/2, 4C


def window_block_flops(block: nn.Module) -> int:
    """Multiply-accumulates of a window-attention block as the reference counts them: norms, attention, MLP."""
    H, W = block.input_resolution
    num_windows = H * W / block.window_size / block.window_size
    attention = num_windows * block.attn.flops(block.window_size * block.window_size)
    return int(2 * block.dim * H * W + attention + 2 * H * W * block.dim * block.dim * block.mlp_ratio)


class BasicLayer(nn.Module):
    """One stage: its blocks, then an optional PatchMerging."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], blocks: list[nn.Module],
                 downsample: Optional[nn.Module]) -> None:
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        self.use_checkpoint = False
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.downsample(x) if self.downsample is not None else x

    def flops(self) -> int:
        total = sum(block.flops() for block in self.blocks)
        return total + (self.downsample.flops() if self.downsample is not None else 0)


class PatchEmbed(nn.Module):
    """Non-overlapping patches projected to `embed_dim` channels by a strided convolution."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, patch_norm: bool) -> None:
        super().__init__()
        self.img_size = (img_size, img_size)
        self.patch_size = (patch_size, patch_size)
        self.patches_resolution = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.patches_resolution[0] * self.patches_resolution[1]
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if patch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[2:]
        if H % self.patch_size[0] or W % self.patch_size[1]:
            raise ValueError(f"input size {H}x{W} is not a multiple of the patch size {self.patch_size[0]}")
        x = self.proj(x).permute(0, 2, 3, 1)  # B, H/p, W/p, C
        return self.norm(x) if self.norm is not None else x

    def flops(self) -> int:
        Ho, Wo = self.patches_resolution
        total = Ho * Wo * self.embed_dim * self.in_chans * self.patch_size[0] * self.patch_size[1]
        return total + (Ho * Wo * self.embed_dim if self.norm is not None else 0)


def init_weights(module: nn.Module) -> None:
    """The reference initialisation: truncated normal for linear (and 1x1 conv) weights, unit LayerNorms."""
    if isinstance(module, (nn.Linear, nn.Conv1d)):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.constant_(module.bias, 0)
    elif isinstance(module, nn.LayerNorm):
        nn.init.constant_(module.bias, 0)
        nn.init.constant_(module.weight, 1.0)


# Builds stage i from (i, dim, input resolution, its drop-path rates, whether a merging follows).
StageBuilder = Callable[[int, int, tuple[int, int], tuple[float, ...], bool], BasicLayer]


class SwinClassifier(nn.Module):
    """Patch embedding, optional absolute position embedding, stages, final norm, average pool, linear head."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, num_classes: int, embed_dim: int,
                 depths: tuple[int, ...], drop_rate: float, drop_path_rate: float, ape: bool, patch_norm: bool,
                 build_stage: StageBuilder) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_layers = len(depths)
        self.embed_dim = embed_dim
        self.ape = ape
        self.num_features = int(embed_dim * 2 ** (self.num_layers - 1))
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, patch_norm)
        self.patches_resolution = self.patch_embed.patches_resolution
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dim))
            trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(p=drop_rate)
        self.layers = nn.ModuleList(build_stage(*stage) for stage in self._stages(depths, drop_path_rate))
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _stages(self, depths: tuple[int, ...], drop_path_rate: float) -> Iterator[tuple]:
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()  # stochastic depth grows linearly
        Ho, Wo = self.patches_resolution
        for i, depth in enumerate(depths):
            stage_rates = tuple(rates[sum(depths[:i]) : sum(depths[: i + 1])])
            yield i, self.embed_dim * 2**i, (Ho // 2**i, Wo // 2**i), stage_rates, i < len(depths) - 1

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass, trading time for memory."""
        for layer in self.layers:
            layer.use_checkpoint = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"absolute_pos_embed"}

    @torch.jit.ignore
    def no_weight_decay_keywords(self) -> set[str]:
        return {"relative_position_bias_table"}

    def _add_position_embedding(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        Ho, Wo = self.patches_resolution
        pos = self.absolute_pos_embed.view(1, Ho, Wo, C)  # 1, Ho, Wo, C
        if (H, W) != (Ho, Wo):
            pos = F.interpolate(pos.permute(0, 3, 1, 2), size=(H, W), mode="bicubic", align_corners=False)
            pos = pos.permute(0, 2, 3, 1)  # 1, H, W, C
        return x + pos

    def forward_feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Embedded patches B, H/p, W/p, C through the stages to the normed map B, H/s, W/s, num_features.

        Separate from the patch embedding so SimMIM can put its mask token in between.
        """
        if self.ape:
            x = self._add_position_embedding(x)
        x = self.pos_drop(x)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images B, 3, H, W to pooled features B, num_features."""
        return self.forward_feature_map(self.patch_embed(x)).mean(dim=(1, 2))  # B, num_features

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def flops(self) -> int:
        """Multiply-accumulates of one image at the configured size, counted as the reference does."""
        total = self.patch_embed.flops() + sum(layer.flops() for layer in self.layers)
        Ho, Wo = self.patches_resolution
        total += self.num_features * Ho * Wo // (2**self.num_layers)
        return total + self.num_features * self.num_classes
