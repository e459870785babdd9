"""The ComfyUI adapter against real ComfyUI: every family, the hooks, the nodes.

Runs the tiny random-weight models of ``comfy_models`` through ``comfy.sample.sample`` with the pack loaded
as ComfyUI loads it (a package under its folder's name). Skips when ComfyUI is not available.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # helpers sit next to this file, not in a package

from comfy_host import load_pack
from comfy_host import pack_module as mod
from comfy_models import FACTORIES, TinyModel, make_model, sample

logger = logging.getLogger(__name__)

FAMILIES = sorted(f for f in FACTORIES if not f.startswith("lumina2"))   # Lumina 2: tests/test_comfy_2026.py
STEPS = 3


pytestmark = pytest.mark.usefixtures("unload_models")


def plan_for(pack: ModuleType, tiny: TinyModel, rows: list[str], **model: Any) -> Any:
    """A plan whose step s uses ``rows[s]`` at every layer of ``tiny``'s model."""
    plan = mod(pack, "ditfa_core.plan")
    family = mod(pack, "nodes.families").detect(tiny.patcher)
    _, n = family.layer_bases(tiny.patcher.model.diffusion_model)
    info = plan.ModelInfo(family.name, n, 2, model.pop("n_image_tokens", 1), grid=model.pop("grid", None))
    return plan.Plan(info, [[s] * n for s in rows], plan.Cost(1.0))


def apply(pack: ModuleType, tiny: TinyModel, rows: list[str], **kwargs: Any) -> Any:
    kwargs.setdefault("mode", "adapt")   # plan_for records no token layout, which strict mode compares
    return mod(pack, "nodes.apply").apply_plan(tiny.patcher, plan_for(pack, tiny, rows), **kwargs)


def run(patcher: Any, tiny: TinyModel, **kwargs: Any) -> torch.Tensor:
    kwargs.setdefault("steps", STEPS)
    return sample(patcher, kwargs.pop("latent", tiny.latent), tiny.positive, tiny.negative, **kwargs)


COMPRESSED = ["FULL", "WA_RS_ASC", "AST"]


# -- every family: identity and compression ------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_family_full_plan_is_identical_and_compression_skips_work(
    pack: ModuleType, engines: list[Any], family: str
) -> None:
    """An all-FULL plan gives the unpatched output bit for bit; WA-RS + ASC at step 1 and AST at step 2
    run the window, share the CFG half and reuse outputs, and change the output (finite)."""
    tiny = make_model(family)
    ref = tiny.sample(steps=STEPS)
    assert torch.equal(run(apply(pack, tiny, ["FULL"] * STEPS), tiny), ref)
    assert engines[-1].stats.calls > 0, "attention never reached the engine"
    out = run(apply(pack, tiny, COMPRESSED), tiny)
    assert torch.isfinite(out).all()
    assert not torch.equal(out, ref)
    stats = engines[-1].stats
    assert stats.chunks["window"] > 0 and stats.chunks["share"] > 0 and stats.chunks["reuse"] > 0, stats
    assert stats.fallbacks == 0
    assert stats.flops_fraction < 0.7


# -- the hooks ---------------------------------------------------------------------------------------


def test_input_model_is_not_mutated(pack: ModuleType) -> None:
    tiny = make_model("flux")
    to_before = dict(tiny.patcher.model_options["transformer_options"])
    wrappers_before = {k: dict(v) for k, v in tiny.patcher.wrappers.items()}
    ref = tiny.sample(steps=STEPS)
    patched = apply(pack, tiny, COMPRESSED)
    assert patched is not tiny.patcher
    run(patched, tiny)
    assert tiny.patcher.model_options["transformer_options"] == to_before
    assert {k: dict(v) for k, v in tiny.patcher.wrappers.items()} == wrappers_before
    assert torch.equal(tiny.sample(steps=STEPS), ref)
    assert not any(m._forward_pre_hooks for m in tiny.patcher.model.diffusion_model.modules()), "hooks leaked"


def test_pixart_object_patch_does_not_touch_input(pack: ModuleType) -> None:
    tiny = make_model("pixart_sigma")
    patched = apply(pack, tiny, COMPRESSED)
    assert not tiny.patcher.object_patches
    assert any(k.endswith("attn.forward") for k in patched.object_patches)


def test_two_runs_in_a_row_do_not_share_state(pack: ModuleType, engines: list[Any]) -> None:
    """The same patched model at another resolution, batch size and step count gives what a fresh
    patched model gives: nothing of the first run survives into the second."""
    tiny = make_model("flux")
    patched = apply(pack, tiny, COMPRESSED)
    run(patched, tiny)
    latent = torch.zeros(2, 16, 10, 8)
    second = run(patched, tiny, latent=latent, steps=4)
    fresh = run(apply(pack, tiny, COMPRESSED), tiny, latent=latent, steps=4)
    assert torch.equal(second, fresh)
    assert len(engines) == 3 and engines[1] is not engines[0]
    assert all(not e.state.nbytes for e in engines), "caches must be freed when a run ends"


@pytest.mark.parametrize("sampler", ["heun", "dpmpp_2s_ancestral"])
def test_multi_evaluation_samplers(pack: ModuleType, engines: list[Any], sampler: str) -> None:
    tiny = make_model("wan21_t2v")
    ref = tiny.sample(steps=STEPS, sampler=sampler)
    assert torch.equal(run(apply(pack, tiny, ["FULL"] * STEPS), tiny, sampler=sampler), ref)
    out = run(apply(pack, tiny, COMPRESSED), tiny, sampler=sampler)
    assert torch.isfinite(out).all() and engines[-1].stats.chunks["reuse"] > 0


def test_denoise_below_one(pack: ModuleType, engines: list[Any]) -> None:
    tiny = make_model("sd3")
    ref = tiny.sample(steps=STEPS, denoise=0.5)
    assert torch.equal(run(apply(pack, tiny, ["FULL"] * STEPS), tiny, denoise=0.5), ref)
    out = run(apply(pack, tiny, COMPRESSED), tiny, denoise=0.5)
    assert torch.isfinite(out).all() and engines[-1].stats.chunks["reuse"] > 0


def test_cfg_one_has_no_branch_to_share(pack: ModuleType, engines: list[Any]) -> None:
    tiny = make_model("flux")
    out = run(apply(pack, tiny, COMPRESSED), tiny, cfg=1.0)
    assert torch.isfinite(out).all()
    chunks = engines[-1].stats.chunks
    assert chunks["share"] == 0 and chunks["window"] > 0 and chunks["reuse"] > 0


@pytest.mark.parametrize("family", ["flux", "hunyuan_video"])
def test_text_lengths_differ_between_cond_and_uncond(
    pack: ModuleType, engines: list[Any], family: str
) -> None:
    """Different prompt lengths: cond and uncond run as separate forwards; ASC still shares."""
    tiny = make_model(family, uncond_len=9)
    ref = tiny.sample(steps=STEPS)
    assert torch.equal(run(apply(pack, tiny, ["FULL"] * STEPS), tiny), ref)
    out = run(apply(pack, tiny, COMPRESSED), tiny)
    assert torch.isfinite(out).all()
    stats = engines[-1].stats
    assert stats.chunks["share"] > 0 and stats.fallbacks == 0, stats


def _counting_override(calls: list[int]) -> Any:
    def override(func: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return func(*args, **kwargs)
    return override


def test_override_installed_before_is_chained(pack: ModuleType, engines: list[Any]) -> None:
    tiny = make_model("flux")
    ref = tiny.sample(steps=STEPS)
    theirs: list[int] = []
    before = tiny.patcher.clone()
    before.model_options["transformer_options"]["optimized_attention_override"] = _counting_override(theirs)
    tiny.patcher = before
    out = run(apply(pack, tiny, ["FULL"] * STEPS), tiny)
    assert torch.equal(out, ref)
    assert len(theirs) == engines[-1].stats.calls > 0


def test_override_installed_after_still_gets_ours(pack: ModuleType, engines: list[Any]) -> None:
    tiny = make_model("flux")
    ref = tiny.sample(steps=STEPS)
    theirs: list[int] = []
    patched = apply(pack, tiny, ["FULL"] * STEPS)
    after = patched.clone()
    after.model_options["transformer_options"]["optimized_attention_override"] = _counting_override(theirs)
    assert torch.equal(run(after, tiny), ref)
    assert theirs and engines[-1].stats.calls == len(theirs)
    run(after, tiny)   # a second run still works and leaves the slot to theirs
    assert after.model_options["transformer_options"]["optimized_attention_override"].__name__ == "override"


# -- refusals -----------------------------------------------------------------------------------------


def test_unsupported_family_is_refused_by_name(pack: ModuleType) -> None:
    """A subclass of a supported model (here a real Wan model seen as Wan 2.2 S2V) is refused by name, with
    the reason, never patched as its base class."""
    families = mod(pack, "nodes.families")
    tiny = make_model("wan21_t2v")
    model = tiny.patcher.model
    model.__class__ = type("WAN22_S2V", (type(model),), {})
    with pytest.raises(families.UnsupportedModel, match=r"WAN22_S2V / WanModel\): .*motion-frame"):
        families.detect(tiny.patcher)


def test_plan_for_another_model_is_refused(pack: ModuleType) -> None:
    plan = plan_for(pack, make_model("sd3"), ["FULL"] * STEPS)
    with pytest.raises(mod(pack, "ditfa_core.plan").PlanError, match="family"):
        mod(pack, "nodes.apply").apply_plan(make_model("flux").patcher, plan)


def test_strict_mode_refuses_another_grid_adapt_runs(pack: ModuleType) -> None:
    tiny = make_model("flux")
    plan = plan_for(pack, tiny, COMPRESSED, n_image_tokens=48, grid=(1, 6, 8))
    apply_plan = mod(pack, "nodes.apply").apply_plan
    with pytest.raises(mod(pack, "ditfa_core.plan").PlanError, match="strict"):
        run(apply_plan(tiny.patcher, plan, mode="strict"), tiny)
    assert torch.isfinite(run(apply_plan(tiny.patcher, plan, mode="adapt"), tiny)).all()


def test_apply_without_plan_says_what_to_connect(pack: ModuleType) -> None:
    node = mod(pack, "nodes.apply").DiTFastAttnApply
    tiny = make_model("flux")
    with pytest.raises(ValueError, match="needs a plan"):
        node.execute(model=tiny.patcher, enable=True, window="auto", window_fraction=0.125,
                     cache_device="gpu", mode="strict")
    assert node.execute(model=tiny.patcher, enable=False, window="auto", window_fraction=0.125,
                        cache_device="gpu", mode="strict")[0] is tiny.patcher


# -- calibration and plan files ------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "search"),
                         [("flux", "fast"), ("pixart_sigma", "fast"), ("wan21_t2v", "greedy")])
def test_calibrate_gives_a_valid_plan(pack: ModuleType, family: str, search: str) -> None:
    tiny = make_model(family)
    calibrate = mod(pack, "nodes.calibrate").DiTFastAttnCalibrate
    out = calibrate.execute(model=tiny.patcher, positive=tiny.positive, negative=tiny.negative,
                            latent_image={"samples": tiny.latent}, seed=0, steps=STEPS, cfg=4.0,
                            sampler_name="euler", scheduler="simple", denoise=1.0, delta=0.5, window="band",
                            window_fraction=0.125, search=search)
    plan, latent = out[0], out[1]
    _, n = mod(pack, "nodes.families").detect(tiny.patcher).layer_bases(tiny.patcher.model.diffusion_model)
    assert len(plan.grid) == STEPS and all(len(row) == n for row in plan.grid)
    assert plan.model.num_layers == n and plan.model.num_heads == 2
    assert plan.calibration.search == search and plan.calibration.generations > 0
    assert type(plan).from_json(plan.to_json()) == plan
    assert latent["samples"].shape == tiny.latent.shape and torch.isfinite(latent["samples"]).all()
    assert any(s.value != "FULL" for row in plan.grid[1:] for s in row), "delta 0.5 should compress something"
    result = run(mod(pack, "nodes.apply").apply_plan(tiny.patcher, plan), tiny)
    assert torch.isfinite(result).all()


@pytest.fixture
def plans_dir(pack: ModuleType, tmp_path: Path) -> Path:
    import folder_paths

    files = mod(pack, "nodes.plan_files")
    saved = folder_paths.folder_names_and_paths.get(files.FOLDER)
    folder_paths.folder_names_and_paths[files.FOLDER] = ([str(tmp_path / "plans")], set(files.EXTENSIONS))
    (tmp_path / "plans").mkdir()
    yield tmp_path / "plans"
    if saved is None:
        folder_paths.folder_names_and_paths.pop(files.FOLDER, None)
    else:
        folder_paths.folder_names_and_paths[files.FOLDER] = saved


def test_save_and_load_round_trip(pack: ModuleType, plans_dir: Path) -> None:
    nodes = mod(pack, "nodes.plan_nodes")
    plan = plan_for(pack, make_model("flux"), COMPRESSED)
    nodes.DiTFastAttnSavePlan.execute(plan=plan, filename_prefix="tiny")
    nodes.DiTFastAttnSavePlan.execute(plan=plan, filename_prefix="tiny")
    assert sorted(p.name for p in plans_dir.iterdir()) == ["tiny_00001.json", "tiny_00002.json"]
    loaded = nodes.DiTFastAttnLoadPlan.execute(plan_file="tiny_00001.json", plan_json="")[0]
    assert loaded == plan
    pasted = nodes.DiTFastAttnLoadPlan.execute(plan_file="tiny_00002.json", plan_json=plan.to_json())[0]
    assert pasted == plan


def test_plan_paths_cannot_escape(pack: ModuleType, plans_dir: Path) -> None:
    nodes = mod(pack, "nodes.plan_nodes")
    plan_error = mod(pack, "ditfa_core.plan").PlanError
    plan = plan_for(pack, make_model("flux"), COMPRESSED)
    (plans_dir.parent / "outside.json").write_text(plan.to_json())
    (plans_dir / "link.json").symlink_to(plans_dir.parent / "outside.json")
    for name in ("../outside.json", str(plans_dir.parent / "outside.json"), "link.json"):
        with pytest.raises(plan_error):
            nodes.DiTFastAttnLoadPlan.execute(plan_file=name, plan_json="")
    for prefix in ("../up", "a/b", "..", ""):
        with pytest.raises(plan_error):
            nodes.DiTFastAttnSavePlan.execute(plan=plan, filename_prefix=prefix)
    assert [p.name for p in plans_dir.iterdir()] == ["link.json"]
    with pytest.raises(plan_error, match="not JSON"):
        nodes.DiTFastAttnLoadPlan.execute(plan_file="", plan_json="{nope")


def test_comfyui_registers_the_nodes(pack: ModuleType) -> None:
    import nodes

    load_pack(via_comfyui=True)
    for node_id in ("DiTFastAttnApply", "DiTFastAttnCalibrate", "DiTFastAttnLoadPlan", "DiTFastAttnSavePlan"):
        assert node_id in nodes.NODE_CLASS_MAPPINGS


def test_tolerates_forwards_skipped_by_easycache(pack: ModuleType, engines: list[Any]) -> None:
    """EasyCache (applied after ours) skips whole forwards: AST and WA-RS must not read stale caches."""
    from comfy_extras.nodes_easycache import EasyCacheNode

    tiny = make_model("flux")
    patched = apply(pack, tiny, ["FULL", "WA_RS_ASC", "AST", "WA_RS", "AST", "ASC"])
    cached = EasyCacheNode.execute(model=patched, reuse_threshold=3.0, start_percent=0.0, end_percent=1.0,
                                   verbose=False)[0]
    out = run(cached, tiny, steps=6)
    assert torch.isfinite(out).all()
    assert 0 < engines[-1].stats.calls < 6 * 4, "EasyCache should have skipped some forwards"


def test_cancel_mid_run_then_run_again(pack: ModuleType, engines: list[Any]) -> None:
    """ComfyUI's cancel button raises inside the sampler: the run's state and block hooks must go
    with it, and the next run must equal a fresh one."""
    import comfy.model_management

    tiny = make_model("flux")
    patched = apply(pack, tiny, COMPRESSED)

    def cancel(step: int, *_: Any) -> None:
        if step == 1:
            raise comfy.model_management.InterruptProcessingException()

    with pytest.raises(comfy.model_management.InterruptProcessingException):
        run(patched, tiny, callback=cancel)
    blocks = tiny.patcher.model.diffusion_model.modules()
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in blocks), "hooks must be removed"
    again = run(patched, tiny)
    assert torch.equal(again, run(apply(pack, tiny, COMPRESSED), tiny))
    assert all(not e.state.nbytes for e in engines)


def test_skip_layer_guidance_extra_forwards(pack: ModuleType, engines: list[Any]) -> None:
    """Core SLG adds a conditional-only forward with skipped blocks at some steps: tolerated."""
    from comfy_extras.nodes_slg import SkipLayerGuidanceDiT

    tiny = make_model("flux")
    patched = apply(pack, tiny, COMPRESSED)
    slg = SkipLayerGuidanceDiT.execute(patched, scale=3.0, start_percent=0.0, end_percent=1.0,
                                       double_layers="0", single_layers="0").result[0]
    out = run(slg, tiny)
    assert torch.isfinite(out).all()
    assert not torch.equal(out, run(patched, tiny))
    assert engines[0].stats.calls > engines[1].stats.calls   # the extra conditional forwards
