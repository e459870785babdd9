"""The tile window: the image grid is cut into tiles, and a query sees the whole tiles of a box of
(2R + 1) tiles per axis around its own tile, shifted inside the grid at the borders so that every tile
sees the same number of tiles (NATTEN's neighbourhood rule at tile granularity, the window of Sliding
Tile Attention).

Why a shape of its own: with image tokens reordered tile by tile, each query tile's window is a set of
whole key tiles, so it runs as one unmasked SDPA per tile with no pair computed in vain (``kernels.tiled``).
The per-token ``nbhd`` box cannot: each query tile needs its whole key box, 1.6-1.9x the window's pairs
at 1/8 of a 64x64 image, each with a mask. The two differ: here the window is a union of tiles, the same
for every query of a tile, and as wide at the borders as inside.
"""

from __future__ import annotations

import math

import torch

from .layout import Grid, TokenLayout
from .shape import Bounds, IntLike, WindowShape, box_radii, smaller

# Tokens per tile: about 1/8 of the window's keys (a 2-D window is then ~3 tiles wide per axis, so it is
# not too coarse), a power of two from 16 to 256. Big tiles pay on the CPU: SDPA's cost per pair falls
# with the queries per call (CPU, 1 thread, D = 64, 576-1024 keys: 1.3x dense's at 64 queries, 0.7x at
# 256), and each gathered key tile is read by every query of its tile.
MIN_TILE, MAX_TILE, TILES_PER_WINDOW = 16, 256, 8


def window(c: torch.Tensor, size: IntLike, radius: IntLike, tile: IntLike) -> Bounds:
    """The tiles [s, s + k) of c's window: k = min(2R + 1, tiles) tiles from s = clamp(own - R, 0,
    tiles - k); the last tile may be partial."""
    n_tiles = (size + tile - 1) // tile
    k = smaller(2 * radius + 1, n_tiles)
    s = smaller((c // tile - radius).clamp(min=0), n_tiles - k)
    return s * tile, smaller((s + k) * tile, size) - 1


def tile_tokens(n_image: int, fraction: float) -> int:
    """Tokens per tile for a window of ``fraction`` of n_image tokens (see ``TILES_PER_WINDOW``)."""
    wanted = max(fraction * n_image / TILES_PER_WINDOW, 1.0)
    return min(MAX_TILE, max(MIN_TILE, 2 ** round(math.log2(wanted))))


def tile_sizes(grid: Grid, tokens: int) -> Grid:
    """Per axis, the divisor of the axis nearest to tokens^(1/d) over the d axes longer than 1 (whole
    tiles let the kernel batch every tile alike), or that size itself (a partial last tile) when no
    divisor is within 2x of it; 1 on the other axes."""
    axes = [i for i in range(3) if grid[i] > 1]
    target = tokens ** (1 / len(axes)) if axes else 1.0
    out = [1, 1, 1]
    for i in axes:
        divisors = [d for d in range(1, grid[i] + 1) if grid[i] % d == 0]
        best = min(divisors, key=lambda d: (abs(math.log(d / target)), -d))
        out[i] = best if abs(math.log(best / target)) <= math.log(2) else min(grid[i], round(target))
    return tuple(out)


def resolve(layout: TokenLayout, fraction: float, radius: int | Grid | None) -> tuple[Grid, Grid]:
    """Tiles of ``tile_tokens``; the tile radius given (one for all axes or per axis), else the one
    whose window spans ``fraction`` of the image: each windowed axis gets fraction^(1/d) of its extent.
    Radii are clamped to where the window covers the axis, so equal windows hash equal."""
    grid = layout.grid3
    tile = tile_sizes(grid, tile_tokens(layout.n_image, fraction))
    n_tiles = tuple(math.ceil(s / t) for s, t in zip(grid, tile, strict=True))
    radii = box_radii(n_tiles, fraction, radius, grid)
    return tuple(min(int(r), n // 2) for r, n in zip(radii, n_tiles, strict=True)), tile


SHAPE = WindowShape("tile", window, resolve, tiled=True)
