"""Head-wise plans (DiTFastAttnV2): execution per head group, per-head caches, FLOPs, and the search."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from ditfa_core.context import COND_UNCOND, CallContext
from ditfa_core.engine import FastAttention
from ditfa_core.flops import plan_flops_fraction
from ditfa_core.kernels import windowed_attention
from ditfa_core.metrics import relative_error, relative_error_per_head
from ditfa_core.plan import Cost, ModelInfo, Plan, PlanError
from ditfa_core.schedule import Schedule
from ditfa_core.search import HeadwiseSearch, make_search
from ditfa_core.strategies import HEADWISE_CANDIDATES, Strategy
from ditfa_core.windows import TokenLayout, WindowSpec

S = Strategy
N, D = 64, 8
LAYOUT = TokenLayout(N, grid=(1, 8, 8))
WINDOW = WindowSpec("band", fraction=0.25)
ALL = (S.FULL, *HEADWISE_CANDIDATES)
H = len(ALL)


def qkv(seed: int, b: int = 2, h: int = H) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, N, D, generator=g, dtype=torch.float64) for _ in range(3))


def call(step: int, layer: int = 0) -> CallContext:
    return CallContext(layer, step, COND_UNCOND, LAYOUT, eval_key=step)


def run(grid, inputs) -> list[torch.Tensor]:
    e = FastAttention(Schedule(grid), WINDOW)
    return [e(*x, call(step)) for step, x in enumerate(inputs)], e


def test_a_headwise_cell_is_each_head_run_layer_wise():
    """Every head of a mixed cell equals that head of a layer-wise run of its strategy, across three
    steps: the per-head caches (output, residual) are the ones a layer-wise lane would have."""
    inputs = [qkv(s) for s in range(3)]
    headwise, _ = run(((S.FULL,), (ALL,), (tuple(reversed(ALL)),)), inputs)
    for h in range(H):
        lane = (S.FULL, ALL[h], tuple(reversed(ALL))[h])
        per_layer, _ = run(tuple((s,) for s in lane), inputs)
        for step in range(3):
            torch.testing.assert_close(headwise[step][:, h], per_layer[step][:, h], atol=1e-12, rtol=0)


def test_residual_per_head_comes_from_that_heads_last_full_step():
    """Head 0 is FULL at steps 0 and 2, head 1 only at step 0: at step 3 WA-RS adds a different residual."""
    inputs = [qkv(s, h=2) for s in range(4)]
    grid = ((S.FULL,), ((S.AST, S.AST),), ((S.FULL, S.AST),), ((S.WA_RS, S.WA_RS),))
    outs, e = run(grid, inputs)
    pattern = WINDOW.resolve(LAYOUT)
    w = [windowed_attention(*x, pattern) for x in inputs]
    full = [F.scaled_dot_product_attention(*x) for x in inputs]
    torch.testing.assert_close(outs[3][:, 0], (w[3] + full[2] - w[2])[:, 0])
    torch.testing.assert_close(outs[3][:, 1], (w[3] + full[0] - w[0])[:, 1])
    assert e.stats.fallbacks == 0


def test_headwise_flops_are_the_plans_and_the_work_is_really_skipped():
    grid = ((S.FULL,), (ALL,), (tuple(reversed(ALL)),))
    _, e = run(grid, [qkv(s) for s in range(3)])
    pairs = WINDOW.resolve(LAYOUT).pair_count() / N**2
    assert e.stats.flops_fraction == pytest.approx(plan_flops_fraction(grid, pairs))
    assert e.stats.flops_fraction < 0.8


def test_head_count_mismatch_runs_dense_and_says_so(caplog):
    e = FastAttention(Schedule(((S.FULL,), ((S.AST, S.AST),))), WINDOW)
    q, k, v = qkv(0, h=3)
    e(q, k, v, call(0))
    with caplog.at_level(logging.INFO, logger="ditfa_core.engine"):
        out = e(q, k, v, call(1))
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    assert "lists 2 heads, the call has 3" in caplog.text


def test_arrow_needs_no_earlier_full_step_but_wa_rs_does():
    info = ModelInfo("reference-dit", 1, 2, N, 0, (1, 8, 8))
    Plan(info, [[["ARROW", "FULL"]], [["ARROW", "WA_RS"]]], Cost(0.5))
    with pytest.raises(PlanError, match="grid step 0, layer 0, head 1: WA_RS needs an earlier FULL"):
        Plan(info, [[["ARROW", "WA_RS"]]], Cost(0.5))


def test_per_head_errors_add_up_to_the_layer_error():
    a, b = qkv(0)[0], qkv(1)[0]
    per = relative_error_per_head(a, b)
    assert per.shape == (H,) and float(per.sum()) == pytest.approx(relative_error(a, b))


def test_greedy_head_wise_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="fast search only"):
        make_search("greedy", 4, 2, 0.1, granularity="head")


# -- the search on the reference DiT ----------------------------------------------------------


@pytest.fixture(scope="module")
def reference():
    from ditfa_core.reference import load_reference
    return load_reference()[0]


@pytest.mark.parametrize("delta", [0.02, 0.1])
def test_headwise_search_on_the_reference_dit(reference, delta):
    """Head-wise plans come out valid, every step within δ by trial, at most 3 generations."""
    from ditfa_core.reference.fastattn import calibrate, token_layout

    steps = 6
    out = calibrate(reference, torch.arange(2), mode="fast", delta=delta, steps=steps, granularity="head",
                    window=WINDOW)
    assert out.generations <= 3
    heads = reference.num_heads
    layout = token_layout(reference)
    info = ModelInfo("reference-dit", reference.num_layers, heads, layout.n_image, 0, layout.grid)
    pairs = WINDOW.resolve(layout).pair_count() / layout.n_tokens**2
    plan = Plan(info, out.grid, Cost.estimate(out.grid, pairs))
    assert plan.steps == steps and plan.cost.attn_flops_fraction < 1.0
    assert all(c is S.FULL for c in out.grid[0])


def test_headwise_search_takes_what_saves_most():
    """The knapsack gets each candidate's real saving: with ample budget every head takes AST (saves
    all), never a cheaper-to-predict but less saving window candidate."""
    search = HeadwiseSearch(3, 1, 10.0, WINDOW, saving="flops")
    search._shape[0] = (2, 0.25, 0.5)
    search._weight[0] = 1.0
    for m in search.candidates:
        search._head_err[(0, m)] = torch.full((2,), 0.01 if m is S.AST else 0.0, dtype=torch.float64)
    search._saw_uncond = True
    row, raw = search._choose(1.0)
    assert row == (S.AST,) and raw == pytest.approx(0.02)
    row, _ = search._choose(700.0)   # AST on both heads (14) exceeds δ = 10, on one (7) fits
    # The other head takes the next biggest saving at no error: a window on the conditional rows only
    # (1 - 0.25 x 0.5), the first of the equals (WA_RS_ASC, ARROW_ASC) in the vocabulary's order.
    assert sorted(row[0]) == sorted((S.AST, S.WA_RS_ASC))


def test_measured_savings_feed_the_knapsack():
    """With ``saving="latency"`` the window candidates' saving is the timed kernel ratio on the call's
    shape (reuse saves everything, dense nothing, CFG sharing half); the chosen row is a valid cell."""
    from ditfa_core.search.latency import AttentionShape

    search = HeadwiseSearch(3, 1, 10.0, WINDOW)
    search._shape[0] = (2, 0.25, 0.5)
    search._call[0] = (AttentionShape(2, 2, N, D), WINDOW.resolve(LAYOUT))
    savings = search._savings(0, 2)
    names = [S.FULL, *search.candidates]
    assert savings[0, names.index(S.AST)] == 1.0 and savings[0, names.index(S.ASC)] == 0.5
    assert 0.0 <= savings[0, names.index(S.ARROW)] <= 1.0
    with pytest.raises(ValueError, match="saving must be one of"):
        HeadwiseSearch(3, 1, 10.0, WINDOW, saving="heads")
