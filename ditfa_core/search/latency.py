"""What each head-wise candidate saves, for the knapsack to maximise (``search.knapsack``).

DiTFastAttnV2 maximises a latency saving per (head, candidate), but its latency table never matched
the Flux candidate names, so every option got the same saving (reference/peers.md §4). Here the saving
of a candidate is measured on the device and attention shape it will run at: one call of every head
through ``kernels.dense_attention`` against one through ``kernels.windowed_attention`` with the
candidate's window, divided by the head count (the marginal cost of one head when heads sharing a
pattern run together, as the engine groups them). ``measure=False`` gives the FLOPs-based saving
instead (window cost = visible pairs / N^2), which needs no device time.

Kinds, with their cost relative to a dense head of the same shape:

- ``dense``: 1 (full attention, e.g. with CFG sharing);
- ``window``: measured window time / dense time, or the pair fraction;
- ``reuse``: 0 (the head's cached output is reused; the copy that merges it, O(N*D) against the
  O(N^2*D) attention, is not counted);

each times the candidate's ``cond_fraction`` (the share of the batch it computes: 1/2 when CFG
sharing computes only the conditional half, 1 otherwise). Saving = 1 - cost, a fraction of one dense
head's time in [0, 1]; a window measured slower than dense saves 0 (a knapsack never prefers it then).
To compare heads of different shapes, multiply by ``head_latency_ms`` of the dense head.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.utils import benchmark

from ..flops import pattern_pair_fraction
from ..kernels import dense_attention, windowed_attention
from ..windows import AttentionPattern

log = logging.getLogger(__name__)

KINDS = ("dense", "window", "reuse")
PatternFor = Callable[[str], AttentionPattern]
"""A window candidate's name -> its pattern at the shape's token layout."""
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


def candidate_savings(
    candidates: Sequence[tuple[str, str] | tuple[str, str, float]],
    shape: AttentionShape,
    window: PatternFor | None = None,
    *,
    measure: bool = True,
    min_run_time: float = MIN_RUN_TIME,
) -> dict[str, float]:
    """The saving of each candidate relative to a dense head, keyed by name in the given order.

    candidates: ``(name, kind)`` or ``(name, kind, cond_fraction)``, kind in ``KINDS``, cond_fraction in
        (0, 1] (default 1).
    window: name -> the AttentionPattern of a ``window`` candidate at ``shape.tokens`` tokens (e.g.
        ``lambda name: WindowSpec(fraction=...).resolve(layout)``); needed when any candidate is a window.
    measure: True times the kernels on ``shape`` (cached per device, dtype, shape and pattern; the first
        call of a shape costs about ``min_run_time`` seconds per distinct pattern plus one dense timing);
        False uses FLOPs (pair fractions) and runs nothing.

    Raises ValueError on an unknown kind, a cond_fraction outside (0, 1], a repeated name, a missing
    ``window``, or a pattern for another token count.
    """
    parsed = [_parsed(c) for c in candidates]
    names = [name for name, _, _ in parsed]
    if len(set(names)) != len(names):
        raise ValueError(f"candidate names must be unique, got {names}")
    savings: dict[str, float] = {}
    for name, kind, cond in parsed:
        cost = _relative_cost(name, kind, shape, window, measure, min_run_time)
        if cost > 1.0:
            log.info("head-wise candidate %r runs at %.2fx a dense head on %s: saving 0", name, cost, shape)
        savings[name] = max(0.0, 1.0 - cond * cost)
    return savings


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


def _parsed(candidate: tuple[str, str] | tuple[str, str, float]) -> tuple[str, str, float]:
    if not isinstance(candidate, tuple) or len(candidate) not in (2, 3):
        raise ValueError(f"a candidate is (name, kind) or (name, kind, cond_fraction), got {candidate!r}")
    name, kind, cond = (*candidate, 1.0) if len(candidate) == 2 else candidate
    if kind not in KINDS:
        raise ValueError(f"candidate {name!r}: kind must be one of {KINDS}, got {kind!r}")
    if not isinstance(cond, (int, float)) or not 0.0 < cond <= 1.0:
        raise ValueError(f"candidate {name!r}: cond_fraction must lie in (0, 1] (1/2 for CFG sharing of one "
                         f"cond and one uncond chunk), got {cond!r}")
    return str(name), kind, float(cond)


def _relative_cost(name: str, kind: str, shape: AttentionShape, window: PatternFor | None,
                   measure: bool, min_run_time: float) -> float:
    """Cost of the candidate's kind relative to a dense head of the same shape (before cond_fraction)."""
    if kind == "dense":
        return 1.0
    if kind == "reuse":
        return 0.0
    if window is None:
        raise ValueError(f"candidate {name!r} is a window: pass window=<name -> AttentionPattern>")
    pattern = window(name)
    if pattern.layout.n_tokens != shape.tokens:
        raise ValueError(f"candidate {name!r}: the window pattern is for {pattern.layout.n_tokens} tokens, "
                         f"the shape has {shape.tokens}; resolve the window for the shape's token layout")
    if not measure:
        return pattern_pair_fraction(pattern)
    return head_latency_ms(shape, pattern, min_run_time) / head_latency_ms(shape, None, min_run_time)


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
