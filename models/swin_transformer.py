"""Swin Transformer (V1): hierarchical vision transformer with shifted windows.

Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows", ICCV 2021.
The parameter and buffer names, shapes and initialisation are those of the paper's reference
code, so its published checkpoints load as they are. Tokens travel as B, H, W, C between
blocks, which saves the reshapes the reference does around every window operation.
"""

from typing import Optional

import torch
from timm.layers import DropPath, trunc_normal_
from torch import nn

from models.hierarchy import (
    BasicLayer,
    Mlp,
    SwinClassifier,
    concat_2x2,
    fit_window,
    init_weights,
    window_block_flops,
)
from models.window_ops import (
    combine_masks,
    from_windows,
    make_shift_mask,
    pad_to_windows,
    register_window_orders,
    relative_position_index,
    shift_mask_for,
    to_windows,
    window_attention,
)


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
        window_size, shift_size = fit_window(input_resolution, window_size, shift_size)
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, (window_size, window_size), num_heads, **attn_options)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=attn_options.get("proj_drop", 0.0))
        attn_mask = make_shift_mask(input_resolution, window_size, shift_size) if shift_size else None
        self.register_buffer("attn_mask", attn_mask)
        register_window_orders(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        shortcut = x
        x = pad_to_windows(self.norm1(x), self.window_size)  # B, Hp, Wp, C
        Hp, Wp = x.shape[1:3]
        windows = self.attn(to_windows(self, x), shift_mask_for(self, Hp, Wp, x.device))  # nW*B, Ws*Ws, C
        x = from_windows(self, windows, Hp, Wp)  # B, Hp, Wp, C
        x = shortcut + self.drop_path(x[:, :H, :W, :])
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def flops(self) -> int:
        return window_block_flops(self)


class PatchMerging(nn.Module):
    """Halves the resolution and doubles the channels: 2x2 neighbours concatenated, normed, projected."""

    def __init__(self, input_resolution: tuple[int, int], dim: int) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.dim = dim
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduction(self.norm(concat_2x2(x)))  # B, H/2, W/2, 2C

    def flops(self) -> int:
        H, W = self.input_resolution
        return H * W * self.dim + (H // 2) * (W // 2) * 4 * self.dim * 2 * self.dim


class SwinTransformer(SwinClassifier):
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
        attn_options = dict(qkv_bias=qkv_bias, qk_scale=qk_scale, proj_drop=drop_rate, attn_impl=attn_impl)

        def build_stage(i: int, dim: int, resolution: tuple[int, int], rates: tuple[float, ...],
                        merge: bool) -> BasicLayer:
            blocks = [SwinTransformerBlock(dim, resolution, num_heads[i], window_size,
                                           shift_size=0 if j % 2 == 0 else window_size // 2, mlp_ratio=mlp_ratio,
                                           drop_path=rate, attn_options=attn_options)
                      for j, rate in enumerate(rates)]
            return BasicLayer(dim, resolution, blocks, PatchMerging(resolution, dim) if merge else None)

        super().__init__(img_size, patch_size, in_chans, num_classes, embed_dim, depths, drop_rate, drop_path_rate,
                         ape, patch_norm, build_stage)
        self.mlp_ratio = mlp_ratio
        self.apply(init_weights)
        self.set_grad_checkpointing(use_checkpoint)
