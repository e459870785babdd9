"""The band: image tokens i, j see each other when ``|i - j| <= r`` in flattened (raster) order,
whatever the grid (DiTFastAttn's 1-D window; what flash-attn's sliding window computes)."""

from __future__ import annotations

import torch

from .layout import Grid, TokenLayout
from .shape import Bounds, IntLike, WindowShape


def window(c: torch.Tensor, size: IntLike, radius: IntLike, tile: IntLike) -> Bounds:
    """Keys within ``radius`` of c, clipped to [0, size)."""
    return (c - radius).clamp(min=0), (c + radius).clamp(max=size - 1)


def mask(q_loc: torch.Tensor, kv_loc: torch.Tensor, t: IntLike, h: IntLike, w: IntLike, rt: IntLike,
         rh: IntLike, rw: IntLike, tt: IntLike, th: IntLike, tw: IntLike) -> torch.Tensor:
    """``|q - kv| <= r``: no coordinate decoding (a band's grid is the flat image, t = h = 1)."""
    return (q_loc - kv_loc).abs() <= rw


def resolve(layout: TokenLayout, fraction: float, radius: int | Grid | None) -> tuple[Grid, Grid]:
    """The radius given, else 2r + 1 ~ fraction of the image tokens (at least 1), clamped to the image."""
    if radius is not None and not isinstance(radius, int):
        raise ValueError(f"a band window takes one integer radius, got {radius}")
    n = layout.n_image
    r = radius if radius is not None else max(1, round((fraction * n - 1) / 2))
    return (0, 0, min(r, max(n - 1, 0))), (1, 1, 1)


SHAPE = WindowShape("band", window, resolve, flat=True, mask=mask)
