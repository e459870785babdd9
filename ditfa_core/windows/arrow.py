"""The arrow: global tokens (text, registers, reference latents) see and are seen by every token, so
their rows and columns are full; image tokens keep their window. Composed with any image window the way
attention-gym's ``or_masks`` composes mask_mods (DiTFastAttnV2's arrow attention is this with a
window over the image part)."""

from __future__ import annotations

import torch

from .layout import TokenLayout
from .shape import ImageMask, IntLike, Visible


def with_globals(image_mask: ImageMask) -> Visible:
    """``visible(q_idx, kv_idx, image_start, image_end, *params)``: global rows and columns OR the image
    window over image-local indices (sequence indices broadcast; pure elementwise ops)."""

    def visible(q_idx: torch.Tensor, kv_idx: torch.Tensor, image_start: IntLike, image_end: IntLike,
                *params: IntLike) -> torch.Tensor:
        q_img = (q_idx >= image_start) & (q_idx < image_end)
        kv_img = (kv_idx >= image_start) & (kv_idx < image_end)
        return ~q_img | ~kv_img | image_mask(q_idx - image_start, kv_idx - image_start, *params)

    return visible


def global_pairs(layout: TokenLayout) -> int:
    """Pairs in the global rows and columns: everything outside the image x image square."""
    return layout.n_tokens ** 2 - layout.n_image ** 2


def block_bounds(has_image: torch.Tensor, has_global: torch.Tensor, image_any: torch.Tensor,
                 image_all: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(QB, KB) 'some pair visible' and 'every pair visible' for blocks of tokens.

    has_image, has_global: (B,) per block; image_any / image_all: (QB, KB) the image window's own bounds
    between the blocks' image tokens. A block pair with a global token on either side has a visible pair;
    every pair is visible unless both blocks hold image tokens whose window misses some pair.
    """
    both_image = has_image[:, None] & has_image[None, :]
    any_pair = has_global[:, None] | has_global[None, :] | (both_image & image_any)
    return any_pair, ~both_image | image_all
