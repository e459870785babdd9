"""What a window shape is, and everything that follows from it without further per-shape code.

A shape (one module each: ``band``, ``nbhd``, ``tile``) is defined by its *axis window*: for a query at
grid coordinate c on one axis, the inclusive range [lo, hi] of key coordinates it sees on that axis,
nondecreasing in c. Visibility between image tokens is the product over the three axes (t, y, x), so
from that one function follow the image mask (attention-gym style: pure elementwise tensor code that
FlexAttention can compile), the key box a query box needs (blocked SDPA's boxes, Flex's block bounds)
and the exact pair count (FLOPs). Global tokens are composed on top by ``arrow``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .layout import Grid, TokenLayout

# An int for eager/reference use, or a 0-d tensor so that a compiled mask_mod sees a value rather
# than a constant (a changed constant would force a recompile).
IntLike = int | torch.Tensor

Bounds = tuple[torch.Tensor, torch.Tensor]
AxisWindow = Callable[[torch.Tensor, IntLike, IntLike, IntLike], Bounds]
"""(c, size, radius, tile) -> (lo, hi): the inclusive key coordinates a query at coordinate(s) c sees on
an axis of ``size`` coordinates; both nondecreasing in c."""

ImageMask = Callable[..., torch.Tensor]
"""(q_loc, kv_loc, t, h, w, rt, rh, rw, tt, th, tw) -> bool: image-local raster indices, the grid, the
radius and the tile (``AttentionPattern.mask_params`` after image_start and image_end)."""

Visible = Callable[..., torch.Tensor]
"""(q_idx, kv_idx, image_start, image_end, *image mask params) -> bool over sequence indices."""

Resolve = Callable[[TokenLayout, float, "int | Grid | None"], tuple[Grid, Grid]]
"""(layout, fraction, radius or None) -> (radius, tile) of the pattern a ``WindowSpec`` stands for."""


def smaller(a: IntLike, b: IntLike) -> IntLike:
    """min for ints and tensors alike (mask params are ints eagerly, 0-d tensors under Flex)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.minimum(torch.as_tensor(a), torch.as_tensor(b))
    return min(a, b)


def box_radii(extents: Grid, fraction: float, radius: int | Grid | None, grid: Grid | None = None) -> Grid:
    """Per-axis radii of a box window: ``radius`` when given (one for all axes, or one per axis), else the
    box spanning ``fraction`` of the volume: each of the d axes of ``grid`` (default ``extents``) longer
    than 1 gets fraction^(1/d) of its extent in ``extents`` (tokens for ``nbhd``, tiles for ``tile``).
    Not yet clamped to the grid."""
    if radius is not None:
        return (radius,) * 3 if isinstance(radius, int) else tuple(radius)
    d = sum(1 for s in (grid or extents) if s > 1)
    scale = fraction ** (1 / d) if d else 1.0
    return tuple(max(0, round((scale * s - 1) / 2)) for s in extents)


def coords(local: torch.Tensor, h: IntLike, w: IntLike) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(t, y, x) grid coordinates of raster-order image indices on a (., h, w) grid."""
    return local // (h * w), (local // w) % h, local % w


@dataclass(frozen=True)
class WindowShape:
    """One window shape: its name, axis window and resolution from a ``WindowSpec``.

    flat: the window runs over the flattened image (1, 1, n_image) with one radius (a band).
    mask: a cheaper image mask with the same semantics (e.g. a band's ``|q - kv| <= r``, which saves
    FlexAttention the integer divisions of decoding coordinates); None = derived from ``window``.
    tiled: the pattern carries a tile size (tokens per tile on each axis).
    """

    kind: str
    window: AxisWindow
    resolve: Resolve
    flat: bool = False
    mask: ImageMask | None = None
    tiled: bool = False

    def grid(self, layout: TokenLayout) -> Grid:
        """The grid the radius applies to."""
        return (1, 1, layout.n_image) if self.flat else layout.grid3

    def check(self, radius: Grid, tile: Grid) -> None:
        """ValueError naming the problem for a radius or tile this shape cannot take."""
        if self.flat and radius[:2] != (0, 0):
            raise ValueError(f"a {self.kind} pattern has radius (0, 0, r), got {radius}")
        if not self.tiled and tile != (1, 1, 1):
            raise ValueError(f"a {self.kind} pattern has no tile (1, 1, 1), got {tile}")

    def image_mask(self, q_loc: torch.Tensor, kv_loc: torch.Tensor, *params: IntLike) -> torch.Tensor:
        """Whether image token q_loc sees image token kv_loc (image-local indices, broadcasting)."""
        if self.mask is not None:
            return self.mask(q_loc, kv_loc, *params)
        t, h, w, rt, rh, rw, tt, th, tw = params
        seen = None
        for qa, ka, size, r, tl in zip(coords(q_loc, h, w), coords(kv_loc, h, w), (t, h, w), (rt, rh, rw),
                                       (tt, th, tw), strict=True):
            lo, hi = self.window(qa, size, r, tl)
            near = (ka >= lo) & (ka <= hi)
            seen = near if seen is None else seen & near
        return seen

    def reach(self, lo: torch.Tensor, hi: torch.Tensor, grid: Grid, radius: Grid,
              tile: Grid) -> tuple[torch.Tensor, torch.Tensor]:
        """Inclusive key box (..., 3) that some query of the box [lo, hi] (..., 3) sees; the windows of
        neighbouring coordinates overlap or touch, so their union is this one box."""
        return self._per_axis(lo, hi, grid, radius, tile)

    def common(self, lo: torch.Tensor, hi: torch.Tensor, grid: Grid, radius: Grid,
               tile: Grid) -> tuple[torch.Tensor, torch.Tensor]:
        """Inclusive key box (..., 3) that every query of the box [lo, hi] sees (empty when lo > hi)."""
        return self._per_axis(hi, lo, grid, radius, tile)

    def _per_axis(self, a: torch.Tensor, b: torch.Tensor, grid: Grid, radius: Grid,
                  tile: Grid) -> tuple[torch.Tensor, torch.Tensor]:
        """(lo of a's windows, hi of b's windows) on each axis."""
        los, his = [], []
        for i in range(3):
            los.append(self.window(a[..., i], grid[i], radius[i], tile[i])[0])
            his.append(self.window(b[..., i], grid[i], radius[i], tile[i])[1])
        return torch.stack(los, -1), torch.stack(his, -1)

    @functools.lru_cache(maxsize=1024)   # noqa: B019 (shapes are module-level singletons)
    def image_pairs(self, grid: Grid, radius: Grid, tile: Grid) -> int:
        """Exact number of visible (query, key) image pairs: the product of the axes' pair counts."""
        pairs = 1
        for size, r, tl in zip(grid, radius, tile, strict=True):
            lo, hi = self.window(torch.arange(size), size, r, tl)
            pairs *= int((hi - lo + 1).sum())
        return pairs

    @functools.lru_cache(maxsize=1024)   # noqa: B019 (shapes are module-level singletons)
    def covers(self, grid: Grid, radius: Grid, tile: Grid) -> bool:
        """True when every image query sees every image key."""
        for size, r, tl in zip(grid, radius, tile, strict=True):
            lo, hi = self.window(torch.arange(size), size, r, tl)
            if bool((lo > 0).any()) or bool((hi < size - 1).any()):
                return False
        return True

    def half_width(self, grid: Grid, radius: Grid, tile: Grid) -> Grid:
        """Half the window's extent per axis at the grid's centre, in tokens (tile proportions)."""
        out = []
        for size, r, tl in zip(grid, radius, tile, strict=True):
            lo, hi = self.window(torch.tensor(size // 2), size, r, tl)
            out.append(int(hi - lo) // 2)
        return tuple(out)
