"""The one window spec every backend implements, and the user-facing choice it is resolved from."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from . import arrow
from .layout import Grid, TokenLayout
from .registry import shape
from .shape import Visible, WindowShape


@dataclass(frozen=True)
class AttentionPattern:
    """A window shape laid over a token layout (hashable, so backends cache on it).

    ``kind`` names the shape (``registry.KINDS``): ``band`` (``|i - j| <= radius[2]`` in flattened
    order), ``nbhd`` (every grid coordinate within ``radius``, clipped at the borders), ``tile`` (whole
    tiles of ``tile`` tokens per axis within ``radius`` tiles, shifted inside at the borders). Global
    tokens see and are seen by everything (``arrow``).
    """

    layout: TokenLayout
    kind: str
    radius: Grid
    tile: Grid = (1, 1, 1)

    def __post_init__(self) -> None:
        found = shape(self.kind)
        if len(self.radius) != 3 or any(int(r) < 0 for r in self.radius):
            raise ValueError(f"radius must be three integers >= 0, got {self.radius}")
        if len(self.tile) != 3 or any(int(t) < 1 for t in self.tile):
            raise ValueError(f"tile must be three integers >= 1, got {self.tile}")
        object.__setattr__(self, "radius", tuple(int(r) for r in self.radius))
        object.__setattr__(self, "tile", tuple(int(t) for t in self.tile))
        found.check(self.radius, self.tile)

    @property
    def shape(self) -> WindowShape:
        """The window shape's definition (``windows.shape.WindowShape``)."""
        return shape(self.kind)

    @property
    def grid(self) -> Grid:
        """The grid the radius applies to: a band is a box over the 1-D image (1, 1, n_image)."""
        return self.shape.grid(self.layout)

    def mask_params(self) -> tuple[int, ...]:
        """(image_start, image_end, t, h, w, rt, rh, rw, tt, th, tw): everything the mask needs."""
        t, h, w = self.grid
        # An empty image has w == 0; any positive divisor keeps the (unused) coordinate maths defined.
        return (self.layout.image_start, self.layout.image_end, max(t, 1), max(h, 1), max(w, 1),
                *self.radius, *self.tile)

    @property
    def mask_fn(self) -> Visible:
        """The pure mask function ``(q_idx, kv_idx, *mask_params()) -> bool`` (a Flex mask_mod body)."""
        return _visible_fn(self.kind)

    def visible(self, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        """Whether query q_idx may see key kv_idx (broadcasting index tensors)."""
        return self.mask_fn(q_idx, kv_idx, *self.mask_params())

    def dense_mask(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(N, N) bool, True = query i may see key j. Test/reference only: it is O(N^2)."""
        idx = torch.arange(self.layout.n_tokens, device=device)
        return self.visible(idx[:, None], idx[None, :])

    def pair_count(self) -> int:
        """Exact number of visible pairs, without building the mask (FLOPs accounting)."""
        return arrow.global_pairs(self.layout) + self.shape.image_pairs(self.grid, self.radius, self.tile)

    @property
    def is_full(self) -> bool:
        """True when the pattern admits every pair (the window covers the whole image)."""
        return self.shape.covers(self.grid, self.radius, self.tile)

    def key_box(self, lo: tuple[int, ...], hi: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Grid box [box_lo, box_hi) of the image keys that queries of the box [lo, hi) can see."""
        box_lo, box_hi = self.shape.reach(torch.tensor(lo), torch.tensor(hi) - 1, self.grid, self.radius,
                                          self.tile)
        return tuple(box_lo.tolist()), tuple((box_hi + 1).tolist())

    def half_width(self) -> Grid:
        """Half the window's extent per axis, in tokens (for choosing query tile proportions)."""
        return self.shape.half_width(self.grid, self.radius, self.tile)


@functools.cache
def _visible_fn(kind: str) -> Visible:
    """The shape's image mask with the global rows and columns composed on (one function per kind, so
    Flex sees the same callable for every pattern of a kind)."""
    return arrow.with_globals(shape(kind).image_mask)


def visible(q_idx: torch.Tensor, kv_idx: torch.Tensor, *params, kind: str = "nbhd") -> torch.Tensor:
    """The mask of shape ``kind`` with global rows and columns, as pure elementwise tensor arithmetic;
    params as ``AttentionPattern.mask_params()`` (ints, or 0-d tensors under Flex)."""
    return _visible_fn(kind)(q_idx, kv_idx, *params)


@dataclass(frozen=True)
class WindowSpec:
    """User-facing window choice, resolved per layout (the paper's §4.1 default is 1/8 of the image)."""

    kind: str = "band"
    fraction: float = 1 / 8
    radius: int | Grid | None = None

    def __post_init__(self) -> None:
        found = shape(self.kind)
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.radius is None:
            return
        if isinstance(self.radius, int):
            if self.radius < 0:
                raise ValueError(f"radius must be >= 0, got {self.radius}")
            return
        if found.flat:
            raise ValueError(f"a {self.kind} window takes one integer radius, got {self.radius}")
        if len(self.radius) != 3 or any(int(r) < 0 for r in self.radius):
            raise ValueError(f"radius must be an int or three integers >= 0, got {self.radius}")

    def resolve(self, layout: TokenLayout) -> AttentionPattern:
        """The pattern for this layout; radii are clamped to the grid so equal windows hash equal."""
        radius, tile = shape(self.kind).resolve(layout, self.fraction, self.radius)
        return AttentionPattern(layout, self.kind, radius, tile)
