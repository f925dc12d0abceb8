"""Swin Transformer (V1): hierarchical vision transformer with shifted windows.

Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows", ICCV 2021.
The parameter and buffer names, shapes and initialisation are those of the paper's reference
code, so its published checkpoints load as they are. Tokens travel as B, H, W, C between
blocks, which saves the reshapes the reference does around every window operation.
"""

from typing import Optional

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import DropPath, trunc_normal_
from torch import nn

from models.window_ops import (
    combine_masks,
    make_shift_mask,
    pad_to_windows,
    relative_position_index,
    window_attention,
    window_partition,
    window_reverse,
)


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


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative position bias.

    The bias table holds one value per head for each of the (2Wh-1)(2Ww-1) relative offsets;
    `relative_position_index` picks the entry for every query/key pair of a window.
    """

    def __init__(
        self,
        dim: int,
        window_size: tuple[int, int],
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        attn_impl: str = "auto",
    ) -> None:
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.attn_impl = attn_impl
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size[0] - 1) * (2 * window_size[1] - 1), num_heads)
        )
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self) -> torch.Tensor:
        """The bias added to the attention logits of every window."""
        N = self.window_size[0] * self.window_size[1]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]  # N*N, nH
        return bias.view(N, N, -1).permute(2, 0, 1)  # nH, N, N

    def forward(self, x: torch.Tensor, shift_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Attend within each window.

        Args:
            x: windows, nW*B, N, C (window-major inside each image).
            shift_mask: 0 / -100 mask of the shifted windows, nW, N, N, or None.
        """
        B_, N, C = x.shape
        qkv = self.qkv(x).view(B_, N, 3, self.num_heads, C // self.num_heads)  # nW*B, N, 3, nH, hd
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each nW*B, nH, N, hd
        mask = combine_masks(self.relative_position_bias(), shift_mask)
        x = window_attention(q, k, v, mask, self.scale, self.attn_drop if self.training else 0.0, self.attn_impl)
        return self.proj_drop(self.proj(x))

    def flops(self, N: int) -> int:
        """Multiply-accumulates for one window of N tokens, counted as the reference does."""
        head_dim = self.dim // self.num_heads
        qkv = N * self.dim * 3 * self.dim
        scores = self.num_heads * N * head_dim * N
        weighted = self.num_heads * N * N * head_dim
        return qkv + scores + weighted + N * self.dim * self.dim


class SwinTransformerBlock(nn.Module):
    """Window attention (shifted every other block) and an MLP, each with pre-norm and a residual."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        num_heads: int,
        window_size: int = 7,
        shift_size: int = 0,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        attn_options: Optional[dict] = None,
    ) -> None:
        super().__init__()
        attn_options = attn_options or {}
        self.dim = dim
        self.input_resolution = input_resolution
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        if min(input_resolution) <= window_size:
            # A window that covers the whole map needs no shift, as in the reference.
            shift_size, window_size = 0, min(input_resolution)
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, (window_size, window_size), num_heads, **attn_options)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=attn_options.get("proj_drop", 0.0))
        attn_mask = make_shift_mask(input_resolution, window_size, shift_size) if shift_size else None
        self.register_buffer("attn_mask", attn_mask)

    def _shift_mask(self, Hp: int, Wp: int, device: torch.device) -> Optional[torch.Tensor]:
        if not self.shift_size:
            return None
        if (Hp, Wp) == tuple(self.input_resolution):
            return self.attn_mask
        return make_shift_mask((Hp, Wp), self.window_size, self.shift_size, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        shortcut = x
        x = pad_to_windows(self.norm1(x), self.window_size)  # B, Hp, Wp, C
        Hp, Wp = x.shape[1:3]
        if self.shift_size:
            x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
        windows = window_partition(x, self.window_size)  # nW*B, Ws*Ws, C
        windows = self.attn(windows, self._shift_mask(Hp, Wp, x.device))
        x = window_reverse(windows, self.window_size, Hp, Wp)  # B, Hp, Wp, C
        if self.shift_size:
            x = torch.roll(x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        x = shortcut + self.drop_path(x[:, :H, :W, :])
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def flops(self) -> int:
        H, W = self.input_resolution
        num_windows = H * W / self.window_size / self.window_size
        norms = 2 * self.dim * H * W
        mlp = 2 * H * W * self.dim * self.dim * self.mlp_ratio
        return int(norms + num_windows * self.attn.flops(self.window_size * self.window_size) + mlp)


class PatchMerging(nn.Module):
    """Halves the resolution and doubles the channels: 2x2 neighbours concatenated, normed, projected."""

    def __init__(self, input_resolution: tuple[int, int], dim: int) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.dim = dim
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))  # B, H', W', C with even H', W'
        H, W = x.shape[1:3]
        # The reference concatenates x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]: column parity
        # is the slower of the two neighbour axes, which the permute below reproduces in one copy.
        x = x.reshape(B, H // 2, 2, W // 2, 2, C)  # B, H/2, dh, W/2, dw, C
        x = x.permute(0, 1, 3, 4, 2, 5).reshape(B, H // 2, W // 2, 4 * C)  # B, H/2, W/2, 4C
        return self.reduction(self.norm(x))  # B, H/2, W/2, 2C

    def flops(self) -> int:
        H, W = self.input_resolution
        return H * W * self.dim + (H // 2) * (W // 2) * 4 * self.dim * 2 * self.dim


def forward_blocks(blocks: nn.ModuleList, x: torch.Tensor, use_checkpoint: bool) -> torch.Tensor:
    """Run `blocks` in turn; with `use_checkpoint`, recompute each one's activations in the backward pass."""
    for block in blocks:
        if use_checkpoint and torch.is_grad_enabled():
            x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
        else:
            x = block(x)
    return x


class BasicLayer(nn.Module):
    """One stage: `depth` blocks alternating plain and shifted windows, then an optional PatchMerging."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        drop_path: tuple[float, ...],
        downsample: bool,
        attn_options: dict,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        self.use_checkpoint = False
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                dim,
                input_resolution,
                num_heads,
                window_size,
                shift_size=0 if i % 2 == 0 else window_size // 2,
                mlp_ratio=mlp_ratio,
                drop_path=drop_path[i],
                attn_options=attn_options,
            )
            for i in range(depth)
        )
        self.downsample = PatchMerging(input_resolution, dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = forward_blocks(self.blocks, x, self.use_checkpoint)
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


class SwinTransformer(nn.Module):
    """The Swin Transformer classifier: patch embedding, four stages, norm, average pool, linear head."""

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
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        ape: bool = False,
        patch_norm: bool = True,
        use_checkpoint: bool = False,
        attn_impl: str = "auto",
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_layers = len(depths)
        self.embed_dim = embed_dim
        self.ape = ape
        self.num_features = int(embed_dim * 2 ** (self.num_layers - 1))
        self.mlp_ratio = mlp_ratio
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, patch_norm)
        resolution = self.patch_embed.patches_resolution
        self.patches_resolution = resolution
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dim))
            trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(p=drop_rate)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()  # stochastic depth grows linearly
        attn_options = dict(qkv_bias=qkv_bias, qk_scale=qk_scale, proj_drop=drop_rate, attn_impl=attn_impl)
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            self.layers.append(
                BasicLayer(
                    dim=embed_dim * 2**i,
                    input_resolution=(resolution[0] // 2**i, resolution[1] // 2**i),
                    depth=depth,
                    num_heads=num_heads[i],
                    window_size=window_size,
                    mlp_ratio=mlp_ratio,
                    drop_path=tuple(rates[sum(depths[:i]) : sum(depths[: i + 1])]),
                    downsample=i < self.num_layers - 1,
                    attn_options=attn_options,
                )
            )
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(init_weights)
        self.set_grad_checkpointing(use_checkpoint)

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

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images B, 3, H, W to pooled features B, num_features."""
        x = self.patch_embed(x)  # B, H/p, W/p, C
        if self.ape:
            x = self._add_position_embedding(x)
        x = self.pos_drop(x)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x).mean(dim=(1, 2))  # B, num_features

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


def init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.constant_(module.bias, 0)
    elif isinstance(module, nn.LayerNorm):
        nn.init.constant_(module.bias, 0)
        nn.init.constant_(module.weight, 1.0)
