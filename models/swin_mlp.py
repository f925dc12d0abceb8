"""Swin-MLP: the Swin hierarchy with attention replaced by a spatial MLP inside (shifted) windows.

From the paper's reference code. The spatial MLP is a grouped 1x1 Conv1d over the tokens of
a window, one group per head; the shift is done by zero padding instead of a cyclic roll, so
no mask is needed. Names and shapes follow the reference, so its checkpoints load as they are.
"""

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from models.hierarchy import BasicLayer, Mlp, SwinClassifier, fit_window, init_weights
from models.swin_transformer import PatchMerging
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
        window_size, shift_size = fit_window(input_resolution, window_size, shift_size)
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


class SwinMLP(SwinClassifier):
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
        def build_stage(i: int, dim: int, resolution: tuple[int, int], rates: tuple[float, ...],
                        merge: bool) -> BasicLayer:
            blocks = [SwinMLPBlock(dim, resolution, num_heads[i], window_size, 0 if j % 2 == 0 else window_size // 2,
                                   mlp_ratio, drop_rate, rate)
                      for j, rate in enumerate(rates)]
            return BasicLayer(dim, resolution, blocks, PatchMerging(resolution, dim) if merge else None)

        super().__init__(img_size, patch_size, in_chans, num_classes, embed_dim, depths, drop_rate, drop_path_rate,
                         ape, patch_norm, build_stage)
        self.apply(init_weights)
        self.set_grad_checkpointing(use_checkpoint)
