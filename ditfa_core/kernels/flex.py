"""Compiled FlexAttention with a BlockMask built analytically from the pattern.

Why analytic: ``create_block_mask`` evaluates the mask densely (B x H x N x N bools, seconds at 4k
tokens, hundreds of GiB at 100k with per-head masks), whereas block bounds follow from token
coordinates in O(N + blocks^2). Why compiled: eager flex_attention materialises the full score
matrix, and hitting the recompile limit silently falls back to it, so the limit is raised.

The mask_mod is the pattern's own mask function (``AttentionPattern.mask_fn``); the band's is
``|q - kv| <= r``: decoding grid coordinates with integer division on every element of every partial
block made this path slower than a plain compiled Flex call (CPU, N = 4096, 1 thread: latency fraction
0.40 against 0.27; with the band mask 0.24). The block bounds come from the shape's key boxes
(``WindowShape.reach`` and ``common``). The block-mask test checks both against the dense mask.

Neighbourhood windows permute image tokens tile-major first (NATTEN's token permutation): a raster
block of 128 tokens spans whole rows and touches far more key blocks than a compact 2-D/3-D tile.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
import shutil
from dataclasses import dataclass

import torch
from torch.nn.attention.flex_attention import BlockMask

from ..windows import AttentionPattern, arrow

logger = logging.getLogger(__name__)

BLOCK = 128  # flex's default sparse block; the block bounds below are computed for it.
RECOMPILE_LIMIT = 64


def available(device: torch.device, dtype: torch.dtype) -> bool:
    """Flex needs Triton on CUDA, or a C++ compiler for Inductor's CPU template."""
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return False
    if device.type == "cuda":
        return torch.cuda.is_available() and importlib.util.find_spec("triton") is not None
    return device.type == "cpu" and any(shutil.which(cc) for cc in ("c++", "g++", "clang++"))


def supports(pattern: AttentionPattern, device: torch.device, dtype: torch.dtype) -> bool:
    """Any pattern: the mask_mod is the shared visibility function."""
    return available(device, dtype)


@dataclass(frozen=True)
class FlexMask:
    """A cached block mask (carrying its mask_mod) and the token order it was built for.

    Position p of the kernel's sequence holds token perm[p]; None means the identity.
    """

    block_mask: BlockMask
    perm: torch.Tensor | None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: AttentionPattern,
              scale: float | None = None) -> torch.Tensor:
    """Windowed attention of (B, H, N, D) tensors under one pattern (``scale`` as SDPA's)."""
    mask = block_mask(pattern, q.device)
    if mask.perm is None:
        return _compiled()(q, k, v, block_mask=mask.block_mask, scale=scale)
    perm = mask.perm
    out = _compiled()(q.index_select(2, perm), k.index_select(2, perm), v.index_select(2, perm),
                      block_mask=mask.block_mask, scale=scale)
    return torch.empty_like(out).index_copy_(2, perm, out)


@functools.cache
def _compiled():
    """The compiled flex_attention, created once (compiling is per shape, not per call)."""
    from torch.nn.attention.flex_attention import flex_attention

    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 4 * RECOMPILE_LIMIT)
    return torch.compile(flex_attention, dynamic=False)


@functools.lru_cache(maxsize=32)
def block_mask(pattern: AttentionPattern, device: torch.device) -> FlexMask:
    """Block mask for a pattern on a device, from per-block coordinate bounds (cached)."""
    n = pattern.layout.n_tokens
    n_blocks = math.ceil(n / BLOCK)
    perm = _permutation(pattern)
    # Pad the table so mask_mod never indexes past it; padded positions are past the image, hence
    # 'global' (visible), and flex itself masks keys beyond the sequence length.
    table = torch.cat([perm, torch.arange(n, n_blocks * BLOCK)])
    any_pair, all_pairs = _block_bounds(pattern, table, n_blocks)
    if n % BLOCK:
        all_pairs[-1, :] = False
        all_pairs[:, -1] = False
    partial = any_pair & ~all_pairs
    kv_num, kv_indices = _ordered(partial)
    full_num, full_indices = _ordered(all_pairs)

    table = table.to(device)
    params = torch.tensor(pattern.mask_params(), device=device)
    visible = pattern.mask_fn
    identity = torch.equal(perm, torch.arange(n))

    def mask_mod(b, h, q_idx, kv_idx):
        return visible(q_idx, kv_idx, *params.unbind())

    def permuted_mask_mod(b, h, q_idx, kv_idx):
        return visible(table[q_idx], table[kv_idx], *params.unbind())

    mask = BlockMask.from_kv_blocks(
        kv_num.to(device), kv_indices.to(device), full_num.to(device), full_indices.to(device),
        BLOCK_SIZE=BLOCK, mask_mod=mask_mod if identity else permuted_mask_mod, seq_lengths=(n, n))
    logger.debug("flex block mask for %s: %.1f%% partial, %.1f%% full blocks", pattern,
                 100 * partial.float().mean(), 100 * all_pairs.float().mean())
    return FlexMask(mask, None if identity else perm.to(device))


def _ordered(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 1, QB) counts and (1, 1, QB, KB) indices, selected kv blocks first in increasing order."""
    order = torch.argsort((~blocks).to(torch.int8), dim=-1, stable=True)
    return (blocks.sum(-1, dtype=torch.int32)[None, None],
            order.to(torch.int32)[None, None].contiguous())


def tile_shape(grid: tuple[int, int, int], radius: tuple[int, int, int]) -> tuple[int, int, int]:
    """Power-of-two tile of BLOCK tokens, grown along the axis with the least tile per radius.

    Power-of-two extents make interior tiles exactly one flex block; tiles proportional to the
    radius keep the key box per block small.
    """
    tiles = [1, 1, 1]
    while math.prod(tiles) < BLOCK:
        growable = [i for i in range(3) if tiles[i] * 2 <= grid[i]]
        if not growable:
            break
        windowed = [i for i in growable if radius[i] > 0] or growable
        axis = min(windowed, key=lambda i: (tiles[i] / max(radius[i], 1), -i))
        tiles[axis] *= 2
    return tuple(tiles)


def _permutation(pattern: AttentionPattern) -> torch.Tensor:
    """Token order for the kernel: image tokens tile-major, global tokens in place."""
    layout = pattern.layout
    start, end, n = layout.image_start, layout.image_end, layout.n_tokens
    grid = pattern.grid
    tiles = pattern.tile if pattern.shape.tiled else tile_shape(grid, pattern.radius)
    coords = _coords(torch.arange(layout.n_image), grid)
    tile_of = [c // t for c, t in zip(coords, tiles, strict=True)]
    within = [c % t for c, t in zip(coords, tiles, strict=True)]
    n_tiles = [math.ceil(s / t) for s, t in zip(grid, tiles, strict=True)]
    tile_id = (tile_of[0] * n_tiles[1] + tile_of[1]) * n_tiles[2] + tile_of[2]
    in_tile = (within[0] * tiles[1] + within[1]) * tiles[2] + within[2]
    order = torch.argsort(tile_id * math.prod(tiles) + in_tile)
    return torch.cat([torch.arange(0, start), start + order, torch.arange(end, n)])


def _coords(local: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """(3, len) grid coordinates of raster-order image indices."""
    _, h, w = grid
    return torch.stack([local // (h * w), (local // w) % h, local % w])


def _block_bounds(pattern: AttentionPattern, table: torch.Tensor,
                  n_blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(QB, KB) 'some pair visible' and 'every pair visible', from per-block coordinate boxes.

    Conservative in the safe direction: 'some' may over-approximate (the mask_mod then masks the
    block), 'every' never does. Exact when every block's image tokens form a box of the grid.
    """
    layout = pattern.layout
    start, end, n = layout.image_start, layout.image_end, layout.n_tokens
    real = table < n
    is_img = (table >= start) & (table < end)
    coords = _coords((table - start).clamp(min=0), pattern.grid).T.reshape(n_blocks, BLOCK, 3)
    is_img = is_img.reshape(n_blocks, BLOCK, 1)
    big = 1 << 40
    lo = torch.where(is_img, coords, big).amin(1)
    hi = torch.where(is_img, coords, -big).amax(1)
    has_img = is_img.any(1).squeeze(-1)
    lo, hi = lo.where(has_img[:, None], 0), hi.where(has_img[:, None], 0)   # blocks without image tokens
    has_global = (real & ~is_img.reshape(-1)).reshape(n_blocks, BLOCK).any(1)
    window = pattern.shape
    args = (pattern.grid, pattern.radius, pattern.tile)
    reach_lo, reach_hi = window.reach(lo, hi, *args)
    common_lo, common_hi = window.common(lo, hi, *args)
    image_any = ((lo[None, :] <= reach_hi[:, None]) & (hi[None, :] >= reach_lo[:, None])).all(-1)
    image_all = ((lo[None, :] >= common_lo[:, None]) & (hi[None, :] <= common_hi[:, None])).all(-1)
    return arrow.block_bounds(has_img, has_global, image_any, image_all)
