"""Attention FLOPs accounting per strategy, and the FLOPs fraction of a whole plan.

The paper reports compression as attention FLOPs relative to the uncompressed model (Table 1),
and the official counter got WA-RS wrong (it counts a zero-width window after a later fix, see
reference/peers.md §4). Here every cost is derived from the pairs (query, key) a kernel really
multiplies, so the number a plan advertises is the number the engine spends.

Counting convention: QK^T and PV each cost one multiply-add (2 FLOPs) per (query, key) pair and
head dimension, so one dense attention call costs 4 * B * H * N * N * D.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .schedule import lanes, residual_needed
from .strategies import Strategy


class _Layout(Protocol):
    n_tokens: int


class PairCounted(Protocol):
    """What the accounting needs of a window pattern (``windows.AttentionPattern`` has it)."""

    layout: _Layout

    def pair_count(self) -> int: ...


def pair_flops(batch: int, heads: int, pairs: int, head_dim: int) -> int:
    """FLOPs of QK^T and PV over ``pairs`` (query, key) pairs per head and row (multiply-add = 2)."""
    return 4 * batch * heads * pairs * head_dim


def full_attention_flops(batch: int, heads: int, n_tokens: int, head_dim: int) -> int:
    """FLOPs of one dense self-attention call over (B, H, N, D) tensors."""
    return pair_flops(batch, heads, n_tokens * n_tokens, head_dim)


def window_attention_flops(batch: int, heads: int, pattern: PairCounted, head_dim: int) -> int:
    """FLOPs of one windowed call: only the pairs each query really sees, border clipping included."""
    return pair_flops(batch, heads, pattern.pair_count(), head_dim)


def pattern_pair_fraction(pattern: PairCounted) -> float:
    """Share of the N x N (query, key) pairs a pattern admits: its cost relative to dense attention."""
    n = pattern.layout.n_tokens
    return pattern.pair_count() / (n * n)


def call_flops(
    strategy: Strategy,
    batch: int,
    heads: int,
    n_tokens: int,
    head_dim: int,
    pattern: PairCounted,
    cond_fraction: float = 0.5,
    refresh_residual: bool = False,
) -> float:
    """FLOPs one attention call spends under ``strategy`` (its record's ``cost`` gives the rules)."""
    full = full_attention_flops(batch, heads, n_tokens, head_dim)
    fraction = pattern.pair_count() / (n_tokens * n_tokens)
    return full * strategy.cost(fraction, cond_fraction, refresh_residual)


def residual_refreshes(column: Sequence[Strategy]) -> list[bool]:
    """For each step of one layer's column: does this step compute the WA-RS residual?

    The rule, which the engine follows (``schedule.Schedule.needs_residual``): at a FULL step s the
    residual ``full - window`` is computed iff some later step s' adds the residual (WA-RS) and no
    FULL step lies strictly between s and s'. A FULL step followed by another FULL step (or by
    nothing windowed) skips the window pass; the WA-RS steps always read the most recent FULL
    step's residual. Non-FULL steps never compute it.
    """
    needed = residual_needed(column)
    return [s.is_full and n for s, n in zip(column, needed, strict=True)]


def plan_flops_fraction(
    grid: Sequence[Sequence[Strategy | Sequence[Strategy]]],
    pattern_pair_fraction: float,
    cond_fraction: float = 0.5,
) -> float:
    """Attention FLOPs of a steps x layers grid relative to an all-FULL run of the same grid.

    Every (step, layer) of the uncompressed run costs the same dense call, so the fraction is the
    mean of the strategies' ``cost`` over the cells, with each FULL step's residual refresh decided by
    ``residual_refreshes`` on its layer's column. A head-wise cell (a list of per-head strategies)
    weighs each head 1/H; its heads form separate columns for the refresh rule, and a per-layer
    cell in such a layer applies to every head.
    """
    if not grid or not grid[0]:
        raise ValueError("a grid needs at least one step and one layer")
    num_layers = len(grid[0])
    if any(len(row) != num_layers for row in grid):
        raise ValueError("every step of a grid must list the same number of layers")
    total = 0.0
    for layer in range(num_layers):
        try:
            per_head = lanes([row[layer] for row in grid])
        except ValueError as e:
            raise ValueError(f"layer {layer}: {e}") from None
        for lane in per_head:
            refresh = residual_refreshes(lane)
            pairs = zip(lane, refresh, strict=True)
            costs = (s.cost(pattern_pair_fraction, cond_fraction, r) for s, r in pairs)
            total += sum(costs) / len(per_head)
    return total / (len(grid) * num_layers)
