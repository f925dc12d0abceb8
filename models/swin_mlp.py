"""Swin-MLP: the Swin hierarchy with attention replaced by a spatial MLP inside (shifted) windows.

From the paper's reference code. The spatial MLP is a grouped 1x1 Conv1d over the tokens of
a window, one group per head; the shift is done by zero padding instead of a cyclic roll, so
no mask is needed. Names and shapes follow the reference, so its checkpoints load as they are.
"""

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import nn

from models.swin_transformer import Mlp, PatchEmbed, PatchMerging, forward_blocks
from models.window_ops import pad_to_windows, window_partition, window_reverse


class SwinMLPBlock(nn.Module):
    """Spatial MLP over each window's tokens (per head), then the channel MLP; pre-norm residuals."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], num_heads: int, window_size: int,
                 shift_size: int, mlp_ratio: float, drop: float, drop_path: float) -> None:
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        if min(input_resolution) <= window_size:
            shift_size, window_size = 0, min(input_resolution)
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        tokens = num_heads * window_size**2
        self.spatial_mlp = nn.Conv1d(tokens, tokens, kernel_size=1, groups=num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def _spatial_mlp(self, windows: torch.Tensor) -> torch.Tensor:
        B_, N, C = windows.shape
        heads = windows.view(B_, N, self.num_heads, C // self.num_heads).transpose(1, 2)  # nW*B, nH, N, C/nH
        heads = self.spatial_mlp(heads.reshape(B_, self.num_heads * N, C // self.num_heads))  # nW*B, nH*N, C/nH
        return heads.view(B_, self.num_heads, N, C // self.num_heads).transpose(1, 2).reshape(B_, N, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        y = pad_to_windows(self.norm1(x), self.window_size)  # B, Hp, Wp, C
        lead, trail = self.window_size - self.shift_size, self.shift_size
        if self.shift_size:
            y = F.pad(y, (0, 0, lead, trail, lead, trail))  # B, Hp+Ws, Wp+Ws, C
        Hs, Ws = y.shape[1:3]
        y = window_reverse(self._spatial_mlp(window_partition(y, self.window_size)), self.window_size, Hs, Ws)
        if self.shift_size:
            y = y[:, lead:-trail, lead:-trail, :]  # B, Hp, Wp, C
        x = x + self.drop_path(y[:, :H, :W, :])
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def flops(self) -> int:
        H, W = self.input_resolution
        if self.shift_size:
            num_windows = (H / self.window_size + 1) * (W / self.window_size + 1)
        else:
            num_windows = H * W / self.window_size / self.window_size
        spatial = num_windows * self.dim * self.window_size**4
        return int(2 * self.dim * H * W + spatial + 2 * H * W * self.dim * self.dim * self.mlp_ratio)


class BasicLayer(nn.Module):
    """One stage of Swin-MLP blocks, then an optional PatchMerging."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], depth: int, num_heads: int, window_size: int,
                 mlp_ratio: float, drop: float, drop_path: tuple[float, ...], downsample: bool) -> None:
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        self.use_checkpoint = False
        self.blocks = nn.ModuleList(
            SwinMLPBlock(dim, input_resolution, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2,
                         mlp_ratio, drop, drop_path[i])
            for i in range(depth)
        )
        self.downsample = PatchMerging(input_resolution, dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = forward_blocks(self.blocks, x, self.use_checkpoint)
        return self.downsample(x) if self.downsample is not None else x

    def flops(self) -> int:
        total = sum(block.flops() for block in self.blocks)
        return total + (self.downsample.flops() if self.downsample is not None else 0)


class SwinMLP(nn.Module):
    """The Swin-MLP classifier."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 96,
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        ape: bool = False,
        patch_norm: bool = True,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_layers = len(depths)
        self.ape = ape
        self.num_features = int(embed_dim * 2 ** (self.num_layers - 1))
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, patch_norm)
        resolution = self.patch_embed.patches_resolution
        self.patches_resolution = resolution
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dim))
            trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(p=drop_rate)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList(
            BasicLayer(embed_dim * 2**i, (resolution[0] // 2**i, resolution[1] // 2**i), depth, num_heads[i],
                       window_size, mlp_ratio, drop_rate, tuple(rates[sum(depths[:i]) : sum(depths[: i + 1])]),
                       downsample=i < self.num_layers - 1)
            for i, depth in enumerate(depths)
        )
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)
        for layer in self.layers:
            layer.use_checkpoint = use_checkpoint

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"absolute_pos_embed"}

    @torch.jit.ignore
    def no_weight_decay_keywords(self) -> set[str]:
        return {"relative_position_bias_table"}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # B, H/p, W/p, C
        if self.ape:
            B, H, W, C = x.shape
            x = x + self.absolute_pos_embed.view(1, H, W, C)
        x = self.pos_drop(x)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x).mean(dim=(1, 2))  # B, num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def flops(self) -> int:
        total = self.patch_embed.flops() + sum(layer.flops() for layer in self.layers)
        Ho, Wo = self.patches_resolution
        total += self.num_features * Ho * Wo // (2**self.num_layers)
        return total + self.num_features * self.num_classes


def _init_weights(module: nn.Module) -> None:
    """The reference initialisation: truncated normal for linear and 1x1 conv weights, unit LayerNorms."""
    if isinstance(module, (nn.Linear, nn.Conv1d)):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.constant_(module.bias, 0)
    elif isinstance(module, nn.LayerNorm):
        nn.init.constant_(module.bias, 0)
        nn.init.constant_(module.weight, 1.0)
