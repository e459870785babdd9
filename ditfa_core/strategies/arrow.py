"""ARROW, DiTFastAttnV2's arrow attention without residual: text (global) rows and columns full,
image x image windowed, nothing added. On image-only models it is the plain window. V2 offers it per
head beside the residual variant (our WA_RS); it needs no cache, so it is legal at any step."""

from .base import StrategySpec

SPEC = StrategySpec(
    "ARROW", "ARROW (window, no residual)", (253, 205, 120), order=5,
    kernel="window", headwise=True,
)
