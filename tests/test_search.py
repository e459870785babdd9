"""Plan searches: paper Algorithm 1 exactly (greedy), and the fast search's cost and error bounds."""

from __future__ import annotations

import itertools

import pytest
import torch

from ditfa_core.metrics import relative_error
from ditfa_core.plan import Cost, ModelInfo, Plan
from ditfa_core.reference import DiT, DiTConfig
from ditfa_core.reference.fastattn import calibrate, generate, hooks, token_layout
from ditfa_core.reference.sampling import sample
from ditfa_core.search import FastSearch, GreedySearch, make_search
from ditfa_core.strategies import GREEDY_ORDER
from ditfa_core.strategies import Strategy as S

LAYERS, STEPS, WIDTH = 4, 5, 16


def scripted_error(step: int, layer: int, strategy: S) -> float:
    """A fixed pseudo-random perturbation per (step, layer, strategy); FULL perturbs nothing."""
    if strategy is S.FULL:
        return 0.0
    return ((step * 7 + layer * 13 + list(S).index(strategy) * 29) % 17) / 40


def scripted_forward(search: GreedySearch, step: int) -> torch.Tensor:
    """A host whose output shows each layer's strategy as a perturbation of its own elements."""
    out = torch.ones(LAYERS * WIDTH, dtype=torch.float64)
    for layer in range(LAYERS):
        s = search.engine.schedule.strategy(step, layer)
        out[layer * WIDTH:(layer + 1) * WIDTH] += scripted_error(step, layer, s)
    return out


def algorithm_1(delta: float) -> list[list[S]]:
    """Paper Algorithm 1 written out literally over the scripted host."""
    plan = []
    for t in range(STEPS):
        row = [S.FULL] * LAYERS
        if t > 0:
            reference = torch.ones(LAYERS * WIDTH, dtype=torch.float64)
            for i in range(LAYERS):
                for m in (S.AST, S.WA_RS_ASC, S.WA_RS, S.ASC):
                    trial = reference.clone()
                    for j, s in enumerate([*row[:i], m]):
                        trial[j * WIDTH:(j + 1) * WIDTH] += scripted_error(t, j, s)
                    if relative_error(reference, trial) < delta * (i + 1) / LAYERS:
                        row[i] = m
                        break
        plan.append(row)
    return plan


@pytest.mark.parametrize("delta", [0.0, 0.02, 0.05, 0.1, 0.3, 10.0])
def test_greedy_is_algorithm_1(delta):
    search = GreedySearch(STEPS, LAYERS, delta)
    for t in range(STEPS):
        search.evaluate(t, lambda t=t: scripted_forward(search, t))
    assert [list(r) for r in search.grid()] == algorithm_1(delta)
    assert GREEDY_ORDER == (S.AST, S.WA_RS_ASC, S.WA_RS, S.ASC)


def test_greedy_extremes_and_cost():
    nothing = GreedySearch(STEPS, LAYERS, 0.0)
    everything = GreedySearch(STEPS, LAYERS, 10.0)
    for search in (nothing, everything):
        for t in range(STEPS):
            search.evaluate(t, lambda t=t, s=search: scripted_forward(s, t))
    assert all(s is S.FULL for row in nothing.grid() for s in row)
    assert everything.grid()[0] == (S.FULL,) * LAYERS
    assert all(s is S.AST for row in everything.grid()[1:] for s in row)
    # 1 reference + 4 candidates per layer + 1 commit per searched step, 1 forward at step 0.
    assert nothing.forwards == 1 + (STEPS - 1) * (1 + 4 * LAYERS + 1)


def test_a_decided_step_is_not_searched_again():
    search = GreedySearch(STEPS, LAYERS, 0.1)
    search.evaluate(0, lambda: scripted_forward(search, 0))
    search.evaluate(1, lambda: scripted_forward(search, 1))
    before = search.forwards
    search.evaluate(1, lambda: scripted_forward(search, 1))   # Heun's second evaluation of a step
    assert search.forwards == before + 1


@pytest.fixture(scope="module")
def tiny() -> DiT:
    torch.manual_seed(0)
    return DiT(DiTConfig.preset("tiny")).eval()


def test_fast_search_costs_at_most_three_generations_and_keeps_each_step_under_delta(tiny):
    labels, steps, delta = [1, 2, 3], 6, 0.05
    search = FastSearch(steps, tiny.num_layers, delta)
    errors = []
    layout = token_layout(tiny)

    def evaluate(step, forward):
        out = search.evaluate(step, forward)
        if step > 0:   # the output the sampler gets vs the uncompressed output at the same input
            snap = search.engine.state.snapshot()
            search.engine.schedule, saved = search._schedule(step, search.full_row), search.engine.schedule
            errors.append(relative_error(forward(), out))
            search.engine.schedule = saved
            search.engine.state.restore(snap)
        return out

    sample(tiny, labels, steps=steps, cfg=4.0, attention_for_step=hooks(search.attention, layout, True),
           evaluate=evaluate)
    assert search.generations <= 3.0
    assert max(errors) <= delta + 1e-9
    assert any(s is not S.FULL for row in search.grid() for s in row)


def test_fast_search_without_cfg_never_shares_across_cfg(tiny):
    outcome = calibrate(tiny, [4, 5], mode="fast", delta=0.2, steps=5, cfg=1.0)
    assert not any(s.shares_cfg for row in outcome.grid for s in row)


@pytest.mark.parametrize("mode", ["fast", "greedy"])
def test_found_plans_are_valid_and_run(tiny, mode):
    outcome = calibrate(tiny, [0, 7], mode=mode, delta=0.1, steps=5)
    assert len(outcome.grid) == 5 and all(len(r) == tiny.num_layers for r in outcome.grid)
    assert outcome.grid[0] == (S.FULL,) * tiny.num_layers
    plan = Plan(ModelInfo("reference-dit", tiny.num_layers, tiny.num_heads, 64), outcome.grid,
                Cost.estimate(outcome.grid, 0.25))
    assert Plan.from_json(plan.to_json()).grid == outcome.grid
    run = generate(tiny, [0, 7], outcome.grid, steps=5)
    assert torch.isfinite(run.images).all() and run.stats.fallbacks == 0
    assert run.stats.flops_fraction < 1.0 or all(s is S.FULL for r in outcome.grid for s in r)


def test_unknown_mode_and_bad_arguments():
    with pytest.raises(ValueError, match="unknown search mode 'slow'"):
        make_search("slow", 4, 2, 0.1)
    for steps, layers, delta in itertools.product([0, 3], [0, 2], [-1.0, float("nan")]):
        with pytest.raises(ValueError):
            GreedySearch(steps, layers, delta)
