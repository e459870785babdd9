"""Blocked SDPA: the exact, FLOP-saving window attention that runs anywhere (the CPU path).

The image grid is cut into query tiles; each tile runs one fused SDPA over the key box its window
can reach (``AttentionPattern.key_box``: for a neighbourhood the tile grown by the radius, clipped at
the borders) plus the global keys, with a small mask for the box's corners. Global queries run one
full SDPA over all keys. Such a loop beat one batched "unfold" call (kernels.md §5: up to 4x; here 1.5x
on one thread) and a dense mask, though its many short parallel regions suffer more when the CPU is
oversubscribed by other processes.

Everything that depends only on the pattern (tile slices, gather indices, masks) is built once and
cached, so a call is just the loop of SDPAs.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..windows import AttentionPattern

# Query tokens per tile. Measured on 2 CPU cores, fp32, H=4, D=64: at N=4096, r=256, 128 ran within
# noise of 64 and 10-25% ahead of 256/512; on 64x64 and 8x32x32 grids 128 was best or near it.
DEFAULT_BLOCK = 128

Selection = slice | torch.Tensor


@dataclass(frozen=True)
class _Call:
    """One SDPA call: which queries, which keys/values, and the mask between them."""

    q: Selection
    kv: Selection
    mask: torch.Tensor | None


def available(device: torch.device, dtype: torch.dtype) -> bool:
    """Plain SDPA runs on every device for floating dtypes."""
    return dtype.is_floating_point


def supports(pattern: AttentionPattern, device: torch.device, dtype: torch.dtype) -> bool:
    """Blocked SDPA handles every pattern."""
    return available(device, dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: AttentionPattern,
              scale: float | None = None, block: int = DEFAULT_BLOCK) -> torch.Tensor:
    """Windowed attention of (B, H, N, D) tensors under one pattern (``scale`` as SDPA's)."""
    out = torch.empty_like(q)
    for call in _plan(pattern, q.device, block):
        o = F.scaled_dot_product_attention(_take(q, call.q), _take(k, call.kv), _take(v, call.kv),
                                           attn_mask=call.mask, scale=scale)
        if isinstance(call.q, slice):
            out[:, :, call.q] = o
        else:
            out.index_copy_(2, call.q, o)
    return out


def _take(x: torch.Tensor, sel: Selection) -> torch.Tensor:
    """Tokens of x: a view for a contiguous run, a gather otherwise."""
    return x[:, :, sel] if isinstance(sel, slice) else x.index_select(2, sel)


def tile_shape(grid: tuple[int, int, int], radius: tuple[int, int, int], block: int) -> tuple[int, ...]:
    """Query tile of about `block` tokens, shaped to minimise the key box per query.

    Minimising prod(t_i + 2 r_i) at fixed prod(t_i) gives t_i proportional to r_i, so axes with zero
    radius get tiles of 1 and the rest share the budget; extents are then evened out over the grid
    so no thin remainder tile is left at the border.
    """
    tiles = [1, 1, 1]
    free = [i for i in range(3) if grid[i] > 1 and radius[i] > 0]
    if not free:
        tiles[2] = max(1, min(grid[2], block))
    while free:
        scale = (block / math.prod(tiles) / math.prod(radius[i] for i in free)) ** (1 / len(free))
        clipped = [i for i in free if scale * radius[i] >= grid[i]]
        for i in clipped or free:
            tiles[i] = max(1, min(grid[i], round(scale * radius[i])))
        free = [i for i in free if i not in clipped] if clipped else []
    return tuple(math.ceil(s / math.ceil(s / t)) if s else 1 for s, t in zip(grid, tiles, strict=True))


@functools.lru_cache(maxsize=64)
def _plan(pattern: AttentionPattern, device: torch.device, block: int) -> tuple[_Call, ...]:
    """The SDPA calls for a pattern; masks are shared between tiles of equal geometry."""
    layout = pattern.layout
    n, start, end = layout.n_tokens, layout.image_start, layout.image_end
    global_idx = torch.cat([torch.arange(0, start), torch.arange(end, n)])
    calls = []
    if global_idx.numel():
        calls.append(_Call(_selection(global_idx, device), slice(0, n), None))
    grid = pattern.grid
    # A tiled shape's own tiles see whole key tiles: no pair in vain and no mask.
    tiles = pattern.tile if pattern.shape.tiled else tile_shape(grid, pattern.radius, block)
    masks: dict[tuple, torch.Tensor | None] = {}
    for lo in itertools.product(*(range(0, s, t) for s, t in zip(grid, tiles, strict=True))):
        hi = tuple(min(a + t, s) for a, t, s in zip(lo, tiles, grid, strict=True))
        box_lo, box_hi = pattern.key_box(lo, hi)
        q_idx = start + _raster(lo, hi, grid)
        kv_idx = torch.cat([global_idx, start + _raster(box_lo, box_hi, grid)])
        # Tiles with the same extents and the same box around them have the same mask.
        key = (_offsets(lo, hi), _offsets(lo, box_lo), _offsets(lo, box_hi))
        if key not in masks:
            masks[key] = _mask(pattern.visible(q_idx[:, None], kv_idx[None, :]), device)
        calls.append(_Call(_selection(q_idx, device), _selection(kv_idx, device), masks[key]))
    return tuple(calls)


def _offsets(origin: tuple[int, ...], point: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(p - o for o, p in zip(origin, point, strict=True))


def _raster(lo: tuple[int, ...], hi: tuple[int, ...], grid: tuple[int, int, int]) -> torch.Tensor:
    """Raster-order indices (within the image) of the box [lo, hi) of the grid."""
    t, y, x = (torch.arange(a, b) for a, b in zip(lo, hi, strict=True))
    return ((t[:, None, None] * grid[1] + y[None, :, None]) * grid[2] + x[None, None, :]).reshape(-1)


def _selection(idx: torch.Tensor, device: torch.device) -> Selection:
    """A slice when the indices are one increasing run (no gather needed), else an index tensor."""
    first = int(idx[0])
    if torch.equal(idx, torch.arange(first, first + idx.numel())):
        return slice(first, first + idx.numel())
    return idx.to(device)


def _mask(allowed: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    """The bool mask, or None when nothing is masked (SDPA's unmasked path is the fastest).

    Bool rather than additive: measured as fast on CPU, and independent of the dtype.
    """
    return None if bool(allowed.all()) else allowed.to(device)
