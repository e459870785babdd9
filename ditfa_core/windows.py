"""Window attention patterns of DiTFastAttn: which (query, key) pairs a windowed head may see.

The paper's window attention (§3.2) restricts image tokens to a neighbourhood; tokens outside the
image span (text, registers, reference latents) stay global, which gives the "arrow" pattern. Every
backend in ``ditfa_core.kernels`` implements the one :class:`AttentionPattern` defined here, and the
mask semantics live in a single tiny function, :func:`visible`, so that the dense reference mask and
FlexAttention's ``mask_mod`` cannot drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

KINDS = ("band", "nbhd")

# An int for eager/reference use, or a 0-d tensor so that a compiled mask_mod sees a value rather
# than a constant (a changed constant would force a recompile).
IntLike = int | torch.Tensor


@dataclass(frozen=True)
class TokenLayout:
    """Where the image tokens sit in a sequence of n_tokens.

    Tokens outside the image span are 'global' (text, registers, reference latents): full rows and
    columns in every pattern. The image span is ``[image_start, image_start + t*h*w)`` when a grid is
    given, else ``[image_start, n_tokens)`` as a 1-D image.
    """

    n_tokens: int
    image_start: int = 0
    grid: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.n_tokens < 1:
            raise ValueError(f"n_tokens must be >= 1, got {self.n_tokens}")
        if not 0 <= self.image_start <= self.n_tokens:
            raise ValueError(f"image_start {self.image_start} outside [0, n_tokens={self.n_tokens}]")
        if self.grid is not None:
            if len(self.grid) != 3 or any(int(s) < 1 for s in self.grid):
                raise ValueError(f"grid must be three sizes >= 1 (t, h, w), got {self.grid}")
            object.__setattr__(self, "grid", tuple(int(s) for s in self.grid))
            if self.image_start + math.prod(self.grid) > self.n_tokens:
                raise ValueError(
                    f"grid {self.grid} holds {math.prod(self.grid)} tokens, which from image_start "
                    f"{self.image_start} runs past n_tokens={self.n_tokens}"
                )

    @property
    def n_image(self) -> int:
        """Number of image tokens."""
        return math.prod(self.grid) if self.grid is not None else self.n_tokens - self.image_start

    @property
    def image_end(self) -> int:
        """One past the last image token."""
        return self.image_start + self.n_image

    @property
    def n_global(self) -> int:
        """Number of global (non-image) tokens, before and after the image span."""
        return self.n_tokens - self.n_image

    @property
    def grid3(self) -> tuple[int, int, int]:
        """The image grid, with a 1-D image seen as (1, 1, n_image)."""
        return self.grid if self.grid is not None else (1, 1, self.n_image)


@dataclass(frozen=True)
class AttentionPattern:
    """The one window spec every backend implements (hashable, so backends cache on it).

    ``band``: image tokens i, j see each other when ``|i - j| <= radius[2]`` in flattened order.
    ``nbhd``: they see each other when every grid coordinate differs by at most ``radius`` on that
    axis (a box clipped at the borders, not shifted). Global tokens see and are seen by everything.
    """

    layout: TokenLayout
    kind: str
    radius: tuple[int, int, int]

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if len(self.radius) != 3 or any(int(r) < 0 for r in self.radius):
            raise ValueError(f"radius must be three integers >= 0, got {self.radius}")
        object.__setattr__(self, "radius", tuple(int(r) for r in self.radius))
        if self.kind == "band" and self.radius[:2] != (0, 0):
            raise ValueError(f"a band pattern has radius (0, 0, r), got {self.radius}")

    @property
    def grid(self) -> tuple[int, int, int]:
        """The grid the radius applies to: a band is a box over the 1-D image (1, 1, n_image)."""
        return (1, 1, self.layout.n_image) if self.kind == "band" else self.layout.grid3

    def mask_params(self) -> tuple[int, ...]:
        """(image_start, image_end, h, w, rt, rh, rw): everything :func:`visible` needs."""
        _, h, w = self.grid
        # An empty image has w == 0; any positive divisor keeps the (unused) coordinate maths defined.
        return (self.layout.image_start, self.layout.image_end, max(h, 1), max(w, 1), *self.radius)

    def visible(self, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        """Whether query q_idx may see key kv_idx (broadcasting index tensors)."""
        return visible(q_idx, kv_idx, *self.mask_params())

    def dense_mask(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(N, N) bool, True = query i may see key j. Test/reference only: it is O(N^2)."""
        idx = torch.arange(self.layout.n_tokens, device=device)
        return self.visible(idx[:, None], idx[None, :])

    def pair_count(self) -> int:
        """Exact number of visible pairs, without building the mask (FLOPs accounting).

        A clipped box factorises over axes; global tokens add their full rows and columns.
        """
        n, n_img = self.layout.n_tokens, self.layout.n_image
        image_pairs = math.prod(_axis_pairs(size, r) for size, r in zip(self.grid, self.radius, strict=True))
        return n * n - n_img * n_img + image_pairs

    @property
    def is_full(self) -> bool:
        """True when the pattern admits every pair (the window covers the whole image)."""
        return all(r >= size - 1 for size, r in zip(self.grid, self.radius, strict=True))


def _axis_pairs(n: int, r: int) -> int:
    """Number of (i, j) in [0, n)^2 with |i - j| <= r."""
    m = min(r, n - 1)
    return n + sum(2 * (n - d) for d in range(1, m + 1))


def visible(
    q_idx: torch.Tensor,
    kv_idx: torch.Tensor,
    image_start: IntLike,
    image_end: IntLike,
    h: IntLike,
    w: IntLike,
    rt: IntLike,
    rh: IntLike,
    rw: IntLike,
) -> torch.Tensor:
    """The mask semantics, as pure tensor arithmetic (attention-gym style mask_mod body).

    Image tokens are decoded to (t, y, x) on a (., h, w) grid in raster order; a pair is visible when
    either token is global or all coordinate distances are within the radius. Uses only elementwise
    ops so FlexAttention can compile it.
    """
    q_img = (q_idx >= image_start) & (q_idx < image_end)
    kv_img = (kv_idx >= image_start) & (kv_idx < image_end)
    q_loc = q_idx - image_start
    kv_loc = kv_idx - image_start
    hw = h * w
    near_t = (q_loc // hw - kv_loc // hw).abs() <= rt
    near_y = ((q_loc // w) % h - (kv_loc // w) % h).abs() <= rh
    near_x = (q_loc % w - kv_loc % w).abs() <= rw
    return ~q_img | ~kv_img | (near_t & near_y & near_x)


@dataclass(frozen=True)
class WindowSpec:
    """User-facing window choice, resolved per layout (the paper's §4.1 default is 1/8 of the image)."""

    kind: str = "band"
    fraction: float = 1 / 8
    radius: int | tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.radius is None:
            return
        if isinstance(self.radius, int):
            if self.radius < 0:
                raise ValueError(f"radius must be >= 0, got {self.radius}")
            return
        if self.kind == "band":
            raise ValueError(f"a band window takes one integer radius, got {self.radius}")
        if len(self.radius) != 3 or any(int(r) < 0 for r in self.radius):
            raise ValueError(f"radius must be an int or three integers >= 0, got {self.radius}")

    def resolve(self, layout: TokenLayout) -> AttentionPattern:
        """The pattern for this layout; radii are clamped to the grid so equal windows hash equal."""
        if self.kind == "band":
            n = layout.n_image
            r = self.radius if self.radius is not None else max(1, round((self.fraction * n - 1) / 2))
            return AttentionPattern(layout, "band", (0, 0, min(r, max(n - 1, 0))))
        grid = layout.grid3
        if self.radius is not None:
            radius = (self.radius,) * 3 if isinstance(self.radius, int) else self.radius
        else:
            d = sum(1 for s in grid if s > 1)
            scale = self.fraction ** (1 / d) if d else 1.0
            radius = tuple(max(0, round((scale * s - 1) / 2)) for s in grid)
        clamped = tuple(min(int(r), max(s - 1, 0)) for r, s in zip(radius, grid, strict=True))
        return AttentionPattern(layout, "nbhd", clamped)
