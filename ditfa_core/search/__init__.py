"""Plan searches: paper Algorithm 1 (``greedy``), our one-probe-per-step search (``fast``), and its
head-wise form (DiTFastAttnV2: one strategy per head, chosen by a knapsack)."""

from __future__ import annotations

from .base import PlanSearch
from .fast import FastSearch
from .greedy import GreedySearch
from .headwise import HeadwiseSearch

SEARCHES: dict[str, type[PlanSearch]] = {"greedy": GreedySearch, "fast": FastSearch}
GRANULARITIES = ("layer", "head")
"""A plan's cells: one strategy per layer (DiTFastAttn), or one per head (DiTFastAttnV2)."""


def search_class(mode: str, granularity: str = "layer") -> type[PlanSearch]:
    """The search named ``mode`` ("greedy" or "fast") at ``granularity`` ("layer" or "head"); raises
    ValueError naming the choices. Head-wise plans are searched by the fast search only: Algorithm 1
    would run one trial forward per (layer, head, candidate)."""
    try:
        cls = SEARCHES[mode]
    except KeyError:
        raise ValueError(f"unknown search mode {mode!r}; expected one of: {', '.join(SEARCHES)}") from None
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; expected one of: {', '.join(GRANULARITIES)}")
    if granularity == "head":
        if cls is not FastSearch:
            raise ValueError(f"head-wise plans are searched by the fast search only, not {mode!r}: "
                             "set search to 'fast' or granularity to 'layer'")
        cls = HeadwiseSearch
    return cls


def make_search(mode: str, *args, granularity: str = "layer", **kwargs) -> PlanSearch:
    """``search_class(mode, granularity)`` built with ``PlanSearch``'s arguments."""
    return search_class(mode, granularity)(*args, **kwargs)


__all__ = ["GRANULARITIES", "SEARCHES", "FastSearch", "GreedySearch", "HeadwiseSearch", "PlanSearch",
           "make_search", "search_class"]
