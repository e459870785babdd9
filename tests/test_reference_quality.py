"""Quality on the committed reference DiT: the shipped middle-delta plan keeps the same picture.

A regression in the engine, a kernel or the search shows here first. ``plans/reference_dit_D3.json``
was calibrated with ``python -m ditfa_core calibrate --delta 0.075 --eval-samples 0 --out
plans/reference_dit_D3.json`` (paper D3) on the committed weights. The limits come from paired
measurements on these exact samples (labels cycling 0-9, the evaluation set's noise of seed 0, 20 Euler
steps, cfg 4), recorded beside each limit, plus a margin for other CPUs' rounding: on 100 paired samples
one image is one accuracy point, so the margins are whole images, not percentages.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ditfa_core.plan import Plan
from ditfa_core.reference import load_reference, weights_available
from ditfa_core.reference.fastattn import calibrate
from ditfa_core.reference.quality import EvalSet, PairedEvaluator

PLAN = Path(__file__).resolve().parents[1] / "plans" / "reference_dit_D3.json"
EVALSET = EvalSet(100, steps=20, cfg=4.0, seed=0)

# Measured on the 2-core CI CPU (torch 2.13.0+cpu): raw 100/100 correct, 0 judged not a digit, FID 7.48;
# the D3 plan 48.7% of the attention FLOPs, 100/100 correct, FID 6.89 (paired difference -0.60,
# 95% CI [-1.76, +0.39]), rel-L1 0.021.
MAX_FLOPS = 0.60            # the design target: the same picture at <= 60% of the attention FLOPs
MIN_RAW_ACCURACY = 0.97     # measured 1.00, less 3 images
MAX_ACCURACY_DROP = 0.02    # measured 0.00, plus 2 images
MAX_FID_RISE = 0.10         # of the raw FID: the design target "FID within 10%" (measured -8%)
MAX_REL_L1 = 0.035          # measured 0.021, x 1.6

pytestmark = pytest.mark.skipif(not weights_available(), reason="reference weights not committed")


@pytest.fixture(scope="module")
def evaluator() -> PairedEvaluator:
    model, classifier = load_reference()
    return PairedEvaluator(model, classifier, EVALSET, resamples=200)


def test_the_reference_draws_the_requested_digits(evaluator) -> None:
    accuracy = evaluator.raw.correct.mean()
    assert accuracy >= MIN_RAW_ACCURACY, accuracy
    assert evaluator.raw.not_digit.mean() <= 0.02


def test_shipped_plan_keeps_quality(evaluator) -> None:
    plan = Plan.load(PLAN)
    window = plan.calibration.window
    assert window.kind == "band"
    row = evaluator.row("D3", plan.resampled(EVALSET.steps))
    c = row.comparison
    assert row.flops <= MAX_FLOPS, row.flops
    assert -c.accuracy_delta.value <= MAX_ACCURACY_DROP, c.accuracy_delta
    assert c.fid_delta.value <= MAX_FID_RISE * evaluator.row("raw").comparison.fid, c.fid_delta
    assert c.rel_l1 <= MAX_REL_L1, c.rel_l1


def test_fast_search_costs_at_most_three_generations_on_the_reference() -> None:
    model, _ = load_reference()
    outcome = calibrate(model, torch.arange(4), mode="fast", delta=0.075, steps=10, cfg=4.0)
    assert outcome.generations <= 3.0
    assert any(s.value != "FULL" for row in outcome.grid for s in row)
