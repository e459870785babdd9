"""The per-candidate saving table of the head-wise search: kinds, FLOPs mode, caching, bad input.

Tiny shapes only, and no assertion on a timing: measured values are only checked to be savings.
"""

from __future__ import annotations

import pytest
import torch

from ditfa_core.search import latency
from ditfa_core.search.latency import AttentionShape, candidate_savings, head_latency_ms
from ditfa_core.windows import TokenLayout, WindowSpec

TEXT, GRID = 8, (1, 8, 8)
LAYOUT = TokenLayout(TEXT + 64, image_start=TEXT, grid=GRID)
SHAPE = AttentionShape(batch=1, heads=2, tokens=LAYOUT.n_tokens, head_dim=8)
FRACTIONS = {"arrow_8": 1 / 8, "arrow_4": 1 / 4, "arrow_2": 1 / 2}
CANDIDATES = [("full", "dense"), ("full_cfg", "dense", 0.5), *((name, "window") for name in FRACTIONS),
              ("arrow_4_cfg", "window", 0.5), ("reuse", "reuse")]


def window(name: str):
    return WindowSpec("band", fraction=FRACTIONS[name.removesuffix("_cfg")]).resolve(LAYOUT)


@pytest.fixture(autouse=True)
def fresh_cache():
    latency.clear_cache()
    yield
    latency.clear_cache()


def test_flops_savings_follow_the_pairs() -> None:
    savings = candidate_savings(CANDIDATES, SHAPE, window, measure=False)
    assert list(savings) == [name for name, *_ in CANDIDATES]
    assert savings["full"] == 0.0 and savings["full_cfg"] == 0.5 and savings["reuse"] == 1.0
    pair = {name: window(name).pair_count() / LAYOUT.n_tokens**2 for name in FRACTIONS}
    for name, fraction in pair.items():
        assert savings[name] == pytest.approx(1 - fraction)
    # A narrower window keeps fewer pairs, so it saves more; CFG sharing halves the window's cost.
    assert savings["arrow_8"] > savings["arrow_4"] > savings["arrow_2"] > 0.0
    assert savings["arrow_4_cfg"] == pytest.approx(1 - 0.5 * pair["arrow_4"])


def test_measured_savings_are_savings() -> None:
    savings = candidate_savings(CANDIDATES, SHAPE, window, min_run_time=0.01)
    assert list(savings) == [name for name, *_ in CANDIDATES]
    assert savings["full"] == 0.0 and savings["full_cfg"] == 0.5 and savings["reuse"] == 1.0
    assert all(0.0 <= s <= 1.0 for s in savings.values())
    assert head_latency_ms(SHAPE, None, 0.01) > 0.0


def test_measurements_are_cached_per_shape_and_pattern(monkeypatch: pytest.MonkeyPatch) -> None:
    """One timing per (shape, pattern): dense once, each distinct window once, nothing on a repeat."""
    timed: list[str] = []

    def fake(call, min_run_time: float) -> float:
        timed.append(min_run_time)
        return 1.0 if len(timed) % 2 else 4.0   # windows alternate with dense below: any positive value
    monkeypatch.setattr(latency, "_median_seconds", fake)
    candidate_savings(CANDIDATES, SHAPE, window, min_run_time=0.01)
    assert len(timed) == 1 + len(FRACTIONS)   # arrow_4_cfg shares arrow_4's pattern
    candidate_savings(CANDIDATES, SHAPE, window, min_run_time=0.01)
    assert len(timed) == 1 + len(FRACTIONS)
    other = AttentionShape(batch=2, heads=2, tokens=LAYOUT.n_tokens, head_dim=8)
    candidate_savings([("arrow_8", "window")], other, window, min_run_time=0.01)
    assert len(timed) == 3 + len(FRACTIONS)


def test_slower_than_dense_saves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(latency, "head_latency_ms", lambda shape, pattern, t: 3.0 if pattern else 1.0)
    assert candidate_savings([("arrow_8", "window", 0.5)], SHAPE, window) == {"arrow_8": 0.0}


@pytest.mark.parametrize(("candidates", "match"), [
    ([("a", "sparse")], "kind must be one of"),
    ([("a", "dense", 0.0)], r"cond_fraction must lie in \(0, 1\]"),
    ([("a", "dense", 1.5)], r"cond_fraction must lie in \(0, 1\]"),
    ([("a", "dense"), ("a", "reuse")], "names must be unique"),
    (["dense"], r"\(name, kind\)"),
])
def test_bad_candidates(candidates, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        candidate_savings(candidates, SHAPE, window, measure=False)


def test_window_needs_its_pattern_at_the_shape() -> None:
    with pytest.raises(ValueError, match="pass window="):
        candidate_savings([("arrow_8", "window")], SHAPE, measure=False)
    short = AttentionShape(batch=1, heads=2, tokens=LAYOUT.n_tokens - 1, head_dim=8)
    with pytest.raises(ValueError, match="pattern is for 72 tokens, the shape has 71"):
        candidate_savings([("arrow_8", "window")], short, window, measure=False)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"heads": 0}, "integers >= 1"),
    ({"tokens": 2.5}, "integers >= 1"),
    ({"dtype": torch.int32}, "floating torch.dtype"),
])
def test_bad_shape(kwargs: dict, match: str) -> None:
    base = {"batch": 1, "heads": 2, "tokens": 16, "head_dim": 8}
    with pytest.raises(ValueError, match=match):
        AttentionShape(**{**base, **kwargs})
