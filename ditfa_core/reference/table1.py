"""Paper Table 1 in miniature on the reference DiT, measured paired (see ``quality.py``).

Rows: the uncompressed model; the fast search at D1-D6; Algorithm 1 (greedy) at the levels asked for;
and each technique alone (WA-RS, AST, ASC: the search restricted to that one candidate besides FULL) at
matched attention FLOPs, so the table says which technique costs quality where. Each plan is searched
on its own calibration batch (``calib`` labels, another seed than the evaluation set) and then judged on
the shared evaluation set.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from ..flops import plan_flops_fraction
from ..strategies import Strategy
from ..windows import WindowSpec
from .fastattn import SearchOutcome, calibrate, generate, pair_fraction
from .model import DiT
from .quality import PairedEvaluator, Row

log = logging.getLogger(__name__)

D_LEVELS = {f"D{i}": 0.025 * i for i in range(1, 7)}
"""Paper §4.1: thresholds delta = 0.025 (D1) ... 0.15 (D6)."""

ALONE: dict[str, tuple[Strategy, ...]] = {
    "WA-RS only": (Strategy.WA_RS,),
    "AST only": (Strategy.AST,),
    "ASC only": (Strategy.ASC,),
}


Progress = Callable[[str], Callable[[int, int], None]]


@dataclass(frozen=True)
class Calib:
    """How each plan of the table is searched."""

    samples: int = 8
    steps: int = 20
    cfg: float = 4.0
    seed: int = 1
    window: WindowSpec = field(default_factory=WindowSpec)   # the paper's band of 1/8 of the tokens

    @property
    def labels(self) -> torch.Tensor:
        return torch.arange(self.samples) % 10




def search(model: DiT, calib: Calib, mode: str, delta: float, candidates: Sequence[Strategy] | None = None,
           progress: Progress | None = None) -> SearchOutcome:
    extra = {} if candidates is None else {"candidates": tuple(candidates)}
    return calibrate(model, calib.labels, mode=mode, delta=delta, steps=calib.steps, cfg=calib.cfg,
                     seed=calib.seed, window=calib.window,
                     progress=progress(f"search {mode} delta={delta:.3f}") if progress else None, **extra)


def plan_flops(model: DiT, calib: Calib, outcome: SearchOutcome) -> float:
    return plan_flops_fraction(outcome.grid, pair_fraction(model, calib.window))


def matched(model: DiT, calib: Calib, candidates: Sequence[Strategy], target: float,
            tolerance: float = 0.03, iterations: int = 8) -> SearchOutcome:
    """The fast search restricted to ``candidates``, with delta bisected (on a log scale) until the plan's
    attention FLOPs fraction is within ``tolerance`` of ``target``; the closest plan if none is."""
    low, high = 1e-3, 2.0
    best: tuple[float, SearchOutcome] | None = None
    for _ in range(iterations):
        delta = (low * high) ** 0.5
        outcome = search(model, calib, "fast", delta, candidates)
        flops = plan_flops(model, calib, outcome)
        if best is None or abs(flops - target) < best[0]:
            best = (abs(flops - target), outcome)
        log.info("%s delta %.4f -> FLOPs %.3f (target %.3f)",
                 [m.value for m in candidates], delta, flops, target)
        if abs(flops - target) <= tolerance:
            break
        if flops > target:
            low = delta      # not compressed enough: allow more error
        else:
            high = delta
    assert best is not None
    return best[1]


def table(model: DiT, evaluator: PairedEvaluator, calib: Calib, *, fast_levels: Sequence[str],
          greedy_levels: Sequence[str], alone_target: float | None,
          progress: Progress | None = None, report: Callable[[Row], None] | None = None) -> list[Row]:
    """All rows; ``report(row)`` is called as each row is measured (a sweep takes a while)."""
    one_generation = generate(model, calib.labels, steps=calib.steps, cfg=calib.cfg, seed=calib.seed).seconds
    rows = [evaluator.row("raw")]
    jobs: list[tuple[str, Callable[[], SearchOutcome]]] = []
    for mode, levels in (("fast", fast_levels), ("greedy", greedy_levels)):
        for name in levels:
            delta = D_LEVELS[name]
            jobs.append((f"{mode} {name} (δ={delta:.3f})",
                         lambda m=mode, d=delta: search(model, calib, m, d, progress=progress)))
    if alone_target is not None:
        for name, candidates in ALONE.items():
            jobs.append((f"{name} (~{100 * alone_target:.0f}% FLOPs)",
                         lambda c=candidates: matched(model, calib, c, alone_target)))
    if report is not None:
        report(rows[0])
    for name, run in jobs:
        start = time.perf_counter()
        outcome = run()
        seconds = time.perf_counter() - start
        row = evaluator.row(name, outcome.grid, search_cost=outcome.generations,
                            search_seconds=seconds)
        log.info("%s: searched in %.0fs (%.1f generations' time)", name, seconds, seconds / one_generation)
        rows.append(row)
        if report is not None:
            report(row)
    return rows


def as_json(rows: Sequence[Row]) -> list[dict]:
    return [asdict(r) for r in rows]
