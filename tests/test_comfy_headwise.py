"""Head-wise plans (DiTFastAttnV2) through real ComfyUI: SD3, Flux and Qwen-Image (MMDiT, text + image).

Apply runs them on real ModelPatcher clones and samplers; Calibrate searches them with ``granularity``
"head". Skips when ComfyUI is not available (set COMFYUI_PATH).
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from comfy_host import pack_module as mod
from comfy_models import TinyModel, make_model, sample

MMDIT = ["sd3", "flux", "qwen_image"]
STEPS = 3


pytestmark = pytest.mark.usefixtures("unload_models")


def headwise_plan(pack: ModuleType, tiny: TinyModel, rows: list[Any], heads: int = 2) -> Any:
    """A plan whose step s uses ``rows[s]`` (a name, or a list of per-head names) at every layer."""
    plan = mod(pack, "ditfa_core.plan")
    family = mod(pack, "nodes.families").detect(tiny.patcher)
    _, n = family.layer_bases(tiny.patcher.model.diffusion_model)
    info = plan.ModelInfo(family.name, n, heads, 1)
    return plan.Plan(info, [[cell] * n for cell in rows], plan.Cost(1.0))


def run(pack: ModuleType, tiny: TinyModel, rows: list[Any]) -> torch.Tensor:
    patched = mod(pack, "nodes.apply").apply_plan(tiny.patcher, headwise_plan(pack, tiny, rows), mode="adapt")
    return sample(patched, tiny.latent, tiny.positive, tiny.negative, steps=STEPS)


@pytest.mark.parametrize("family", MMDIT)
def test_uniform_head_cells_equal_the_layer_wise_plan(pack: ModuleType, family: str) -> None:
    """A head-wise cell whose heads all agree runs exactly what the per-layer cell runs."""
    tiny = make_model(family)
    layer_wise = run(pack, tiny, ["FULL", "WA_RS_ASC", "AST"])
    head_wise = run(pack, tiny, ["FULL", ["WA_RS_ASC"] * 2, ["AST"] * 2])
    assert torch.equal(layer_wise, head_wise)


@pytest.mark.parametrize("family", MMDIT)
def test_mixed_heads_run_and_save_the_flops_they_promise(
    pack: ModuleType, engines: list[Any], family: str
) -> None:
    """Each head takes its own strategy (arrow without residual, WA-RS, AST, CFG sharing); the FLOPs the
    engine spends are the plan's own accounting at the run's window."""
    tiny = make_model(family)
    rows = ["FULL", ["ARROW", "WA_RS_ASC"], ["AST", "WA_RS"], ["ARROW_ASC", "FULL"]]
    patched = mod(pack, "nodes.apply").apply_plan(tiny.patcher, headwise_plan(pack, tiny, rows), mode="adapt")
    out = sample(patched, tiny.latent, tiny.positive, tiny.negative, steps=len(rows))
    assert torch.isfinite(out).all()
    engine = engines[-1]
    stats = engine.stats
    assert stats.fallbacks == 0 and stats.chunks["window"] and stats.chunks["reuse"] and stats.chunks["share"]
    # One pair fraction per token layout (SD3.5's image-only x-block attention has its own); the cost
    # is monotone in it, so the run's FLOPs lie between the plan's accounting at the extremes.
    pairs = [p.pair_count() / p.layout.n_tokens**2 for p in engine._patterns.values()]
    promised = [mod(pack, "ditfa_core.flops").plan_flops_fraction(engine.schedule.grid, f) for f in pairs]
    assert min(promised) * (1 - 1e-9) <= stats.flops_fraction <= max(promised) * (1 + 1e-9)
    assert stats.flops_fraction < 0.8


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_calibrate_head_wise_then_apply(pack: ModuleType, family: str) -> None:
    tiny = make_model(family)
    calibrate = mod(pack, "nodes.calibrate").DiTFastAttnCalibrate
    out = calibrate.execute(model=tiny.patcher, positive=tiny.positive, negative=tiny.negative,
                            latent_image={"samples": tiny.latent}, seed=0, steps=STEPS, cfg=4.0,
                            sampler_name="euler", scheduler="simple", denoise=1.0, delta=0.5, window="band",
                            window_fraction=0.125, search="fast", granularity="head")
    plan = out[0]
    assert plan.model.num_heads == 2 and plan.calibration.generations <= 3
    assert type(plan).from_json(plan.to_json()) == plan
    assert any(c.value != "FULL" if not isinstance(c, tuple) else any(s.value != "FULL" for s in c)
               for row in plan.grid[1:] for c in row), "delta 0.5 should compress something"
    result = sample(mod(pack, "nodes.apply").apply_plan(tiny.patcher, plan), tiny.latent, tiny.positive,
                    tiny.negative, steps=STEPS)
    assert torch.isfinite(result).all()


def test_greedy_head_wise_calibration_is_refused_before_sampling(pack: ModuleType) -> None:
    tiny = make_model("flux")
    calibrate = mod(pack, "nodes.calibrate").DiTFastAttnCalibrate
    with pytest.raises(ValueError, match="fast search only"):
        calibrate.execute(model=tiny.patcher, positive=tiny.positive, negative=tiny.negative,
                          latent_image={"samples": tiny.latent}, seed=0, steps=STEPS, cfg=4.0,
                          sampler_name="euler", scheduler="simple", denoise=1.0, delta=0.5, window="band",
                          window_fraction=0.125, search="greedy", granularity="head")


def test_head_count_mismatch_is_refused_at_apply_naming_both(pack: ModuleType) -> None:
    tiny = make_model("sd3")
    plan = headwise_plan(pack, tiny, ["FULL", ["AST"] * 3], heads=3)
    with pytest.raises(mod(pack, "ditfa_core.plan").PlanError, match="heads: plan has 3, model has 2"):
        mod(pack, "nodes.apply").apply_plan(tiny.patcher, plan, mode="adapt")
