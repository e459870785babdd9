"""The head-wise knapsack against exhaustive enumeration on small cases, its tie-break and its errors."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ditfa_core.search.knapsack import REL_GAP, V2_PREFILTER, multiple_choice_knapsack

INF = math.inf


def totals(error: np.ndarray, saving: np.ndarray, choice: tuple[int, ...] | np.ndarray) -> tuple:
    """(saving, error, index sum) of a choice, sums exactly rounded as the solver ranks them."""
    rows = range(len(choice))
    return (math.fsum(saving[g, c] for g, c in zip(rows, choice, strict=True)),
            math.fsum(error[g, c] for g, c in zip(rows, choice, strict=True)), int(sum(choice)))


def brute_force(error: np.ndarray, saving: np.ndarray, budget: float) -> tuple[float, float, int] | None:
    """The best (saving, error, index sum) over every choice within budget (most saving, then least error,
    then lowest index sum), or None when nothing fits. Exact; only for tiny cases (C**G choices)."""
    best = None
    for choice in itertools.product(range(error.shape[1]), repeat=error.shape[0]):
        sav, err, idx = totals(error, saving, choice)
        fits = math.isfinite(err) and err <= budget
        if fits and (best is None or (-sav, err, idx) < (-best[0], best[1], best[2])):
            best = (sav, err, idx)
    return best


# Values on a coarse binary grid make sums exact, so ties are real ties and equalities are exact.
GRID = [0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0]


@st.composite
def problems(draw: st.DrawFn, exact_column: bool = True) -> tuple[np.ndarray, np.ndarray, float]:
    groups, cands = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    err = np.array(draw(st.lists(st.sampled_from([*GRID, INF]), min_size=groups * cands,
                                 max_size=groups * cands)), dtype=float).reshape(groups, cands)
    sav = np.array(draw(st.lists(st.sampled_from(GRID), min_size=groups * cands, max_size=groups * cands)),
                   dtype=float).reshape(groups, cands)
    if exact_column:
        err[:, 0], sav[:, 0] = 0.0, 0.0
    finite = err[np.isfinite(err)]
    budget = draw(st.sampled_from([0.0, 0.5, 1.0, 2.5, float(finite.sum()) / 2, 1e9, INF]))
    return err, sav, budget


def check_optimal(err: np.ndarray, sav: np.ndarray, budget: float, **kwargs) -> None:
    choice = multiple_choice_knapsack(err, sav, budget, **kwargs)
    assert choice.shape == (err.shape[0],) and choice.dtype == np.int64
    got = totals(err, sav, choice)
    assert got[1] <= budget
    assert got == brute_force(err, sav, budget)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_matches_brute_force_with_an_exact_candidate(problem: tuple[np.ndarray, np.ndarray, float]) -> None:
    check_optimal(*problem)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(exact_column=False))
def test_matches_brute_force_or_refuses_without_one(problem: tuple[np.ndarray, np.ndarray, float]) -> None:
    err, sav, budget = problem
    if np.isinf(err).all(axis=1).any():
        with pytest.raises(ValueError, match="no allowed candidate"):
            multiple_choice_knapsack(err, sav, budget)
    elif brute_force(err, sav, budget) is None:
        with pytest.raises(ValueError, match="smallest achievable total error"):
            multiple_choice_knapsack(err, sav, budget)
    else:
        check_optimal(err, sav, budget)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 5), st.integers(2, 4), st.integers(0, 2**32 - 1), st.floats(0.01, 1.0))
# A budget one ulp under the all-best total: the LP greedy's running float ``room`` let every step in,
# and the reduction kept only that infeasible incumbent, so the exact choice came back (saving 0).
@example(groups=4, cands=2, seed=2, share=0.9999999999999999)
def test_optimal_saving_on_random_floats(groups: int, cands: int, seed: int, share: float) -> None:
    """Generic float values: the optimum saving to rounding with gap 0, within the default gap otherwise."""
    rng = np.random.default_rng(seed)
    err, sav = rng.exponential(1.0, (groups, cands)), rng.uniform(0.0, 5.0, (groups, cands))
    err[:, 0], sav[:, 0] = 0.0, 0.0
    budget = share * float(err.sum())
    choice = multiple_choice_knapsack(err, sav, budget, rel_gap=0.0)
    got, best = totals(err, sav, choice), brute_force(err, sav, budget)
    assert got[1] <= budget
    assert got[0] == pytest.approx(best[0], rel=1e-9, abs=1e-12)
    assert totals(err, sav, multiple_choice_knapsack(err, sav, budget))[0] >= (1 - REL_GAP) * best[0]


def test_larger_problem_against_a_known_optimum() -> None:
    """48 heads x 8 candidates (one (step, layer) of a large MMDiT): no brute force, but planting the
    optimum: every head's candidate 3 is the unique best use of the budget."""
    rng = np.random.default_rng(1)
    err = np.tile(np.array([0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 12.0, 13.0]), (48, 1))
    sav = np.tile(np.array([0.0, 0.1, 0.5, 1.0, 1.1, 1.2, 1.3, 1.4]), (48, 1))
    err += rng.uniform(0, 1e-3, err.shape) * (np.arange(8) > 0)
    choice = multiple_choice_knapsack(err, sav, float(err[:, 3].sum()))
    assert (choice == 3).all()


def test_ties_prefer_less_error_then_lower_indices() -> None:
    err = np.array([[0.0, 1.0, 1.0, 0.5], [0.0, 1.0, 1.0, 2.0]])
    sav = np.array([[0.0, 2.0, 2.0, 2.0], [0.0, 2.0, 2.0, 2.0]])
    # Every head can save 2; head 0's candidate 3 does it with less error; head 1's 1 and 2 tie.
    assert multiple_choice_knapsack(err, sav, 10.0).tolist() == [3, 1]
    # Equal saving and error from different heads: the lower index sum wins.
    err, sav = np.array([[0.0, 1.0, 1.0], [0.0, 1.0, 1.0]]), np.array([[0.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
    assert multiple_choice_knapsack(err, sav, 1.0).tolist() in ([1, 0], [0, 1])
    # Nothing to gain: the exact candidate, even where others cost nothing.
    assert multiple_choice_knapsack(np.zeros((3, 4)), np.zeros((3, 4)), 0.0).tolist() == [0, 0, 0]


def test_zero_and_infinite_budget() -> None:
    err = np.array([[0.0, 0.0, 1.0], [0.0, 2.0, INF]])
    sav = np.array([[0.0, 1.0, 5.0], [0.0, 3.0, 9.0]])
    assert multiple_choice_knapsack(err, sav, 0.0).tolist() == [1, 0]
    assert multiple_choice_knapsack(err, sav, INF).tolist() == [2, 1]


def test_prefilter_drops_what_v2_drops() -> None:
    """V2 keeps (head, candidate) pairs with error < 1.5 * budget / G: with two heads and budget 2 the
    cap is 1.5, so head 0's candidate 2 (error 1.6) goes although the exact optimum takes it."""
    err = np.array([[0.0, 0.2, 1.6], [0.0, 0.2, 0.3]])
    sav = np.array([[0.0, 1.0, 5.0], [0.0, 1.0, 1.1]])
    assert multiple_choice_knapsack(err, sav, 2.0).tolist() == [2, 2]
    assert multiple_choice_knapsack(err, sav, 2.0, prefilter=V2_PREFILTER).tolist() == [1, 2]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_prefilter_never_gains_and_stays_feasible(problem: tuple[np.ndarray, np.ndarray, float]) -> None:
    err, sav, budget = problem
    full = totals(err, sav, multiple_choice_knapsack(err, sav, budget))
    filtered = totals(err, sav, multiple_choice_knapsack(err, sav, budget, prefilter=V2_PREFILTER))
    assert filtered[1] <= budget and filtered[0] <= full[0]


def test_deterministic() -> None:
    rng = np.random.default_rng(7)
    err, sav = rng.exponential(1.0, (40, 6)), np.tile(rng.uniform(0, 1, 6), (40, 1))
    err[:, 0], sav[:, 0] = 0.0, 0.0
    runs = {tuple(multiple_choice_knapsack(err, sav, 8.0).tolist()) for _ in range(3)}
    assert len(runs) == 1


@pytest.mark.parametrize(("error", "saving", "budget", "match"), [
    (np.zeros(3), np.zeros(3), 1.0, "groups, candidates"),
    (np.zeros((0, 2)), np.zeros((0, 2)), 1.0, "groups, candidates"),
    (np.zeros((2, 3)), np.zeros((3, 2)), 1.0, "saving has shape"),
    ([[0.0, math.nan]], [[0.0, 1.0]], 1.0, "NaN"),
    ([[0.0, 1.0]], [[0.0, math.nan]], 1.0, "NaN"),
    ([[0.0, -1.0]], [[0.0, 1.0]], 1.0, r"error\[0, 1\] = -1"),
    ([[0.0, 1.0]], [[0.0, -0.5]], 1.0, r"saving\[0, 1\] = -0.5"),
    ([[0.0, 1.0]], [[0.0, INF]], 1.0, "finite"),
    ([[0.0, 1.0]], [[0.0, 1.0]], -1.0, "budget must be a number >= 0"),
    ([[0.0, 1.0]], [[0.0, 1.0]], math.nan, "budget must be a number >= 0"),
    ([[0.0, 1.0]], [[0.0, 1.0]], "1", "budget must be a number >= 0"),
    ([[0.0, 1.0], [INF, INF]], [[0.0, 1.0], [0.0, 1.0]], 1.0, "group 1 has no allowed candidate"),
    ([[0.5, 1.0], [0.7, 1.0]], [[0.0, 1.0], [0.0, 1.0]], 1.0, "smallest achievable total error 1.2"),
])
def test_bad_input_is_named(error, saving, budget, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        multiple_choice_knapsack(error, saving, budget)


def test_time_limit_still_returns_a_choice_within_budget() -> None:
    """Shared savings over many heads are HiGHS's hard case; cut short, the answer is still feasible."""
    rng = np.random.default_rng(3)
    err = np.sort(rng.gamma(0.5, 0.02, (400, 4)), axis=1)
    sav = np.tile(np.sort(rng.uniform(0, 1, 4)), (400, 1))
    err[:, 0], sav[:, 0] = 0.0, 0.0
    budget = 0.1 * float(err[:, -1].sum())
    choice = multiple_choice_knapsack(err, sav, budget, time_limit=0.05)
    assert totals(err, sav, choice)[1] <= budget and totals(err, sav, choice)[0] > 0


@pytest.mark.parametrize("time_limit", [0, -1.0, "10"])
def test_bad_time_limit(time_limit) -> None:
    with pytest.raises(ValueError, match="time_limit must be None or seconds > 0"):
        multiple_choice_knapsack([[0.0, 1.0]], [[0.0, 1.0]], 1.0, time_limit=time_limit)


@pytest.mark.parametrize("rel_gap", [-0.1, 1.0, "0"])
def test_bad_rel_gap(rel_gap) -> None:
    with pytest.raises(ValueError, match=r"rel_gap must lie in \[0, 1\)"):
        multiple_choice_knapsack([[0.0, 1.0]], [[0.0, 1.0]], 1.0, rel_gap=rel_gap)


@pytest.mark.parametrize("prefilter", [0.0, -1.0, "1.5"])
def test_bad_prefilter(prefilter) -> None:
    with pytest.raises(ValueError, match="prefilter must be None or a ratio > 0"):
        multiple_choice_knapsack([[0.0, 1.0]], [[0.0, 1.0]], 1.0, prefilter=prefilter)
