"""Window operations shared by the Swin families: partition, shift mask, relative index, attention.

All of them are reshapes, index maps or one batched kernel call; nothing loops over windows.
"""

from typing import Optional

import torch
import torch.nn.functional as F


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """B, H, W, C feature map to nW*B, Ws*Ws, C windows (image-major, then row-major windows)."""
    B, H, W, C = x.shape
    x = x.view(B, H // window_size, window_size, W // window_size, window_size, C)  # B, nWh, Ws, nWw, Ws, C
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, C)  # nW*B, Ws*Ws, C


def window_reverse(windows: torch.Tensor, window_size: int, H: int, W: int) -> torch.Tensor:
    """nW*B, Ws*Ws, C windows back to the B, H, W, C feature map."""
    C = windows.shape[-1]
    x = windows.view(-1, H // window_size, W // window_size, window_size, window_size, C)  # B, nWh, nWw, Ws, Ws, C
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)  # B, H, W, C


def pad_to_windows(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """Zero-pad a B, H, W, C map at the bottom and right to whole windows (a no-op when they tile)."""
    H, W = x.shape[1:3]
    pad_h, pad_w = -H % window_size, -W % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))  # B, Hp, Wp, C
    return x


def relative_position_index(window_size: tuple[int, int]) -> torch.Tensor:
    """For each query/key pair of a window, the row of the relative position bias table (Wh*Ww, Wh*Ww)."""
    Wh, Ww = window_size
    coords = torch.stack(torch.meshgrid(torch.arange(Wh), torch.arange(Ww), indexing="ij")).flatten(1)  # 2, N
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # N, N, 2
    return (relative[..., 0] + Wh - 1) * (2 * Ww - 1) + (relative[..., 1] + Ww - 1)  # N, N


def make_shift_mask(
    resolution: tuple[int, int], window_size: int, shift_size: int, device: Optional[torch.device] = None
) -> torch.Tensor:
    """The -100 / 0 mask that stops shifted windows from attending across the cyclic roll (nW, N, N)."""
    H, W = resolution
    region = torch.zeros((1, H, W, 1), device=device)
    spans = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
    for i, (rows, cols) in enumerate((r, c) for r in spans for c in spans):
        region[:, rows, cols, :] = i
    region = window_partition(region, window_size).squeeze(-1)  # nW, N
    differs = region.unsqueeze(1) != region.unsqueeze(2)  # nW, N, N
    return torch.zeros(differs.shape, device=device).masked_fill(differs, -100.0)


def shift_mask_for(block: torch.nn.Module, Hp: int, Wp: int, device: torch.device) -> Optional[torch.Tensor]:
    """A shifted block's mask for a padded Hp x Wp map: its stored one at the configured size, else a new one."""
    if not block.shift_size:
        return None
    if (Hp, Wp) == tuple(block.input_resolution):
        return block.attn_mask
    return make_shift_mask((Hp, Wp), block.window_size, block.shift_size, device)


def shifted_window_order(resolution: tuple[int, int], window_size: int, shift_size: int) -> torch.Tensor:
    """The cyclic roll by -shift and the window partition of an H x W map as one token order (H*W,): entry t is
    the position in the unrolled map of token t of the rolled map's windows (image-major, then row-major)."""
    H, W = resolution
    rows = (torch.arange(H) + shift_size) % H  # the rolled map's row r is the map's row (r + shift) % H
    cols = (torch.arange(W) + shift_size) % W
    source = (rows[:, None] * W + cols[None, :])[None, :, :, None]  # 1, H, W, 1
    return window_partition(source, window_size).reshape(-1)  # nW*Ws*Ws


def register_window_orders(block: torch.nn.Module) -> None:
    """Keep a shifted block's token orders (into windows and back) for its configured size, as buffers outside the
    state dict (derived, like the relative position index, but not part of the reference's names)."""
    order = inverse = None
    H, W = block.input_resolution
    if block.shift_size and H % block.window_size == 0 and W % block.window_size == 0:
        order = shifted_window_order((H, W), block.window_size, block.shift_size)
        inverse = torch.argsort(order)
    block.register_buffer("window_order", order, persistent=False)
    block.register_buffer("window_inverse", inverse, persistent=False)


def _orders(block: torch.nn.Module, Hp: int, Wp: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if (Hp, Wp) == tuple(block.input_resolution) and block.window_order is not None:
        return block.window_order, block.window_inverse
    order = shifted_window_order((Hp, Wp), block.window_size, block.shift_size).to(device)
    return order, torch.argsort(order)


def to_windows(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A block's padded B, Hp, Wp, C map as nW*B, Ws*Ws, C windows, cyclically shifted first when the block shifts.

    The roll and the partition are one gather (one copy of the map instead of two).
    """
    B, Hp, Wp, C = x.shape
    if not block.shift_size:
        return window_partition(x, block.window_size)
    order = _orders(block, Hp, Wp, x.device)[0]
    return x.reshape(B, Hp * Wp, C).index_select(1, order).view(-1, block.window_size ** 2, C)  # nW*B, Ws*Ws, C


def from_windows(block: torch.nn.Module, windows: torch.Tensor, Hp: int, Wp: int) -> torch.Tensor:
    """`to_windows` undone: nW*B, Ws*Ws, C windows back to the B, Hp, Wp, C map, the shift rolled back."""
    if not block.shift_size:
        return window_reverse(windows, block.window_size, Hp, Wp)
    C = windows.shape[-1]
    inverse = _orders(block, Hp, Wp, windows.device)[1]
    return windows.reshape(-1, Hp * Wp, C).index_select(1, inverse).view(-1, Hp, Wp, C)  # B, Hp, Wp, C


def combine_masks(bias: torch.Tensor, shift_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """The one additive mask of a block: the position bias (nH, N, N), plus the shift mask (nW, N, N) if any."""
    if shift_mask is None:
        return bias
    return shift_mask.unsqueeze(1).to(bias.dtype) + bias  # nW, nH, N, N


def _use_sdpa(impl: str, q: torch.Tensor, mask: torch.Tensor) -> bool:
    """Whether to run the fused kernel: always for `sdpa`, never for `plain`, measured best for `auto`.

    On CPU a mask that requires grad sends SDPA to its unfused math path, slower than the plain
    path (benchmarks/bench_swin.py), so `auto` keeps the plain path for CPU training.
    """
    if impl != "auto":
        return impl == "sdpa"
    return q.device.type != "cpu" or not (mask.requires_grad and torch.is_grad_enabled())


def window_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float, dropout_p: float = 0.0,
    impl: str = "auto",
) -> torch.Tensor:
    """Softmax attention within windows with one additive mask.

    Args:
        q, k, v: nW*B, nH, N, hd queries, keys and values.
        mask: nH, N, N for unshifted windows, or nW, nH, N, N (bias plus shift mask).
        scale: factor applied to the query.
        dropout_p: attention dropout, used only when > 0.
        impl: sdpa, plain or auto.

    Returns:
        nW*B, N, nH*hd attended values.
    """
    B_, nH, N, hd = q.shape
    if mask.dim() == 4:
        # Fold the windows into the head axis so one mask broadcasts over the images.
        groups = mask.shape[0] * nH
        q, k, v = (t.reshape(-1, groups, N, hd) for t in (q, k, v))  # B, nW*nH, N, hd
        mask = mask.reshape(1, groups, N, N)  # 1, nW*nH, N, N
    else:
        mask = mask.unsqueeze(0)  # 1, nH, N, N
    mask = mask.to(q.dtype)
    if _use_sdpa(impl, q, mask):
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    else:
        attn = torch.softmax((q * scale) @ k.transpose(-2, -1) + mask, dim=-1)
        if dropout_p:
            attn = F.dropout(attn, dropout_p)
        x = attn @ v
    return x.reshape(B_, nH, N, hd).transpose(1, 2).reshape(B_, N, nH * hd)  # nW*B, N, C
