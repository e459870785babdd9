"""The search loss (paper A.2), the report metric, and the attention FLOPs accounting, by hand."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from ditfa_core import metrics
from ditfa_core.flops import (
    call_flops,
    full_attention_flops,
    pattern_pair_fraction,
    plan_flops_fraction,
    residual_refreshes,
    window_attention_flops,
)
from ditfa_core.metrics import rel_l1, relative_error
from ditfa_core.strategies import Strategy

F, AST, WA, ASC, WAC = Strategy.FULL, Strategy.AST, Strategy.WA_RS, Strategy.ASC, Strategy.WA_RS_ASC


def _official(o: torch.Tensor, o2: torch.Tensor) -> float:
    """The official code's signed formula (reference/peers.md §4), to show where ours differs."""
    return ((o - o2) / (torch.maximum(o, o2) + 1e-6)).abs().clamp(0, 10).mean().item()


# -- relative_error ----------------------------------------------------------------------------------


def test_relative_error_positive_values_by_hand():
    o = torch.tensor([1.0, 2.0, 4.0, 0.0], dtype=torch.float64)
    o2 = torch.tensor([1.0, 1.0, 5.0, 0.0], dtype=torch.float64)
    # |0|/(1+e), |1|/(2+e), |1|/(5+e), 0/(0+e)
    want = (0.0 + 1 / (2 + 1e-6) + 1 / (5 + 1e-6) + 0.0) / 4
    assert relative_error(o, o2) == pytest.approx(want, rel=1e-12)


def test_relative_error_negative_values_use_magnitudes():
    o = torch.tensor([-2.0, -1.0], dtype=torch.float64)
    o2 = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    # |-2 - -1| / (max(2, 1) + e) = 1/(2+e);  |-1 - 1| / (max(1, 1) + e) = 2/(1+e)
    want = (1 / (2 + 1e-6) + 2 / (1 + 1e-6)) / 2
    assert relative_error(o, o2) == pytest.approx(want, rel=1e-12)
    # the official code divides by max(-2, -1) = -1 and max(-1, 1) = 1: 1.0 and 2.0, i.e. 1.5 not ~1.25
    assert _official(o, o2) == pytest.approx(1.5, rel=1e-5)
    assert relative_error(o, o2) == pytest.approx(1.25, rel=1e-5)


def test_relative_error_where_the_official_formula_hits_the_clip():
    # max(O, O') is ~0 for a negative O and a tiny positive O': the signed ratio explodes to the clip
    o = torch.tensor([-1.0, 3.0], dtype=torch.float64)
    o2 = torch.tensor([1e-7, 3.0], dtype=torch.float64)
    assert _official(o, o2) == pytest.approx(5.0)  # (10 + 0) / 2
    # A.2 with magnitudes: (1 + 1e-7) / (1 + 1e-6) ~ 1, never near the clip (the ratio is < 2)
    assert relative_error(o, o2) == pytest.approx((1 + 1e-7) / (1 + 1e-6) / 2, rel=1e-12)


def test_relative_error_bounded_below_two_and_zero_for_equal():
    torch.manual_seed(0)
    o = torch.randn(1000)
    assert relative_error(o, o.clone()) == 0.0
    assert relative_error(o, -o) == pytest.approx(2.0, rel=1e-5)  # the largest value the ratio can take


def test_relative_error_half_precision_large_and_chunked(monkeypatch):
    monkeypatch.setattr(metrics, "_CHUNK", 1000)
    monkeypatch.setattr(metrics, "_SMALL", 10)
    torch.manual_seed(0)
    o = torch.randn(2, 3, 1234, dtype=torch.float16)
    o2 = (o.float() + 0.01 * torch.randn(o.shape)).half()
    keep = o.clone()
    want = _reference(o.double(), o2.double())
    assert relative_error(o, o2) == pytest.approx(want, rel=1e-5)
    assert relative_error(o.transpose(0, 2), o2.transpose(0, 2)) == pytest.approx(want, rel=1e-5)
    assert torch.equal(o, keep)  # inputs untouched by the in-place arithmetic


def _reference(o: torch.Tensor, o2: torch.Tensor, eps: float = 1e-6) -> float:
    ratio = (o - o2).abs() / (torch.maximum(o.abs(), o2.abs()) + eps)
    return ratio.clamp(0, 10).mean().item()


def test_relative_error_refuses_shape_mismatch_and_empty():
    with pytest.raises(ValueError, match=r"shapes differ: \(2,\) vs \(3,\)"):
        relative_error(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="empty"):
        relative_error(torch.zeros(0), torch.zeros(0))


def test_relative_error_nan_propagates():
    assert math.isnan(relative_error(torch.tensor([1.0, 2.0]), torch.tensor([1.0, float("nan")])))


# -- rel_l1 ------------------------------------------------------------------------------------------


def test_rel_l1_by_hand():
    a = torch.tensor([1.0, -2.0, 3.0])
    b = torch.tensor([1.5, -2.0, 2.0])
    assert rel_l1(a, b) == pytest.approx((0.5 + 0.0 + 1.0) / 6.0)
    assert rel_l1(torch.zeros(3), torch.zeros(3)) == 0.0
    assert rel_l1(torch.zeros(3), torch.ones(3)) == float("inf")


# -- FLOPs ---------------------------------------------------------------------------------------------


def _pattern(n_tokens: int, pairs: int) -> SimpleNamespace:
    return SimpleNamespace(layout=SimpleNamespace(n_tokens=n_tokens), pair_count=lambda: pairs)


def test_call_flops_by_hand():
    b, h, n, d = 2, 3, 8, 4
    assert full_attention_flops(b, h, n, d) == 4 * 2 * 3 * 64 * 4 == 6144
    pattern = _pattern(n, 16)  # 16 of 64 pairs
    assert window_attention_flops(b, h, pattern, d) == 4 * 2 * 3 * 16 * 4 == 1536
    assert pattern_pair_fraction(pattern) == 0.25
    assert call_flops(F, b, h, n, d, pattern) == 6144
    assert call_flops(F, b, h, n, d, pattern, refresh_residual=True) == 6144 + 1536
    assert call_flops(AST, b, h, n, d, pattern) == 0
    assert call_flops(WA, b, h, n, d, pattern) == 1536
    assert call_flops(ASC, b, h, n, d, pattern) == 3072
    assert call_flops(WAC, b, h, n, d, pattern) == 768
    assert ASC.cost(0.25, cond_fraction=0.25) == 0.25


def test_call_flops_with_the_real_pattern():
    windows = pytest.importorskip("ditfa_core.windows")
    pattern = windows.AttentionPattern(windows.TokenLayout(8), "band", (0, 0, 1))
    # a band of radius 1 over 8 tokens: 8 diagonal + 2 * 7 off-diagonal pairs
    assert pattern.pair_count() == 22
    assert window_attention_flops(1, 1, pattern, 1) == 4 * 22


def test_residual_refresh_rule():
    got = residual_refreshes([F, WA, WA, F, F, WAC, AST, F])
    assert got == [True, False, False, False, True, False, False, False]
    assert residual_refreshes([F, AST, ASC, WA]) == [True, False, False, False]  # non-FULL steps in between
    assert residual_refreshes([F, F, AST]) == [False, False, False]


def test_plan_flops_fraction_by_hand():
    p = 0.25
    # layer 0: F(refresh: 1+p), WA (p), WA (p)           = 1 + 3p = 1.75
    # layer 1: F (1), AST (0), ASC (0.5)                  = 1.5
    grid = [[F, F], [WA, AST], [WA, ASC]]
    assert plan_flops_fraction(grid, p) == pytest.approx((1.75 + 1.5) / 6)
    assert plan_flops_fraction([[F, F]] * 4, p) == 1.0
    # layer 0: F (1), F refreshing (1+p), WAC (0.5p); cond_fraction 0.5
    assert plan_flops_fraction([[F], [F], [WAC]], p) == pytest.approx((1 + 1.25 + 0.125) / 3)


def test_plan_flops_fraction_headwise():
    p = 0.5
    # two heads: head 0 = F(refresh), WA -> 1.5 + 0.5 = 2; head 1 = F, AST -> 1; weighted 1/2 each
    grid = [[F], [(WA, AST)]]
    assert plan_flops_fraction(grid, p) == pytest.approx((2 + 1) / 2 / 2)


def test_plan_flops_fraction_refuses_bad_input():
    with pytest.raises(ValueError, match="at least one step"):
        plan_flops_fraction([], 0.25)
    with pytest.raises(ValueError, match="pair_fraction must lie in"):
        plan_flops_fraction([[WA]], 1.5)
