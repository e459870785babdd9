"""Head-wise plan choice as a multiple-choice knapsack: one candidate per head under an error budget.

Source: DiTFastAttnV2's head-wise search. For each (step, layer, head) a calibration run measures the
error of every candidate (full, arrow-k, reuse, ...) against the full output, then an integer program
picks one candidate per head so that the summed error stays within the budget delta and the summed
latency saving is largest. The official code builds it with Pyomo + GLPK (ilp.py); its latency table
never matched the Flux candidate names, so every option got the same saving and the program merely
maximised how many heads were compressed (reference/peers.md §4). Here the savings are an input
(``search.latency`` measures them), and the program is solved by HiGHS's branch and bound through
``scipy.optimize.milp`` (scipy ships with ComfyUI), to a relative gap of 1e-4 by default (0 proves the
optimum; see ``rel_gap``).

Formulation, over G groups (heads) and C candidates, x binary::

    maximise    sum_gc s_gc x_gc
    subject to  sum_c x_gc = 1            for every group g
                sum_gc e_gc x_gc <= budget

Ties are broken towards a lower total error, then a lower sum of chosen candidate indices (candidates
are listed least aggressive first, so this prefers the milder choice); ties left after that (equal
saving, error and index sum) are settled by HiGHS, which is deterministic for the same input. Each
stage is solved to ``rel_gap``, so with the default a saving within 0.01% of the best may count as
tied; with ``rel_gap=0`` the rule is exact (tests compare with enumeration).

Before HiGHS sees it, the problem loses every candidate that no optimum can use: dominated ones (more
error for no more saving) and those whose Lagrangian bound, from the greedy LP relaxation, falls below
a feasible choice's saving. Both keep every optimum and cut the solve time by 10-40x: HiGHS alone took
24-45 s for 2000 heads x 8 candidates (per-head savings, gap 0) on a 2-core CPU, 0.6-1.5 s after.
"""

from __future__ import annotations

import itertools
import logging
import math
import numbers
import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import csr_array

log = logging.getLogger(__name__)

# Slack (in units of the largest saving, resp. of the budget) when a later stage keeps an earlier
# stage's optimum as a constraint; every solution is re-checked exactly, so it only has to exceed
# HiGHS's tolerances, not be tight.
_STAGE_SLACK = 1e-9
# Tries to pull the budget row in when HiGHS's feasibility tolerance (1e-7 on a row) let a solution
# overshoot it: by twice the overshoot, at least 1e-7 times 4**try of the budget.
_REPAIRS = 4
_FIRST_PULL = 1e-7
REL_GAP = 1e-4
"""HiGHS's default relative MIP gap: see ``multiple_choice_knapsack``'s ``rel_gap``."""
TIME_LIMIT = 10.0
"""Default seconds for one call: see ``multiple_choice_knapsack``'s ``time_limit``."""
V2_PREFILTER = 1.5
"""DiTFastAttnV2's pre-filter ratio: it keeps (head, candidate) pairs with error < 1.5 * budget / G."""


@dataclass(frozen=True)
class _Frontier:
    """The candidates worth considering, flattened: group, original index, error, saving."""

    group: np.ndarray
    index: np.ndarray
    error: np.ndarray
    saving: np.ndarray


def multiple_choice_knapsack(error: npt.ArrayLike, saving: npt.ArrayLike, budget: float, *,
                             prefilter: float | None = None, rel_gap: float = REL_GAP,
                             time_limit: float | None = TIME_LIMIT) -> np.ndarray:
    """The candidate chosen for each group that maximises the total saving within the error budget.

    error: (G, C) float, >= 0, the error each candidate adds (e.g. V2's per-head relative squared
        error MSE/Var); ``math.inf`` marks a candidate that is not allowed for that group.
    saving: (G, C) float, finite and >= 0, what choosing the candidate saves (measured latency or a
        FLOPs fraction: any unit, the same for all entries).
    budget: float >= 0 (``math.inf`` allowed), in the unit of ``error``: the chosen errors' sum must not
        exceed it.
    prefilter: None (default) or a ratio r > 0: first drop every candidate whose error is >= r * budget
        / G, as DiTFastAttnV2 does with r = ``V2_PREFILTER`` = 1.5 (each group's lowest-error
        candidates always stay, so a feasible problem stays feasible). Off by default because it can
        only shrink the feasible set, i.e. lose saving: on synthetic problems (24-2000 heads x 4-12
        candidates) it kept 64-99% of the optimum's saving. It is offered for speed: 3-100x faster there
        (e.g. 2000 heads x 8: 0.03-0.3 s instead of 0.3-4 s on a 2-core CPU).
    rel_gap: HiGHS stops once its best choice is within this fraction of the bound on the total saving
        (and, in the tie-break stages, on the total error). The default, HiGHS's own 1e-4, loses at most
        0.01% of the saving; 0 proves the exact optimum, which took up to 150 s for 1368 heads x 4
        candidates with shared savings (a 2-core CPU) where 1e-4 took 1 s with the same answer.
    time_limit: seconds for the whole call (None: no limit). Most problems take milliseconds, but a few
        of ~1000 heads with shared savings kept HiGHS busy for minutes even at gap 1e-4; at the limit the
        best choice found so far is returned (always within budget) and a warning gives HiGHS's gap.

    Returns a (G,) int64 array of candidate indices. By convention candidate 0 is the exact one (error 0,
    saving 0), which keeps every budget feasible; this is not required, only that some choice fits.
    Ties: see the module docstring. Raises ValueError on mismatched shapes, NaN, negative or infinite
    savings, negative errors, a budget < 0 or NaN, a group with no allowed candidate, or a budget below
    the smallest achievable total error.
    """
    e, s, budget = _validated(error, saving, budget, prefilter, rel_gap, time_limit)
    frontier = _frontier(e, s, budget, prefilter)
    groups = e.shape[0]
    first = _ends(frontier, groups, last=False)   # lowest error of each group: always within budget
    last = _ends(frontier, groups, last=True)     # highest saving of each group
    if _totals(e, s, last)[1] <= budget:
        return last   # every group takes its best: optimal, and the tie-break holds per group
    # Here 0 < budget < inf: a zero budget leaves only error-0 candidates and an infinite one fits all.
    core, incumbent = _reduce(frontier, budget)
    best = incumbent if _totals(e, s, incumbent)[1] <= budget else first
    if len(core.group) == groups:
        return best   # one candidate left per group: the incumbent is the only possible optimum
    deadline = None if time_limit is None else time.monotonic() + time_limit
    return _solve(e, s, budget, core, best, rel_gap, deadline)


def _validated(error: npt.ArrayLike, saving: npt.ArrayLike, budget: float,
               prefilter: float | None, rel_gap: float,
               time_limit: float | None) -> tuple[np.ndarray, np.ndarray, float]:
    e = np.asarray(error, dtype=np.float64)
    s = np.asarray(saving, dtype=np.float64)
    if e.ndim != 2 or e.shape[0] < 1 or e.shape[1] < 1:
        raise ValueError(f"error must be a (groups, candidates) array with both sizes >= 1, got shape "
                         f"{e.shape}")
    if s.shape != e.shape:
        raise ValueError(f"saving has shape {s.shape} but error has {e.shape}; give one value per "
                         f"(group, candidate) in both")
    if np.isnan(e).any() or np.isnan(s).any():
        raise ValueError("error and saving must not contain NaN; mark a forbidden candidate with error = inf")
    if (e < 0).any():
        g, c = np.argwhere(e < 0)[0]
        raise ValueError(f"errors must be >= 0, got error[{g}, {c}] = {e[g, c]}")
    if not np.isfinite(s).all() or (s < 0).any():
        g, c = np.argwhere(~np.isfinite(s) | (s < 0))[0]
        raise ValueError(f"savings must be finite and >= 0, got saving[{g}, {c}] = {s[g, c]}; clamp a "
                         f"candidate slower than the exact one to 0")
    limit = float(budget) if isinstance(budget, numbers.Real) and not isinstance(budget, bool) else math.nan
    if math.isnan(limit) or limit < 0:
        raise ValueError(f"budget must be a number >= 0 (math.inf allowed), got {budget!r}")
    if not isinstance(rel_gap, (int, float)) or not 0.0 <= rel_gap < 1.0:
        raise ValueError(f"rel_gap must lie in [0, 1) (0 = proven optimum), got {rel_gap!r}")
    if time_limit is not None and not (isinstance(time_limit, (int, float)) and time_limit > 0):
        raise ValueError(f"time_limit must be None or seconds > 0, got {time_limit!r}")
    if prefilter is not None and not (isinstance(prefilter, (int, float)) and prefilter > 0):
        raise ValueError(f"prefilter must be None or a ratio > 0 (DiTFastAttnV2 uses {V2_PREFILTER}), "
                         f"got {prefilter!r}")
    closed = np.isinf(e).all(axis=1)
    if closed.any():
        raise ValueError(f"group {int(np.argmax(closed))} has no allowed candidate (every error is inf); "
                         f"allow at least its exact candidate (error 0)")
    need = math.fsum(e.min(axis=1))
    if need > limit:
        raise ValueError(f"budget {limit} is below the smallest achievable total error {need}; raise the "
                         f"budget or give each group an exact candidate (error 0)")
    return e, s, limit


def _frontier(e: np.ndarray, s: np.ndarray, budget: float, prefilter: float | None) -> _Frontier:
    """Per group, the candidates not dominated by another (no more error for no more saving).

    A dominated candidate can be swapped for its dominator without losing saving or adding error, so
    no optimum under the tie-break uses it; exact duplicates keep the lowest index. Candidates whose
    own error exceeds the budget cannot be chosen. The result is sorted by group, then error.
    """
    groups, cands = e.shape
    allowed = np.isfinite(e) & (e <= budget)
    if prefilter is not None:
        allowed &= (e < prefilter * budget / groups) | (e == e.min(axis=1, keepdims=True))
    rows: list[tuple[int, int, float, float]] = []
    for g in range(groups):
        order = sorted((c for c in range(cands) if allowed[g, c]), key=lambda c: (e[g, c], -s[g, c], c))
        best = -math.inf
        for c in order:
            if s[g, c] > best:
                rows.append((g, c, e[g, c], s[g, c]))
                best = s[g, c]
    group, index, err, sav = (np.array(col) for col in zip(*rows, strict=True))
    return _Frontier(group.astype(np.int64), index.astype(np.int64), err.astype(np.float64),
                     sav.astype(np.float64))


def _ends(frontier: _Frontier, groups: int, last: bool) -> np.ndarray:
    """Each group's first (lowest-error) or last (highest-saving) frontier candidate."""
    pick = np.empty(groups, dtype=np.int64)
    rows = range(len(frontier.group) - 1, -1, -1) if not last else range(len(frontier.group))
    for i in rows:
        pick[frontier.group[i]] = frontier.index[i]
    return pick


def _reduce(f: _Frontier, budget: float) -> tuple[_Frontier, np.ndarray]:
    """The candidates some optimal choice may use, and a good feasible choice (the incumbent).

    The LP relaxation of a multiple-choice knapsack is solved greedily (Sinha & Zoltners, Oper. Res.
    1979): start every group at its lowest error, then move groups along the segments of their upper
    convex hull of (error, saving), steepest first, until a segment no longer fits; its slope ``lam``
    prices the error. By weak duality a choice that takes candidate c in group g saves at most
    ``lam * budget + sum_g' m_g' - (m_g - v_gc)``, with ``v = s - lam * e`` and ``m_g = max_c v_gc``, so a
    candidate whose bound is below the incumbent's saving is in no optimum (nor in any tie of one) and
    is dropped. The incumbent is the greedy's integer part, continued with later segments that still fit
    in groups not yet stopped. Rows keep the frontier's order.
    """
    starts = np.flatnonzero(np.r_[True, f.group[1:] != f.group[:-1]])
    ends = np.r_[starts[1:], len(f.group)]
    segments: list[tuple[float, int, int]] = []   # (-slope, group, end row), steepest first once sorted
    for g, (a, b) in enumerate(zip(starts, ends, strict=True)):
        hull = [int(a)]
        for i in range(a + 1, b):
            while len(hull) > 1 and _slope(f, hull[-2], hull[-1]) <= _slope(f, hull[-1], i):
                hull.pop()
            hull.append(i)
        segments += [(-_slope(f, u, w), g, w) for u, w in itertools.pairwise(hull)]
    segments.sort()
    at, stopped = starts.copy(), np.zeros(len(starts), dtype=bool)
    room, lam = budget - math.fsum(f.error[starts]), None
    for neg_slope, g, row in segments:
        step = f.error[row] - f.error[at[g]]
        if stopped[g]:
            continue
        if step <= room:
            room -= step
            at[g] = row
        else:
            lam = -neg_slope if lam is None else lam
            stopped[g] = True
    if math.fsum(f.error[at]) > budget:
        # ``room`` is a running float difference: at the last ulp it can let one step too many in
        # (a budget one ulp under the all-best total). The bound holds for any lam >= 0; the incumbent
        # must be feasible, so fall back to the lowest errors.
        at = starts.copy()
    value = f.saving - (lam or 0.0) * f.error
    best = np.maximum.reduceat(value, starts)
    bound = (lam or 0.0) * budget + math.fsum(best) - best[f.group] + value
    incumbent = math.fsum(f.saving[at])
    keep = bound >= incumbent - 1e-9 * abs(bound).max()
    keep[at] = True
    core = _Frontier(f.group[keep], f.index[keep], f.error[keep], f.saving[keep])
    return core, f.index[at]


def _slope(f: _Frontier, u: int, w: int) -> float:
    """Saving gained per unit of error from frontier row u to a later row w of the same group."""
    return (f.saving[w] - f.saving[u]) / (f.error[w] - f.error[u])


def _totals(e: np.ndarray, s: np.ndarray, choice: np.ndarray) -> tuple[float, float, int]:
    """(total saving, total error, index sum), sums exactly rounded so that order cannot break ties."""
    rows = np.arange(len(choice))
    return math.fsum(s[rows, choice]), math.fsum(e[rows, choice]), int(choice.sum())


def _rank(e: np.ndarray, s: np.ndarray, choice: np.ndarray) -> tuple[float, float, int]:
    """Sort key of a solution: lower is better (more saving, then less error, then lower indices)."""
    saving, err, index_sum = _totals(e, s, choice)
    return -saving, err, index_sum


def _solve(e: np.ndarray, s: np.ndarray, budget: float, f: _Frontier, best: np.ndarray,
           rel_gap: float, deadline: float | None) -> np.ndarray:
    """Three lexicographic integer programs (saving, then error, then index sum) over the frontier.

    Values are scaled so that the largest saving and the budget are 1. Each program's answer is
    checked exactly against the budget and kept only if it ranks better than the best so far, which
    starts at the lowest-error choice (always feasible): HiGHS's tolerances can thus never return a
    choice over budget nor undo an earlier stage. (When HiGHS overshoots, the budget row is pulled in
    by >= 1e-7 of the budget, so a choice that uses the last 1e-7 of it may be passed over.)
    """
    groups, n = e.shape[0], len(f.group)
    s_scale = float(f.saving.max()) or 1.0
    sav, err = f.saving / s_scale, f.error / budget
    one_each = LinearConstraint(csr_array((np.ones(n), (f.group, np.arange(n))), shape=(groups, n)), 1, 1)

    def run(objective: np.ndarray, extra: list[LinearConstraint], stage: str) -> np.ndarray | None:
        nonlocal best
        limit = 1.0
        for attempt in range(_REPAIRS):
            options = {"mip_rel_gap": rel_gap}
            if deadline is not None:
                options["time_limit"] = deadline - time.monotonic()
                if options["time_limit"] <= 0:
                    return None
            res = milp(objective, integrality=np.ones(n), bounds=Bounds(0, 1),
                       constraints=[one_each, LinearConstraint(err[None, :], -np.inf, limit), *extra],
                       options=options)
            if res.status == 1:
                log.warning("head-wise knapsack (%d heads, %d candidates left): HiGHS stopped at the time "
                            "limit while optimising %s, gap %.2g; using the best choice found",
                            groups, n, stage, res.mip_gap)
            if res.x is None:
                return None
            chosen = res.x > 0.5
            choice = np.empty(groups, dtype=np.int64)
            choice[f.group[chosen]] = f.index[chosen]
            over = _totals(e, s, choice)[1] - budget
            if over <= 0:
                if _rank(e, s, choice) < _rank(e, s, best):
                    best = choice
                return choice
            limit -= max(2 * over / budget, _FIRST_PULL * 4**attempt)
        return None

    if run(-sav, [], "the saving") is None:
        return best
    top, high, _ = _totals(e, s, best)
    keep_saving = LinearConstraint(sav[None, :], top / s_scale - _STAGE_SLACK, np.inf)
    if high > 0:   # scaled to ~1, so that HiGHS's absolute gap (1e-6) cannot end the stage early
        run(f.error / high, [keep_saving], "the error at that saving")
    _, low, _ = _totals(e, s, best)
    keep_error = LinearConstraint(err[None, :], -np.inf, low / budget + _STAGE_SLACK)
    run(f.index.astype(np.float64), [keep_saving, keep_error], "the index sum at that saving and error")
    return best
