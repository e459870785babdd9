"""Quality on the committed reference DiT: a calibrated plan keeps FID and class accuracy.

The shipped plan ``plans/reference_dit_D3.json`` was calibrated with ``python -m ditfa_core
calibrate --delta 0.075`` (paper D3). Measured on the 2-core CI CPU with these 40 samples: attention
FLOPs 38.5%, FID 172.8 -> 189.1 (+9.5%), class accuracy 17.5% -> 17.5%, rel-L1 0.032. The limits
leave room for other CPUs' rounding; they are to be tightened once the reference is trained longer.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ditfa_core.metrics import rel_l1
from ditfa_core.plan import Plan
from ditfa_core.reference import load_reference, weights_available
from ditfa_core.reference.fastattn import calibrate, generate

PLAN = Path(__file__).resolve().parents[1] / "plans" / "reference_dit_D3.json"
SAMPLES, STEPS, CFG = 40, 20, 4.0
MAX_FLOPS = 0.60            # design target: quality holds at <= 60% of the attention FLOPs
MAX_FID_RATIO = 1.15        # design target 1.10; measured 1.095, plus a margin for other machines
MAX_ACCURACY_DROP = 0.05    # class accuracy within 5 points on 40 samples (one sample = 2.5 points)
MAX_REL_L1 = 0.06           # images stay close to the uncompressed ones (measured 0.032)

pytestmark = pytest.mark.skipif(not weights_available(), reason="reference weights not committed")


@pytest.fixture(scope="module")
def reference():
    return load_reference()


@pytest.mark.slow   # 80 generations of the committed model: minutes on 2 cores; CI runs it in its slow step
def test_shipped_plan_keeps_quality(reference):
    model, classifier = reference
    plan = Plan.load(PLAN)
    labels = torch.arange(SAMPLES) % 10
    raw = generate(model, labels, steps=STEPS, cfg=CFG)
    fast = generate(model, labels, plan.resampled(STEPS), steps=STEPS, cfg=CFG)
    assert fast.stats.fallbacks == 0
    assert fast.stats.flops_fraction <= MAX_FLOPS
    fid_raw, fid_fast = classifier.fid(raw.images), classifier.fid(fast.images)
    acc_raw = classifier.class_accuracy(raw.images, labels)
    acc_fast = classifier.class_accuracy(fast.images, labels)
    assert fid_fast <= MAX_FID_RATIO * fid_raw, (fid_raw, fid_fast)
    assert acc_fast >= acc_raw - MAX_ACCURACY_DROP, (acc_raw, acc_fast)
    assert rel_l1(raw.images, fast.images) <= MAX_REL_L1


def test_fast_search_costs_at_most_three_generations_on_the_reference(reference):
    model, _ = reference
    outcome = calibrate(model, torch.arange(4), mode="fast", delta=0.075, steps=10, cfg=CFG)
    assert outcome.generations <= 3.0
    assert any(s.value != "FULL" for row in outcome.grid for s in row)
