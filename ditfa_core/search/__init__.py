"""Plan searches: paper Algorithm 1 (``greedy``) and our one-probe-per-step search (``fast``)."""

from __future__ import annotations

from .base import PlanSearch
from .fast import FastSearch
from .greedy import GreedySearch

SEARCHES: dict[str, type[PlanSearch]] = {"greedy": GreedySearch, "fast": FastSearch}


def make_search(mode: str, *args, **kwargs) -> PlanSearch:
    """The search named ``mode`` ("greedy" or "fast"), built with ``PlanSearch``'s arguments."""
    try:
        cls = SEARCHES[mode]
    except KeyError:
        raise ValueError(f"unknown search mode {mode!r}; expected one of: {', '.join(SEARCHES)}") from None
    return cls(*args, **kwargs)


__all__ = ["SEARCHES", "FastSearch", "GreedySearch", "PlanSearch", "make_search"]
