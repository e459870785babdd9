"""The reference DiT's quality judge: the "not a digit" outcome, paired comparisons, Table 1's pieces.

Fast: synthetic scores, tiny random-weight models; the measured numbers live in the README.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ditfa_core.reference import DigitClassifier, DigitCNN, DiT, DiTConfig, FeatureStats
from ditfa_core.reference import table1 as t1
from ditfa_core.reference.classifier import FEATURE_DIM, NOT_A_DIGIT, non_digits
from ditfa_core.reference.fastattn import calibrate, generate
from ditfa_core.reference.quality import EvalSet, Interval, PairedEvaluator, Row, Scores, compare, sample_set
from ditfa_core.strategies import Strategy as S


def biased_classifier(winner: int) -> DigitClassifier:
    """A classifier that answers ``winner`` for every image."""
    net = DigitCNN()
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.copy_(torch.arange(11.0) == winner)
    return DigitClassifier(net)


def test_non_digits_are_images_of_four_kinds() -> None:
    images = non_digits(8, torch.Generator().manual_seed(0))
    assert images.shape == (8, 1, 32, 32)
    assert images.min() >= -1 and images.max() <= 1
    blank, noise = images[0], images[1]
    assert (blank < -0.9).all()          # a blank is background everywhere
    assert noise.std() > blank.std()
    assert not torch.equal(images[2], images[6])   # random, not a fixed template


def test_an_image_judged_not_a_digit_is_wrong_for_every_label() -> None:
    judge = biased_classifier(NOT_A_DIGIT)
    images = torch.zeros(20, 1, 32, 32)
    labels = torch.arange(20) % 10
    assert judge.class_accuracy(images, labels) == 0.0
    assert judge.not_a_digit_rate(images) == 1.0
    assert judge.per_class_accuracy(images, labels) == [0.0] * 10


def test_per_class_accuracy() -> None:
    judge = biased_classifier(3)
    labels = torch.tensor([3, 3, 1, 2])
    acc = judge.per_class_accuracy(torch.zeros(4, 1, 32, 32), labels)
    assert acc[3] == 1.0 and acc[1] == 0.0 and np.isnan(acc[0])


def synthetic(correct: np.ndarray, seed: int = 0, shift: float = 0.0) -> Scores:
    rng = np.random.default_rng(seed)
    n = len(correct)
    return Scores(correct, np.zeros(n, bool), rng.normal(size=(n, 4)) + shift, np.arange(n) % 10)


def real_stats() -> FeatureStats:
    return FeatureStats(np.zeros(4), np.eye(4), 1000)


def test_paired_comparison_of_identical_runs_is_exactly_zero() -> None:
    raw = synthetic(np.random.default_rng(1).random(200) < 0.9)
    c = compare(raw, raw, real_stats(), resamples=200)
    assert (c.accuracy_delta.low, c.accuracy_delta.high) == (0.0, 0.0)
    assert (c.fid_delta.low, c.fid_delta.high) == (0.0, 0.0)


def test_paired_interval_sees_a_small_drop_an_unpaired_one_would_miss() -> None:
    """10 of 400 samples turn wrong: -2.5 points, an interval clear of zero because it is paired."""
    correct = np.random.default_rng(2).random(400) < 0.8
    worse = correct.copy()
    worse[np.flatnonzero(correct)[:10]] = False
    c = compare(synthetic(correct), synthetic(worse), real_stats(), resamples=500)
    assert c.accuracy_delta.value == pytest.approx(-0.025)
    assert c.accuracy_delta.low <= -0.025 <= c.accuracy_delta.high < 0


def test_fid_delta_is_positive_when_features_move_away_from_real() -> None:
    raw = synthetic(np.ones(300, bool))
    moved = synthetic(np.ones(300, bool), shift=0.5)
    c = compare(raw, moved, real_stats(), resamples=200)
    assert c.fid_delta.value == pytest.approx(4 * 0.25, abs=0.3)
    assert c.fid_delta.low > 0


def test_compare_refuses_unpaired_sets() -> None:
    with pytest.raises(ValueError, match="equal sample counts"):
        compare(synthetic(np.ones(10, bool)), synthetic(np.ones(12, bool)), real_stats())


def tiny() -> DiT:
    torch.manual_seed(0)
    return DiT(DiTConfig.preset("tiny")).eval()


def test_every_configuration_sees_the_same_noise() -> None:
    model = tiny()
    evalset = EvalSet(6, steps=2)
    assert torch.equal(evalset.noise(model), EvalSet(6, steps=5).noise(model))   # noise depends on seed only
    whole = sample_set(model, evalset, batch=4).images
    assert torch.equal(whole, sample_set(model, evalset, batch=4).images)
    alone = generate(model, evalset.labels[4:], steps=2, cfg=evalset.cfg, noise=evalset.noise(model)[4:])
    assert torch.equal(alone.images, whole[4:])


def test_a_search_restricted_to_one_technique_uses_only_it() -> None:
    outcome = calibrate(tiny(), [1, 2], mode="fast", delta=0.5, steps=4, cfg=3.0, candidates=(S.AST,))
    used = {cell for row in outcome.grid for cell in row}
    assert used <= {S.FULL, S.AST} and S.AST in used


def test_restricted_candidates_must_be_known_strategies() -> None:
    with pytest.raises(ValueError, match="non-empty subset"):
        calibrate(tiny(), [1], steps=2, candidates=(S.FULL,))


def test_matched_flops_bisects_delta_towards_the_target(monkeypatch) -> None:
    """FLOPs fall as delta grows: the bisection must land within tolerance of the target."""
    seen: list[float] = []

    class Outcome:
        def __init__(self, delta: float) -> None:
            self.delta, self.grid = delta, ()

    def search(m, c, mode, delta, cand, **_):
        seen.append(delta)
        return Outcome(delta)

    monkeypatch.setattr(t1, "search", search)
    monkeypatch.setattr(t1, "plan_flops", lambda m, c, o: 1.0 / (1.0 + 20 * o.delta))
    found = t1.matched(None, t1.Calib(), (S.AST,), target=0.6, tolerance=0.01)
    assert abs(1.0 / (1.0 + 20 * found.delta) - 0.6) <= 0.01
    assert len(seen) <= 8


def test_versus_is_the_paired_difference_to_a_baseline_configuration() -> None:
    torch.manual_seed(0)
    model = DiT(dataclasses.replace(DiTConfig.preset("mnist"), depth=2, zero_init=False)).eval()
    judge = DigitClassifier(DigitCNN(), FeatureStats(np.zeros(FEATURE_DIM), np.eye(FEATURE_DIM), 1000))
    ev = PairedEvaluator(model, judge, EvalSet(6, steps=2), resamples=50)
    ast = ev.sample("ast", ((S.FULL, S.FULL), (S.AST, S.AST)))
    assert ev.score("ast", ast).versus is None
    against_raw = ev.score("ast", ast, baseline=("raw", ev.raw_samples))
    v = against_raw.versus
    assert v.baseline == "raw" and v.baseline_flops == 1.0
    assert v.comparison.fid_delta == against_raw.comparison.fid_delta      # raw as baseline: the same numbers
    assert v.comparison.rel_l1 == against_raw.comparison.rel_l1 > 0
    itself = ev.score("ast", ast, baseline=("ast", ast)).versus.comparison
    assert itself.fid_delta == itself.accuracy_delta == Interval(0.0, 0.0, 0.0) and itself.rel_l1 == 0.0


def test_headwise_rows_match_the_layerwise_plans_flops_and_are_paired_with_them(monkeypatch) -> None:
    """A head-wise twin per level: its layer-wise plan is searched once (also when it is a fast row),
    delta is bisected to that plan's FLOPs within one point, and the twin is scored against its samples."""
    searched, matched = [], []

    @dataclasses.dataclass
    class Outcome:
        delta: float
        generations: float = 2.0
        seconds: float = 1.0

        @property
        def grid(self) -> str:
            return f"grid {self.delta}"

    def search(model, calib, mode, delta, candidates=None, progress=None, granularity="layer"):
        searched.append((mode, delta, granularity))
        return Outcome(delta)

    def bisect(model, calib, candidates, target, tolerance, iterations, granularity):
        matched.append((candidates, target, tolerance, granularity))
        return Outcome(0.5 * (1 - target))

    class Evaluator:
        def row(self, name: str) -> Row:
            return Row(name, 1.0, None)

        def sample(self, label: str, grid: str) -> tuple[str, str]:
            return ("samples", grid)

        def score(self, name, samples, *, search_cost, search_seconds, baseline=None) -> Row:
            return Row(name, 0.0, None, search_cost, search_seconds, versus=baseline)

    monkeypatch.setattr(t1, "search", search)
    monkeypatch.setattr(t1, "matched", bisect)
    monkeypatch.setattr(t1, "plan_flops", lambda model, calib, outcome: 1 - outcome.delta)
    rows = t1.table(None, Evaluator(), t1.Calib(), fast_levels=["D2"], greedy_levels=[], alone_target=None,
                    headwise_levels=["D2", "D3"])
    assert [r.name for r in rows] == ["raw", "fast D2 (δ=0.050)", "head-wise at fast D2's FLOPs (δ=0.0250)",
                                      "fast D3 (δ=0.075)", "head-wise at fast D3's FLOPs (δ=0.0375)"]
    assert searched == [("fast", t1.D_LEVELS["D2"], "layer"), ("fast", t1.D_LEVELS["D3"], "layer")]
    assert matched == [(None, pytest.approx(0.95), 0.01, "head"), (None, pytest.approx(0.925), 0.01, "head")]
    assert rows[2].versus == ("fast D2 (δ=0.050)", ("samples", "grid 0.05"))
    assert rows[4].versus == ("fast D3 (δ=0.075)", ("samples", f"grid {t1.D_LEVELS['D3']}"))
    assert rows[1].versus is None and rows[2].search_cost == 2.0
