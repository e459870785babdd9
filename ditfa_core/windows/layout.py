"""Where the image tokens sit in an attention call's sequence (what every window shape is laid over)."""

from __future__ import annotations

import math
from dataclasses import dataclass

Grid = tuple[int, int, int]


@dataclass(frozen=True)
class TokenLayout:
    """Where the image tokens sit in a sequence of n_tokens.

    Tokens outside the image span are 'global' (text, registers, reference latents): full rows and
    columns in every pattern. The image span is ``[image_start, image_start + t*h*w)`` when a grid is
    given, else ``[image_start, n_tokens)`` as a 1-D image.
    """

    n_tokens: int
    image_start: int = 0
    grid: Grid | None = None

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
    def grid3(self) -> Grid:
        """The image grid, with a 1-D image seen as (1, 1, n_image)."""
        return self.grid if self.grid is not None else (1, 1, self.n_image)
