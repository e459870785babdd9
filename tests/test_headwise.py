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


def test_measured_savings_feed_the_knapsack(monkeypatch):
    """With ``saving="latency"`` the window's measured cost ratio takes the pair fraction's place in each
    record's ``cost``: reuse saves everything, CFG sharing half, a window 1 - ratio."""
    from ditfa_core.search import headwise
    from ditfa_core.search.latency import AttentionShape

    monkeypatch.setattr(headwise, "window_cost_ratio", lambda shape, pattern: 0.4)
    search = HeadwiseSearch(3, 1, 10.0, WINDOW)
    search._shape[0] = (2, 0.25, 0.5)
    search._call[0] = (AttentionShape(2, 2, N, D), WINDOW.resolve(LAYOUT))
    saved = dict(zip([S.FULL, *search.candidates], search._savings(0, 2)[0], strict=True))
    assert saved == pytest.approx({S.FULL: 0.0, S.AST: 1.0, S.ASC: 0.5, S.ARROW: 0.6, S.WA_RS: 0.6,
                                   S.WA_RS_ASC: 0.8, S.ARROW_ASC: 0.8})
    with pytest.raises(ValueError, match="saving must be one of"):
        HeadwiseSearch(3, 1, 10.0, WINDOW, saving="heads")


@pytest.mark.parametrize("calls", ["one batch", "separate calls"])
def test_cfg_share_is_counted_over_the_evaluations_calls(calls):
    """A separate unconditional call is as much saved by CFG sharing as the unconditional half of a batch."""
    q = qkv(0, b=1, h=2)[0]
    search = HeadwiseSearch(3, 1, 0.1, WINDOW, saving="flops")
    parts = [(torch.cat([q, q]), COND_UNCOND)] if calls == "one batch" else [(q, COND_UNCOND[:1]),
                                                                              (q, COND_UNCOND[1:])]
    for x, chunks in parts:
        search._observe(x, x, CallContext(0, 1, chunks, LAYOUT, eval_key=1))
    assert search._shape[0][2] == 0.5


def _random_lane(rng, steps: int) -> list:
    lane, full = [], False
    for step in range(steps):
        m = rng.choice([s for s in ALL if s.gap(step, full) is None])
        lane.append(m)
        full = full or m.is_full
    return lane


def _grid(lanes_by_layer, steps: int):
    rows = []
    for step in range(steps):
        cells = [tuple(lane[step] for lane in lanes) for lanes in lanes_by_layer]
        rows.append(tuple(c[0] if len(set(c)) == 1 else c for c in cells))
    return tuple(rows)


def _run_calls(grid, xs, mode: str, layouts):
    """Every step and layer: one CFG batch, or cond then uncond calls (the uncond with shorter text)."""
    e = FastAttention(Schedule(grid), WINDOW)
    outs = []
    for step, per_layer in enumerate(xs):
        for layer, (q, k, v) in enumerate(per_layer):
            if mode == "batch":
                outs.append(e(q, k, v, CallContext(layer, step, COND_UNCOND, layouts[0], eval_key=step)))
                continue
            off = layouts[0].n_tokens - layouts[1].n_tokens
            cond = CallContext(layer, step, COND_UNCOND[:1], layouts[0], eval_key=step)
            uncond = CallContext(layer, step, COND_UNCOND[1:], layouts[1], eval_key=step)
            outs.append(torch.cat([e(q[:1], k[:1], v[:1], cond)[..., off:, :],
                                   e(q[1:, :, off:], k[1:, :, off:], v[1:, :, off:], uncond)]))
    e.close()
    return outs, e


@pytest.mark.parametrize("seed", range(8))
def test_random_headwise_plans_equal_each_heads_layer_wise_run(seed):
    """Random legal head-wise plans (2 layers x 3 heads x 5 steps, per-layer cells mixed in), in one CFG
    batch, separate calls, or separate calls with different text lengths: every head equals a layer-wise
    run of its own lane, and the engine spends the FLOPs the plan promises."""
    import random

    rng = random.Random(seed)
    steps, layers, heads = 5, 2, 3
    mode = ("batch", "separate", "text lengths")[seed % 3]
    text = (TokenLayout(72, image_start=8, grid=(1, 8, 8)), TokenLayout(68, image_start=4, grid=(1, 8, 8)))
    layouts = text if mode == "text lengths" else (LAYOUT, LAYOUT)
    lanes = [[_random_lane(rng, steps) for _ in range(heads)] for _ in range(layers)]
    g = torch.Generator().manual_seed(seed)
    xs = [[tuple(torch.randn(2, heads, layouts[0].n_tokens, D, generator=g, dtype=torch.float64)
                 for _ in range(3)) for _ in range(layers)] for _ in range(steps)]
    grid = _grid(lanes, steps)
    out, e = _run_calls(grid, xs, mode, layouts)
    for h in range(heads):
        ref, _ = _run_calls(_grid([[lane[h]] for lane in lanes], steps), xs, mode, layouts)
        for a, b in zip(out, ref, strict=True):
            torch.testing.assert_close(a[:, h], b[:, h], atol=1e-10, rtol=0)
    assert e.stats.fallbacks == 0
    if mode != "text lengths":   # the accounting counts the shared unconditional text rows as free
        pairs = WINDOW.resolve(LAYOUT).pair_count() / N**2
        assert e.stats.flops_fraction == pytest.approx(plan_flops_fraction(grid, pairs), abs=1e-12)


def test_applying_a_searched_plan_reproduces_the_search(reference):
    """The search keeps every cache, Apply only what later steps read: the same grid gives the same images."""
    from ditfa_core.reference.fastattn import calibrate, generate

    out = calibrate(reference, torch.arange(2), mode="fast", delta=0.2, steps=6, granularity="head",
                    window=WINDOW)
    applied = generate(reference, torch.arange(2), out.grid, steps=6, window=WINDOW)
    torch.testing.assert_close(applied.images, out.images, atol=1e-5, rtol=1e-5)
