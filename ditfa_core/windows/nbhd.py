"""The neighbourhood: image tokens see each other when every grid coordinate (t, y, x) differs by at
most the radius on that axis; a box clipped at the borders, not shifted (DiTFastAttn §3.2's window on
the image grid, 2-D for images and 3-D for video)."""

from __future__ import annotations

import torch

from .layout import Grid, TokenLayout
from .shape import Bounds, IntLike, WindowShape, box_radii


def window(c: torch.Tensor, size: IntLike, radius: IntLike, tile: IntLike) -> Bounds:
    """Keys within ``radius`` of c on this axis, clipped to [0, size)."""
    return (c - radius).clamp(min=0), (c + radius).clamp(max=size - 1)


def resolve(layout: TokenLayout, fraction: float, radius: int | Grid | None) -> tuple[Grid, Grid]:
    """The radius given (one for all axes or one per axis), else a box of ``fraction`` of the image:
    each windowed axis (size > 1) gets the same share fraction^(1/d) of its extent."""
    grid = layout.grid3
    radii = box_radii(grid, fraction, radius)
    clamped = tuple(min(int(r), max(s - 1, 0)) for r, s in zip(radii, grid, strict=True))
    return clamped, (1, 1, 1)


SHAPE = WindowShape("nbhd", window, resolve)
