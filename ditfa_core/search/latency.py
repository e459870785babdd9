"""What a window costs relative to dense attention, measured, for the head-wise knapsack to price.

DiTFastAttnV2 maximises a latency saving per (head, candidate), but its latency table never matched
the Flux candidate names, so every option got the same saving (reference/peers.md §4). Here one
number is measured per attention shape and window: the time of a windowed head over a dense head
(:func:`window_cost_ratio`: one call of every head through ``kernels.windowed_attention`` against one
through ``kernels.dense_attention``, medians, cached per device, dtype, shape and pattern). The search
gives it to each strategy's record in place of the pair fraction (``StrategySpec.cost``), so what a
strategy saves follows one rule whether it is counted in FLOPs or in time: reuse saves everything,
CFG sharing the unconditional share, a window ``1 - ratio``. A window measured slower than dense
costs 1 (it saves nothing).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils import benchmark

from ..kernels import dense_attention, windowed_attention
from ..windows import AttentionPattern

log = logging.getLogger(__name__)

MIN_RUN_TIME = 0.2
"""Seconds each measurement runs for (torch.utils.benchmark's blocked_autorange; its median is used)."""


@dataclass(frozen=True)
class AttentionShape:
    """One attention call: (batch, heads, tokens, head_dim) tensors of ``dtype`` on ``device``."""

    batch: int
    heads: int
    tokens: int
    head_dim: int
    dtype: torch.dtype = torch.float32
    device: str = "cpu"

    def __post_init__(self) -> None:
        sizes = {"batch": self.batch, "heads": self.heads, "tokens": self.tokens, "head_dim": self.head_dim}
        bad = {k: v for k, v in sizes.items() if not isinstance(v, int) or v < 1}
        if bad:
            raise ValueError(f"attention shape sizes must be integers >= 1, got {bad}")
        if not isinstance(self.dtype, torch.dtype) or not self.dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating torch.dtype, got {self.dtype!r}")
        object.__setattr__(self, "device", str(torch.device(self.device)))


def window_cost_ratio(shape: AttentionShape, pattern: AttentionPattern,
                      min_run_time: float = MIN_RUN_TIME) -> float:
    """Time of ``pattern``'s windowed attention over dense attention on ``shape``, in [0, 1] (a window
    slower than dense is priced as dense). The first call of a shape and pattern measures for about
    2 x ``min_run_time`` seconds; later calls are cached. Raises ValueError when the pattern is for
    another token count."""
    window = head_latency_ms(shape, pattern, min_run_time)
    return min(1.0, window / head_latency_ms(shape, None, min_run_time))


def head_latency_ms(shape: AttentionShape, pattern: AttentionPattern | None = None,
                    min_run_time: float = MIN_RUN_TIME) -> float:
    """Median milliseconds per head of one call over all ``shape.heads`` heads (None = dense), cached."""
    if pattern is not None and pattern.layout.n_tokens != shape.tokens:
        raise ValueError(f"the window pattern is for {pattern.layout.n_tokens} tokens, the shape has "
                         f"{shape.tokens}; resolve the window for the shape's token layout")
    return _head_ms(shape, pattern, min_run_time)


def clear_cache() -> None:
    """Forget measured latencies (e.g. after the device's load or clocks changed)."""
    _head_ms.cache_clear()


@functools.lru_cache(maxsize=256)
def _head_ms(shape: AttentionShape, pattern: AttentionPattern | None, min_run_time: float) -> float:
    gen = torch.Generator(device=shape.device).manual_seed(0)
    q, k, v = (torch.randn(shape.batch, shape.heads, shape.tokens, shape.head_dim, generator=gen,
                           dtype=shape.dtype, device=shape.device) for _ in range(3))
    if pattern is None:
        def call() -> torch.Tensor:
            return dense_attention(q, k, v)
    else:
        def call() -> torch.Tensor:
            return windowed_attention(q, k, v, pattern)
    call()   # warm-up: picks and tunes the window kernel for this shape, compiles where it compiles
    ms = 1e3 * _median_seconds(call, min_run_time) / shape.heads
    log.debug("attention on %s, pattern %s: %.4f ms per head", shape, pattern, ms)
    return ms


def _median_seconds(call: Callable[[], torch.Tensor], min_run_time: float) -> float:
    """Median seconds of one call (torch.utils.benchmark: CUDA synchronised, on torch's CPU threads)."""
    timer = benchmark.Timer(stmt="call()", globals={"call": call}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median
