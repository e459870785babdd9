"""Window shapes by name: a new shape is a module with a ``SHAPE`` and its line here (plus tests)."""

from __future__ import annotations

from . import band, nbhd, tile
from .shape import WindowShape

SHAPES: dict[str, WindowShape] = {s.kind: s for s in (band.SHAPE, nbhd.SHAPE, tile.SHAPE)}
KINDS = tuple(SHAPES)


def shape(kind: str) -> WindowShape:
    """The shape called ``kind``; ValueError listing the known ones otherwise."""
    if kind not in SHAPES:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return SHAPES[kind]
