"""Paper Table 1 in miniature on the reference DiT, measured paired (see ``quality.py``).

Rows: the uncompressed model; the fast search at D1-D6; Algorithm 1 (greedy) at the levels asked for;
each technique alone (WA-RS, AST, ASC: the search restricted to that one candidate besides FULL) at
matched attention FLOPs, so the table says which technique costs quality where; and head-wise plans
(DiTFastAttnV2) at the attention FLOPs of the layer-wise fast plans, compared with them paired. Each
plan is searched on its own calibration batch (``calib`` labels, another seed than the evaluation set)
and then judged on the shared evaluation set.
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
from .fastattn import SearchOutcome, calibrate, pair_fraction
from .model import DiT
from .quality import PairedEvaluator, Row, Samples

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
           progress: Progress | None = None, granularity: str = "layer") -> SearchOutcome:
    extra = {} if candidates is None else {"candidates": tuple(candidates)}
    bar = progress(f"search {mode} {granularity} delta={delta:.3f}") if progress else None
    return calibrate(model, calib.labels, mode=mode, delta=delta, steps=calib.steps, cfg=calib.cfg,
                     seed=calib.seed, window=calib.window, progress=bar, granularity=granularity, **extra)


def plan_flops(model: DiT, calib: Calib, outcome: SearchOutcome) -> float:
    return plan_flops_fraction(outcome.grid, pair_fraction(model, calib.window))


def matched(model: DiT, calib: Calib, candidates: Sequence[Strategy] | None, target: float,
            tolerance: float = 0.03, iterations: int = 8, granularity: str = "layer") -> SearchOutcome:
    """The fast search (restricted to ``candidates``; None: its whole vocabulary) at ``granularity``, with
    delta bisected (on a log scale) until the plan's attention FLOPs fraction is within ``tolerance`` of
    ``target``; the closest plan if none is. The outcome's ``delta`` is the one it was searched under."""
    low, high = 1e-3, 2.0
    best: tuple[float, SearchOutcome] | None = None
    for _ in range(iterations):
        delta = (low * high) ** 0.5
        outcome = search(model, calib, "fast", delta, candidates, granularity=granularity)
        flops = plan_flops(model, calib, outcome)
        if best is None or abs(flops - target) < best[0]:
            best = (abs(flops - target), outcome)
        log.info("%s %s delta %.4f -> FLOPs %.3f (target %.3f)", granularity,
                 "all" if candidates is None else [m.value for m in candidates], delta, flops, target)
        if abs(flops - target) <= tolerance:
            break
        if flops > target:
            low = delta      # not compressed enough: allow more error
        else:
            high = delta
    assert best is not None
    return best[1]


HEADWISE_TOLERANCE = 0.01
"""How close a head-wise plan's attention FLOPs share comes to its layer-wise twin's: one point."""
HEADWISE_ITERATIONS = 12
"""Bisection steps for a head-wise twin: a one-point window needs more than the technique-alone rows' 8."""


def level_name(mode: str, level: str) -> str:
    """A search's row name at a paper level, e.g. "fast D3 (δ=0.075)"."""
    return f"{mode} {level} (δ={D_LEVELS[level]:.3f})"


def table(model: DiT, evaluator: PairedEvaluator, calib: Calib, *, fast_levels: Sequence[str],
          greedy_levels: Sequence[str], alone_target: float | None, headwise_levels: Sequence[str] = (),
          progress: Progress | None = None, report: Callable[[Row], None] | None = None) -> list[Row]:
    """All rows; ``report(row)`` is called as each row is measured (a sweep takes a while).

    ``headwise_levels``: for each level, the fast layer-wise plan at that delta (its row is measured once,
    also when ``fast_levels`` lists it) and a head-wise plan (DiTFastAttnV2) with delta bisected until its
    attention FLOPs are within :data:`HEADWISE_TOLERANCE` of that plan's; the head-wise row carries a
    :class:`~.quality.Versus`: head-wise minus layer-wise, paired on the same samples. A row's search cost
    and time are those of the search that found its plan (the bisection's other searches not counted).
    """
    rows = [evaluator.row("raw")]
    if report is not None:
        report(rows[0])

    def measure(name: str | Callable[[SearchOutcome], str], run: Callable[[], SearchOutcome],
                baseline: tuple[str, Samples] | None = None) -> tuple[str, Samples, SearchOutcome]:
        start = time.perf_counter()
        outcome = run()
        label = name if isinstance(name, str) else name(outcome)
        log.info("%s: found in %.0fs (one search %.0fs, %.2f generations)", label,
                 time.perf_counter() - start, outcome.seconds, outcome.generations)
        samples = evaluator.sample(f"{label} samples", outcome.grid)
        rows.append(evaluator.score(label, samples, search_cost=outcome.generations,
                                    search_seconds=outcome.seconds, baseline=baseline))
        if report is not None:
            report(rows[-1])
        return label, samples, outcome

    layerwise: dict[str, tuple[str, Samples, SearchOutcome]] = {}
    for mode, levels in (("fast", fast_levels), ("greedy", greedy_levels)):
        for level in levels:
            done = measure(level_name(mode, level),
                           lambda m=mode, d=D_LEVELS[level]: search(model, calib, m, d, progress=progress))
            if mode == "fast":
                layerwise[level] = done
    if alone_target is not None:
        for name, candidates in ALONE.items():
            measure(f"{name} (~{100 * alone_target:.0f}% FLOPs)",
                    lambda c=candidates: matched(model, calib, c, alone_target))
    for level in headwise_levels:
        if level not in layerwise:
            layerwise[level] = measure(level_name("fast", level), lambda d=D_LEVELS[level]: search(
                model, calib, "fast", d, progress=progress))
        base_name, base_samples, base = layerwise[level]
        target = plan_flops(model, calib, base)
        measure(lambda o, lv=level: f"head-wise at fast {lv}'s FLOPs (δ={o.delta:.4f})",
                lambda t=target: matched(model, calib, None, t, HEADWISE_TOLERANCE, HEADWISE_ITERATIONS,
                                         granularity="head"),
                baseline=(base_name, base_samples))
    return rows


def as_json(rows: Sequence[Row]) -> list[dict]:
    return [asdict(r) for r in rows]
