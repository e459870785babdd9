"""The head-wise search's measured window cost: a ratio in [0, 1], cached per shape and pattern, bad input.

Tiny shapes only, and no assertion on a timing: measured values are only checked to be savings.
"""

from __future__ import annotations

import pytest
import torch

from ditfa_core.search import latency
from ditfa_core.search.latency import AttentionShape, head_latency_ms, window_cost_ratio
from ditfa_core.windows import TokenLayout, WindowSpec

TEXT, GRID = 8, (1, 8, 8)
LAYOUT = TokenLayout(TEXT + 64, image_start=TEXT, grid=GRID)
SHAPE = AttentionShape(batch=1, heads=2, tokens=LAYOUT.n_tokens, head_dim=8)
FRACTIONS = {"arrow_8": 1 / 8, "arrow_4": 1 / 4, "arrow_2": 1 / 2}


def window(name: str):
    return WindowSpec("band", fraction=FRACTIONS[name]).resolve(LAYOUT)


@pytest.fixture(autouse=True)
def fresh_cache():
    latency.clear_cache()
    yield
    latency.clear_cache()


def test_measured_ratio_is_a_cost_in_0_1() -> None:
    for name in FRACTIONS:
        assert 0.0 < window_cost_ratio(SHAPE, window(name), 0.01) <= 1.0
    assert head_latency_ms(SHAPE, None, 0.01) > 0.0


def test_measurements_are_cached_per_shape_and_pattern(monkeypatch: pytest.MonkeyPatch) -> None:
    """One timing per (shape, pattern): dense once, each distinct window once, nothing on a repeat."""
    timed: list[float] = []

    def fake(call, min_run_time: float) -> float:
        timed.append(min_run_time)
        return 1.0
    monkeypatch.setattr(latency, "_median_seconds", fake)
    for name in FRACTIONS:
        window_cost_ratio(SHAPE, window(name), 0.01)
    assert len(timed) == 1 + len(FRACTIONS)
    for name in FRACTIONS:
        window_cost_ratio(SHAPE, window(name), 0.01)
    assert len(timed) == 1 + len(FRACTIONS)
    other = AttentionShape(batch=2, heads=2, tokens=LAYOUT.n_tokens, head_dim=8)
    window_cost_ratio(other, window("arrow_8"), 0.01)
    assert len(timed) == 3 + len(FRACTIONS)


def test_slower_than_dense_costs_as_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(latency, "head_latency_ms", lambda shape, pattern, t: 3.0 if pattern else 1.0)
    assert window_cost_ratio(SHAPE, window("arrow_8")) == 1.0


def test_window_pattern_must_be_for_the_shape() -> None:
    short = AttentionShape(batch=1, heads=2, tokens=LAYOUT.n_tokens - 1, head_dim=8)
    with pytest.raises(ValueError, match="pattern is for 72 tokens, the shape has 71"):
        window_cost_ratio(short, window("arrow_8"))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"heads": 0}, "integers >= 1"),
    ({"tokens": 2.5}, "integers >= 1"),
    ({"dtype": torch.int32}, "floating torch.dtype"),
])
def test_bad_shape(kwargs: dict, match: str) -> None:
    base = {"batch": 1, "heads": 2, "tokens": 16, "head_dim": 8}
    with pytest.raises(ValueError, match=match):
        AttentionShape(**{**base, **kwargs})
