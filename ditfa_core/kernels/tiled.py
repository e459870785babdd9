"""Tiled SDPA: the ``tile`` window as batched, unmasked SDPA over whole key tiles (the CPU path).

Image tokens are reordered tile by tile (each tile of the grid becomes a contiguous run, the layout of
Sliding Tile Attention and NATTEN's token permutation); each query tile's window is then a fixed number
of whole key tiles, so every query tile runs over exactly the pairs its window admits: no mask, no pair
in vain. Two ways to hand SDPA those keys:

- 2-D grids (``strided``): the keys are copied once into column strips, strip c holding the window's
  tile columns [c, c + k_w) of every tile row. A query tile's window is then one contiguous run of a
  strip, and the windows of a column of query tiles are overlapping, equally spaced runs: a strided view
  with no copy, so one SDPA call per query-tile column and run of window starts (three at most: the
  clamped top, the interior, the clamped bottom). The strips hold k_w x the keys; a gather would copy
  k_h x k_w x, in one small parallel region per chunk (on 2 threads each region's start-up cost 4x
  the copy itself at N = 4096).
- 3-D grids (``gathered``): each query tile's window tiles are gathered into a (tiles, keys, B*H, D)
  chunk, one SDPA call per chunk of tiles.

Global tokens (text) are a second call that every image query makes, merged with the first through both
calls' log-sum-exp (as in ``banded``); global queries run one dense SDPA. Then the order is undone.

Why not the per-token ``nbhd`` box the same way: each of its query tiles needs its whole key box (the
tile grown by the radius), 1.6-1.9x the window's pairs, each pair masked; that measured lat/FLOPs
2.4-3.7 on the CPU (docs/benchmarks.md). CPU only, like ``banded``: it needs the CPU flash kernel's
log-sum-exp. Needs whole tiles (the tile divides the grid); ``blocked`` runs the other tile patterns.
"""

from __future__ import annotations

import functools
import itertools
import math
import threading

import torch
import torch.nn.functional as F

from ..windows import AttentionPattern
from .banded import merge, sdpa_lse

# Gathered keys and values per SDPA call, in MiB (``tuning`` measures 1, 16 and 256). Small chunks stay
# in cache between the gather and the SDPA that reads them; one big chunk is one parallel region,
# which is what survives a loaded machine (each region waits for a descheduled thread).
DEFAULT_CHUNK_MIB = 1

_workspace = threading.local()


def _buffer(role: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A reused per-thread buffer. Why: a fresh tensor of megabytes is fresh pages from the OS, and
    faulting them in cost more than the copies written into them (CPU, 36 MiB: 24 ms fresh, 3 ms
    reused). One buffer per role is kept, replaced when the shape or dtype changes: q, k, v and the
    output in tile order (4x the size of q) plus a chunk of gathered keys and values stay allocated
    per thread between calls."""
    store = _workspace.__dict__
    buf = store.get(role)
    if buf is None or buf.shape != shape or buf.dtype != like.dtype or buf.device != like.device:
        buf = store[role] = torch.empty(shape, dtype=like.dtype, device=like.device)
    return buf


def available(device: torch.device, dtype: torch.dtype) -> bool:
    """CPU only: it needs the CPU flash kernel's log-sum-exp output."""
    return device.type == "cpu" and dtype in (torch.float32, torch.bfloat16, torch.float16)


def supports(pattern: AttentionPattern, device: torch.device, dtype: torch.dtype) -> bool:
    """Tile patterns whose tiles divide the grid (every tile whole)."""
    return (available(device, dtype) and pattern.kind == "tile" and pattern.layout.n_image > 0
            and all(s % t == 0 for s, t in zip(pattern.grid, pattern.tile, strict=True)))


def _tile_view(x: torch.Tensor, grid: tuple[int, ...], tile: tuple[int, ...],
               write: bool = False) -> torch.Tensor:
    """(B, H, n_image, D) in raster order as (nt, nh, nw, tt, th, tw, B*H, D); a true view when ``write``
    (RuntimeError rather than a silent copy), possibly a copy of a strided input otherwise."""
    b, h, _, d = x.shape
    (nt, nh, nw), (tt, th, tw) = (tuple(s // t for s, t in zip(grid, tile, strict=True)), tile)
    shape = (b * h, nt, tt, nh, th, nw, tw, d)
    return (x.view(shape) if write else x.reshape(shape)).permute(1, 3, 5, 2, 4, 6, 0, 7)


def to_tiles(x: torch.Tensor, grid: tuple[int, ...], tile: tuple[int, ...], role: str) -> torch.Tensor:
    """(B, H, n_image, D) in raster order -> (tiles, tokens per tile, B*H, D), tiles in raster order,
    copied into the workspace buffer ``role``.

    Token-major with the heads inside: a tile is one contiguous block of memory, so gathering key tiles
    is a copy of whole blocks, and (tiles, keys, B*H, D) transposed is the (batch, heads, keys, D)
    layout SDPA reads in place.
    """
    view = _tile_view(x, grid, tile)
    n_tiles, per_tile = math.prod(view.shape[:3]), math.prod(view.shape[3:6])
    buf = _buffer(role, (n_tiles, per_tile, *view.shape[6:]), x)
    buf.view(view.shape).copy_(view)
    return buf


def from_tiles(x: torch.Tensor, out: torch.Tensor, grid: tuple[int, ...], tile: tuple[int, ...]) -> None:
    """The inverse of ``to_tiles``: (tiles, tokens per tile, B*H, D) written into out (B, H, n_image, D),
    which must be viewable as (B*H, n_image, D) (a token slice of a contiguous tensor is)."""
    view = _tile_view(out, grid, tile, write=True)
    view.copy_(x.view(view.shape))


@functools.lru_cache(maxsize=64)
def key_tiles(pattern: AttentionPattern) -> torch.Tensor:
    """(tiles, window tiles) int64: the key tiles each query tile sees, from the shape's axis window."""
    grid, tile, radius = pattern.grid, pattern.tile, pattern.radius
    n_tiles = [s // t for s, t in zip(grid, tile, strict=True)]
    per_axis = []
    for size, t, r, n in zip(grid, tile, radius, n_tiles, strict=True):
        lo, hi = pattern.shape.window(torch.arange(n) * t, size, r, t)
        first, count = lo // t, (hi + 1 - lo) // t
        per_axis.append(first[:, None] + torch.arange(int(count[0]))[None, :])
    rows = []
    for a in itertools.product(*(range(n) for n in n_tiles)):
        window = itertools.product(*(per_axis[i][a[i]].tolist() for i in range(3)))
        rows.append([(x * n_tiles[1] + y) * n_tiles[2] + z for x, y, z in window])
    return torch.tensor(rows)


def strided(pattern: AttentionPattern) -> bool:
    """Whether the pattern runs on column strips (a 2-D tile grid; ``chunk_mib`` is then unused)."""
    return pattern.grid[0] // pattern.tile[0] == 1


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: AttentionPattern,
              scale: float | None = None, chunk_mib: int = DEFAULT_CHUNK_MIB) -> torch.Tensor:
    """Tile-window attention of (B, H, N, D) tensors (``scale`` as SDPA's); on 3-D grids query tiles are
    attended in calls of about ``chunk_mib`` MiB of gathered keys and values (at least one tile a call)."""
    if not supports(pattern, q.device, q.dtype):
        raise ValueError(f"tiled attention cannot run {pattern} on {q.device} with {q.dtype}")
    layout = pattern.layout
    b, h, n, d = q.shape
    start, end, grid, tile = layout.image_start, layout.image_end, pattern.grid, pattern.tile
    qt, kt, vt = (to_tiles(x[:, :, start:end], grid, tile, role) for role, x in zip("qkv", (q, k, v),
                                                                                    strict=True))
    out = _buffer("out", qt.shape, qt)
    lse = _buffer("lse", qt.shape[:3], torch.empty(0)) if layout.n_global else None
    if strided(pattern):
        _strided(qt, kt, vt, pattern, out, lse, scale)
    else:
        _gathered(qt, kt, vt, pattern, out, lse, scale, chunk_mib)
    result = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if layout.n_global:
        g = torch.cat([torch.arange(0, start), torch.arange(end, n)]).to(q.device)
        kg, vg = (x.index_select(2, g).reshape(b * h, 1, -1, d) for x in (k, v))
        og, lg = sdpa_lse(qt.view(1, -1, b * h, d).permute(2, 0, 1, 3), kg, vg, scale=scale)
        out = merge([(out, lse), (og.view(b * h, -1, d).transpose(0, 1).view_as(out),
                                  lg.view(b * h, -1).transpose(0, 1).view_as(lse))])
        result.index_copy_(2, g, F.scaled_dot_product_attention(q.index_select(2, g), k, v, scale=scale))
    from_tiles(out, result[:, :, start:end], grid, tile)
    return result


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None,
          with_lse: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SDPA of (batch, B*H, tokens, D) views, with its log-sum-exp when global keys are merged later."""
    if with_lse:
        return sdpa_lse(q, k, v, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, scale=scale), None


def _gathered(qt: torch.Tensor, kt: torch.Tensor, vt: torch.Tensor, pattern: AttentionPattern,
              out: torch.Tensor, lse: torch.Tensor | None, scale: float | None, chunk_mib: int) -> None:
    """Each chunk of query tiles against its window tiles, gathered into a reused buffer."""
    idx = key_tiles(pattern).to(qt.device)
    n_tiles, per_tile, bh, d = qt.shape
    keys = idx.shape[1] * per_tile
    chunk = min(n_tiles, max(1, (chunk_mib << 20) // (2 * bh * keys * d * qt.element_size())))
    gathered = {role: _buffer(role, (chunk * idx.shape[1], *kt.shape[1:]), kt) for role in ("kg", "vg")}
    for lo in range(0, n_tiles, chunk):
        hi = min(lo + chunk, n_tiles)
        sel = idx[lo:hi].reshape(-1)
        kg, vg = (torch.index_select(x, 0, sel, out=gathered[role][:sel.numel()])
                  .view(hi - lo, keys, bh, d).transpose(1, 2) for x, role in ((kt, "kg"), (vt, "vg")))
        o, l_ = _sdpa(qt[lo:hi].transpose(1, 2), kg, vg, scale, lse is not None)
        out[lo:hi] = o.transpose(1, 2)
        if lse is not None:
            lse[lo:hi] = l_.transpose(1, 2)


def window_starts(n_tiles: int, k: int, radius: int) -> list[int]:
    """Per tile along one axis, the first tile of its window [clamp(i - R, 0, n - k), + k)."""
    return [min(max(i - radius, 0), n_tiles - k) for i in range(n_tiles)]


def window_runs(n_tiles: int, k: int, radius: int) -> list[tuple[int, int, int, int]]:
    """Runs (first tile, end, first window start, step) of tiles whose window starts advance by one
    ``step``: 0 at the clamped borders, 1 inside."""
    starts = window_starts(n_tiles, k, radius)
    runs, i = [], 0
    while i < n_tiles:
        j = i + 1
        step = starts[j] - starts[i] if j < n_tiles else 0
        while j < n_tiles and starts[j] - starts[j - 1] == step:
            j += 1
        runs.append((i, j, starts[i], step))
        i = j
    return runs


def _strided(qt: torch.Tensor, kt: torch.Tensor, vt: torch.Tensor, pattern: AttentionPattern,
             out: torch.Tensor, lse: torch.Tensor | None, scale: float | None) -> None:
    """2-D grids: keys and values copied once into column strips, then per query-tile column one SDPA
    per run of window starts over strided views of a strip (see the module docstring)."""
    _, per_tile, bh, d = qt.shape
    (_, nh, nw), (_, rh, rw) = (tuple(s // t for s, t in zip(pattern.grid, pattern.tile, strict=True)),
                                pattern.radius)
    kh, kw = min(2 * rh + 1, nh), min(2 * rw + 1, nw)
    token, row = bh * d, kw * per_tile * bh * d      # a token, and one tile row of a strip, in elements
    strips = []
    for x, role in ((kt, "ks"), (vt, "vs")):
        view = x.as_strided((nw - kw + 1, nh, kw * per_tile, bh, d),
                            (per_tile * token, nw * per_tile * token, token, d, 1), x.storage_offset())
        strips.append(_buffer(role, view.shape, x).copy_(view))
    q4, o4 = qt.view(nh, nw, per_tile, bh, d), out.view(nh, nw, per_tile, bh, d)
    l4 = None if lse is None else lse.view(nh, nw, per_tile, bh)
    keys = kh * kw * per_tile
    rows = window_runs(nh, kh, rh)
    for col, first_col in enumerate(window_starts(nw, kw, rw)):
        for lo, hi, first, step in rows:
            kk, vv = (s[first_col].as_strided((hi - lo, bh, keys, d), (step * row, d, token, 1),
                                              s[first_col].storage_offset() + first * row) for s in strips)
            o, l_ = _sdpa(q4[lo:hi, col].transpose(1, 2), kk, vv, scale, l4 is not None)
            o4[lo:hi, col] = o.transpose(1, 2)
            if l4 is not None:
                l4[lo:hi, col] = l_.transpose(1, 2)

