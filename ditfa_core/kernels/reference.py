"""fp64 dense-mask attention: the semantic reference every backend is tested against.

It builds the full (N, N) mask from ``AttentionPattern.dense_mask`` and does a plain masked softmax
in float64, so it shares no code path with the fast backends beyond the mask definition itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..windows import AttentionPattern

PatternArg = AttentionPattern | Sequence[AttentionPattern | None] | None


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        pattern: PatternArg = None, scale: float | None = None) -> torch.Tensor:
    """Masked-softmax attention of (B, H, N, D) tensors in float64 (returns float64).

    pattern: one pattern for all heads, one per head (None = full head), or None for full attention.
    scale: multiplies q.k before the softmax (None = 1/sqrt(head_dim), as SDPA).
    """
    n_heads, n = q.shape[1], q.shape[2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q.double() @ k.double().transpose(-1, -2)) * scale
    heads = pattern if isinstance(pattern, Sequence) else [pattern] * n_heads
    if len(heads) != n_heads:
        raise ValueError(f"{len(heads)} per-head patterns for {n_heads} heads")
    full = torch.ones(n, n, dtype=torch.bool, device=q.device)
    mask = torch.stack([full if p is None else p.dense_mask(q.device) for p in heads])
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v.double()
