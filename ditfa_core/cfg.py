"""CFG handling: which rows of a batch are which branch, and how a conditional output is shared.

ASC (paper §3.4) computes attention for the conditional rows only and gives that output to the
unconditional rows. Hosts deliver the branches in many layouts: one batch with the chunks in any
order, more than two chunks, or separate forward calls in either order. Two branches may also
carry different text lengths in joint text+image attention; then only the image rows can be
shared, and the unconditional text rows are computed (they are few).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .context import Chunk, Role
from .windows import TokenLayout

DenseFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def chunk_slices(batch: int, chunks: Sequence[Chunk]) -> list[slice] | None:
    """Row slices of each chunk, or None when ``batch`` does not split evenly into them."""
    n = len(chunks)
    if n == 0 or batch % n:
        return None
    b = batch // n
    return [slice(i * b, (i + 1) * b) for i in range(n)]


def lender(chunks: Sequence[Chunk], i: int) -> int | None:
    """Index of the chunk whose output chunk ``i`` (an unconditional one) receives under ASC: the
    first conditional chunk over the same tokens (context window, area), or None."""
    tokens = chunks[i].tokens
    return next((j for j, c in enumerate(chunks) if c.role is Role.COND and c.tokens == tokens), None)


def lends_only(chunks: Sequence[Chunk]) -> bool:
    """Whether a call has lenders but no borrower: its unconditional partner is a separate forward."""
    roles = {c.role for c in chunks}
    return Role.COND in roles and Role.UNCOND not in roles


def image_rows(layout: TokenLayout) -> slice:
    return slice(layout.image_start, layout.image_end)


def global_rows(layout: TokenLayout, device: torch.device) -> torch.Tensor:
    """Indices of the tokens outside the image span (text, registers, reference latents)."""
    before = torch.arange(0, layout.image_start, device=device)
    after = torch.arange(layout.image_end, layout.n_tokens, device=device)
    return torch.cat([before, after])


def can_share(src: TokenLayout, dst: TokenLayout) -> bool:
    """Whether an output computed on ``src``'s tokens can stand in for ``dst``'s (image rows at least)."""
    return src == dst or (src.grid == dst.grid and src.n_image == dst.n_image)


def share(
    src_out: torch.Tensor,
    src_layout: TokenLayout,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dst_layout: TokenLayout,
    dense: DenseFn,
) -> torch.Tensor:
    """The unconditional output built from the conditional one (``can_share`` must hold).

    Same layout: the conditional output itself. Different text lengths: image rows copied, the
    unconditional global rows (text, registers) computed against the unconditional keys.
    """
    if src_layout == dst_layout:
        return src_out
    out = torch.empty_like(q)
    out[:, :, image_rows(dst_layout)] = src_out[:, :, image_rows(src_layout)]
    glob = global_rows(dst_layout, q.device)
    if glob.numel():
        out[:, :, glob] = dense(q[:, :, glob], k, v)
    return out
