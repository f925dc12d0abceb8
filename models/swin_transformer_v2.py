"""Swin Transformer V2: scaled cosine attention, log-spaced continuous position bias, res-post-norm.

Liu et al., "Swin Transformer V2: Scaling Up Capacity and Resolution", CVPR 2022. Names, shapes
and initialisation follow the paper's reference code, so its checkpoints load as they are; the
position-bias MLP works on normalised coordinates, so it transfers across window sizes as it is.
"""

import math
from typing import Optional

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from models.hierarchy import BasicLayer, Mlp, SwinClassifier, concat_2x2, fit_window, init_weights, window_block_flops
from models.swin_transformer import PatchMerging as PatchMergingV1
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

# The learned temperature is capped at 100 (logit_scale <= log 100), as in the paper.
_MAX_LOGIT_SCALE = math.log(100.0)


def log_spaced_coords(window_size: tuple[int, int], pretrained_window_size: tuple[int, int]) -> torch.Tensor:
    """Relative offsets of a window, normalised by the (pretrained) window and log-spaced: 1, 2Wh-1, 2Ww-1, 2."""
    Wh, Ww = window_size
    norm_h, norm_w = pretrained_window_size if pretrained_window_size[0] > 0 else window_size
    dh = torch.arange(-(Wh - 1), Wh, dtype=torch.float32) / max(norm_h - 1, 1)
    dw = torch.arange(-(Ww - 1), Ww, dtype=torch.float32) / max(norm_w - 1, 1)
    table = torch.stack(torch.meshgrid(dh, dw, indexing="ij")).permute(1, 2, 0).unsqueeze(0) * 8  # in [-8, 8]
    return torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)


class WindowAttention(nn.Module):
    """Window attention with cosine similarity, a learned per-head temperature and a continuous bias."""

    def __init__(
        self,
        dim: int,
        window_size: tuple[int, int],
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        pretrained_window_size: tuple[int, int] = (0, 0),
        attn_impl: str = "auto",
    ) -> None:
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.pretrained_window_size = pretrained_window_size
        self.num_heads = num_heads
        self.attn_impl = attn_impl
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones((num_heads, 1, 1))))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, 512, bias=True), nn.ReLU(inplace=True),
                                     nn.Linear(512, num_heads, bias=False))
        self.register_buffer("relative_coords_table", log_spaced_coords(window_size, pretrained_window_size))
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def relative_position_bias(self) -> torch.Tensor:
        """16 * sigmoid of the MLP's bias for every query/key pair: nH, N, N."""
        N = self.window_size[0] * self.window_size[1]
        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)  # (2Wh-1)*(2Ww-1), nH
        bias = table[self.relative_position_index.view(-1)].view(N, N, -1).permute(2, 0, 1)  # nH, N, N
        return 16 * torch.sigmoid(bias)

    def forward(self, x: torch.Tensor, shift_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        B_, N, C = x.shape
        bias = None
        if self.q_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))  # no key bias
        qkv = F.linear(x, self.qkv.weight, bias).view(B_, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each nW*B, nH, N, hd
        temperature = torch.clamp(self.logit_scale, max=_MAX_LOGIT_SCALE).exp()  # nH, 1, 1
        q = F.normalize(q, dim=-1) * temperature
        k = F.normalize(k, dim=-1)
        mask = combine_masks(self.relative_position_bias(), shift_mask)
        x = window_attention(q, k, v, mask, 1.0, self.attn_drop if self.training else 0.0, self.attn_impl)
        return self.proj_drop(self.proj(x))

    def flops(self, N: int) -> int:
        head_dim = self.dim // self.num_heads
        return N * self.dim * 3 * self.dim + 2 * self.num_heads * N * head_dim * N + N * self.dim * self.dim


class SwinTransformerBlock(nn.Module):
    """Window attention and MLP, each normalised after the branch (res-post-norm) before the residual."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        num_heads: int,
        window_size: int,
        shift_size: int,
        mlp_ratio: float,
        drop_path: float,
        attn_options: dict,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        self.mlp_ratio = mlp_ratio
        window_size, shift_size = fit_window(input_resolution, window_size, shift_size)
        self.window_size = window_size
        self.shift_size = shift_size
        pretrained = attn_options.pop("pretrained_window_size", 0)
        # Registered in the reference's order, so a reference checkpoint's optimizer state (matched by position)
        # lands on the right tensors, although the norms apply after their branch here.
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, (window_size, window_size), num_heads,
                                    pretrained_window_size=(pretrained, pretrained), **attn_options)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=attn_options.get("proj_drop", 0.0))
        attn_mask = make_shift_mask(input_resolution, window_size, shift_size) if shift_size else None
        self.register_buffer("attn_mask", attn_mask)
        register_window_orders(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        y = pad_to_windows(x, self.window_size)  # B, Hp, Wp, C
        Hp, Wp = y.shape[1:3]
        windows = self.attn(to_windows(self, y), shift_mask_for(self, Hp, Wp, x.device))  # nW*B, Ws*Ws, C
        y = from_windows(self, windows, Hp, Wp)  # B, Hp, Wp, C
        x = x + self.drop_path(self.norm1(y[:, :H, :W, :]))
        return x + self.drop_path(self.norm2(self.mlp(x)))

    def flops(self) -> int:
        return window_block_flops(self)


class PatchMerging(PatchMergingV1):
    """2x2 neighbours concatenated, projected 4C -> 2C, then normalised (V2 order)."""

    def __init__(self, input_resolution: tuple[int, int], dim: int) -> None:
        super().__init__(input_resolution, dim)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(concat_2x2(x)))  # B, H/2, W/2, 2C

    def flops(self) -> int:
        H, W = self.input_resolution
        return (H // 2) * (W // 2) * 4 * self.dim * 2 * self.dim + H * W * self.dim // 2


def init_respostnorm(layer: BasicLayer) -> None:
    """Zero the post-norm gains of a stage's blocks, so every block starts as the identity."""
    for block in layer.blocks:
        for norm in (block.norm1, block.norm2):
            nn.init.constant_(norm.bias, 0)
            nn.init.constant_(norm.weight, 0)


class SwinTransformerV2(SwinClassifier):
    """The Swin V2 classifier: patch embedding, stages of V2 blocks, norm, average pool, linear head."""

    def __init__(
        self,
        img_size: int = 256,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 96,
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (3, 6, 12, 24),
        window_size: int = 8,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        ape: bool = False,
        patch_norm: bool = True,
        use_checkpoint: bool = False,
        pretrained_window_sizes: tuple[int, ...] = (0, 0, 0, 0),
        attn_impl: str = "auto",
    ) -> None:
        def build_stage(i: int, dim: int, resolution: tuple[int, int], rates: tuple[float, ...],
                        merge: bool) -> BasicLayer:
            options = dict(qkv_bias=qkv_bias, proj_drop=drop_rate, attn_impl=attn_impl,
                           pretrained_window_size=pretrained_window_sizes[i])
            blocks = [SwinTransformerBlock(dim, resolution, num_heads[i], window_size,
                                           0 if j % 2 == 0 else window_size // 2, mlp_ratio, rate, dict(options))
                      for j, rate in enumerate(rates)]
            return BasicLayer(dim, resolution, blocks, PatchMerging(resolution, dim) if merge else None)

        super().__init__(img_size, patch_size, in_chans, num_classes, embed_dim, depths, drop_rate, drop_path_rate,
                         ape, patch_norm, build_stage)
        self.apply(init_weights)
        for layer in self.layers:
            init_respostnorm(layer)
        self.set_grad_checkpointing(use_checkpoint)

    @torch.jit.ignore
    def no_weight_decay_keywords(self) -> set[str]:
        return {"cpb_mlp", "logit_scale", "relative_position_bias_table"}
