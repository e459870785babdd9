"""Window attention patterns of DiTFastAttn: which (query, key) pairs a windowed head may see.

The paper's window attention (§3.2) restricts image tokens to a neighbourhood; tokens outside the
image span (text, registers, reference latents) stay global, which gives the "arrow" pattern. Each
window shape is one small module (``band``, ``nbhd``, ``tile``) defining its axis window, from which
``shape.WindowShape`` derives the pure mask function, the key box of a query box (what the blocked
kernels and Flex's block mask need) and the exact pair count; ``arrow`` composes the global rows and
columns on top; ``registry`` maps names to shapes. Every backend in ``ditfa_core.kernels`` implements
the one :class:`AttentionPattern`, so the dense reference mask and FlexAttention's ``mask_mod`` cannot
drift apart.
"""

from .layout import Grid, TokenLayout
from .pattern import AttentionPattern, WindowSpec, visible
from .registry import KINDS, SHAPES, shape
from .shape import IntLike, WindowShape

__all__ = ["KINDS", "SHAPES", "AttentionPattern", "Grid", "IntLike", "TokenLayout", "WindowShape",
           "WindowSpec", "shape", "visible"]
