"""Against real ComfyUI: the situations users of acceleration packs report (issue 10).

CFG terms split into separate forwards in either order, DualCFG's second prompt, context windows over
a long latent, strict checks at Apply, hostile plan files, torch.compile. Skips without ComfyUI.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from comfy_host import pack_module as mod
from comfy_models import TinyModel, make_model, sample


def apply_rows(pack: ModuleType, patcher: Any, rows: list[str], heads: int = 2, **kwargs: Any) -> Any:
    """``patcher`` with a plan whose step s uses ``rows[s]`` at every layer."""
    plan = mod(pack, "ditfa_core.plan")
    family = mod(pack, "nodes.families").detect(patcher)
    _, n = family.layer_bases(patcher.model.diffusion_model)
    info = plan.ModelInfo(family.name, n, heads, 1)
    grid = [[s] * n for s in rows]
    kwargs.setdefault("mode", "adapt")   # the plan records no token layout
    return mod(pack, "nodes.apply").apply_plan(patcher, plan.Plan(info, grid, plan.Cost(1.0)), **kwargs)


def short_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a GPU short of memory looks like to ComfyUI: one CFG term per forward, unconditional first."""
    import comfy.model_management

    def no_memory(dev: Any = None, torch_free_too: bool = False) -> Any:
        return (0, 0) if torch_free_too else 0

    monkeypatch.setattr(comfy.model_management, "get_free_memory", no_memory)


ASC4 = ["FULL", "ASC", "ASC", "ASC"]


# -- 1. CFG pairing does not depend on the order of forwards ----------------------------------------------


def test_asc_split_forwards_share_like_the_batched_run(
    pack: ModuleType, engines: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flux, cfg 3: the host short of memory runs uncond then cond as separate forwards; ASC must share
    the same chunks and give the batched run's output within float noise."""
    tiny = make_model("flux")
    patched = apply_rows(pack, tiny.patcher, ASC4)
    batched = sample(patched, tiny.latent, tiny.positive, tiny.negative, steps=4, cfg=3.0)
    b = engines[-1].stats
    short_memory(monkeypatch)
    split = sample(patched, tiny.latent, tiny.positive, tiny.negative, steps=4, cfg=3.0)
    s = engines[-1].stats
    assert b.chunks["share"] > 0 and b.fallbacks == 0
    assert s.chunks["share"] == b.chunks["share"] and s.fallbacks == 0, s
    assert s.flops_fraction == pytest.approx(b.flops_fraction)
    torch.testing.assert_close(split, batched, rtol=1e-4, atol=1e-5)


def dual_cfg(patcher: Any, tiny: TinyModel, middle: list, steps: int = 4, cfg: float = 3.0) -> torch.Tensor:
    """Sample with the stock DualCFGGuider (negative listed first in its conds)."""
    import comfy.sample
    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import Guider_DualCFG

    guider = Guider_DualCFG(patcher)
    guider.set_conds(tiny.positive, middle, tiny.negative)
    guider.set_cfg(cfg, cfg)
    sigmas = comfy.samplers.calculate_sigmas(patcher.get_model_object("model_sampling"), "simple", steps)
    noise = comfy.sample.prepare_noise(tiny.latent, 0)
    return guider.sample(noise, tiny.latent, comfy.samplers.sampler_object("euler"), sigmas,
                         disable_pbar=True, seed=0)


def test_dual_cfg_negative_first_with_other_text_length_still_shares(
    pack: ModuleType, engines: list[Any]
) -> None:
    """A longer negative prompt cannot be batched with the positives; DualCFGGuider runs it first."""
    tiny = make_model("flux", uncond_len=9)
    out = dual_cfg(apply_rows(pack, tiny.patcher, ASC4), tiny, make_model("flux", seed=7).positive)
    stats = engines[-1].stats
    assert torch.isfinite(out).all()
    assert stats.chunks["share"] > 0 and stats.fallbacks == 0, stats


def test_dual_cfg_second_prompt_is_computed_not_borrowed(pack: ModuleType, engines: list[Any]) -> None:
    """Same-length prompts run in one batch [negative, middle, positive]: only the negative borrows."""
    tiny = make_model("flux")
    patched = apply_rows(pack, tiny.patcher, ASC4)
    dual_cfg(patched, tiny, make_model("flux", seed=7).positive)
    stats = engines[-1].stats
    _, n = mod(pack, "nodes.families").detect(tiny.patcher).layer_bases(tiny.patcher.model.diffusion_model)
    assert stats.chunks["share"] == 3 * n, stats   # 3 ASC steps x n layers x one negative chunk


# -- 2. a forward over one part of the latent never reads another part's cache ---------------------------


def context_windows(patcher: Any, length: int = 2) -> Any:
    """Core context windows over the frames: static schedule, no overlap, flat fuse."""
    from comfy_extras.nodes_context_windows import ContextWindowsManualNode

    wanted = dict(model=patcher, context_length=length, context_overlap=0, context_schedule="standard_static",
                  context_stride=1, closed_loop=False, fuse_method="flat", dim=2, freenoise=False,
                  split_conds_to_windows=False, causal_window_fix=False)
    params = inspect.signature(ContextWindowsManualNode.execute).parameters
    return ContextWindowsManualNode.execute(**{k: v for k, v in wanted.items() if k in params})[0]


@pytest.mark.parametrize("rows", [["FULL", "AST", "AST", "AST", "AST"],
                                  ["FULL", "WA_RS", "AST", "FULL", "ASC"]])
def test_each_context_window_equals_that_window_sampled_alone(
    pack: ModuleType, engines: list[Any], rows: list[str]
) -> None:
    tiny = make_model("wan21_t2v")
    latent = torch.zeros(1, 16, 4, 8, 12)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(3))
    patched = apply_rows(pack, tiny.patcher, rows)

    def go(model: Any, part: slice) -> torch.Tensor:
        import comfy.sample

        return comfy.sample.sample(model, noise[:, :, part], 5, 3.0, "euler", "simple", tiny.positive,
                                   tiny.negative, latent[:, :, part], disable_pbar=True, seed=0)

    whole = go(context_windows(patched), slice(None))
    assert engines[-1].stats.fallbacks == 0
    for part in (slice(0, 2), slice(2, 4)):
        torch.testing.assert_close(whole[:, :, part], go(patched, part), rtol=1e-5, atol=1e-6)


# -- 4. strict mode checks everything it promises ------------------------------------------------------


def flux_plan(pack: ModuleType, tiny: TinyModel, **model: Any) -> Any:
    """An all-FULL plan for tiny Flux whose model info is exact unless overridden in ``model``."""
    plan = mod(pack, "ditfa_core.plan")
    info = dict(family="flux", num_layers=4, num_heads=2, n_image_tokens=24, n_text_tokens=6, grid=(1, 4, 6))
    info.update(model)
    return plan.Plan(plan.ModelInfo(**info), [["FULL"] * 4] * 3, plan.Cost(1.0))


def test_apply_refuses_other_heads_before_sampling(pack: ModuleType) -> None:
    tiny = make_model("flux")
    apply_plan = mod(pack, "nodes.apply").apply_plan
    for mode in ("strict", "adapt"):
        plan_error = mod(pack, "ditfa_core.plan").PlanError
        with pytest.raises(plan_error, match="heads: plan has 4, model has 2") as e:
            apply_plan(tiny.patcher, flux_plan(pack, tiny, num_heads=4), mode=mode)
        assert "strict" not in str(e.value) or mode == "strict"


def test_strict_lists_every_layout_difference_adapt_runs(pack: ModuleType) -> None:
    tiny = make_model("flux")
    apply_plan = mod(pack, "nodes.apply").apply_plan
    ref = tiny.sample(steps=3)
    assert torch.equal(sample(apply_plan(tiny.patcher, flux_plan(pack, tiny)), tiny.latent, tiny.positive,
                              tiny.negative, steps=3), ref)
    other_text = flux_plan(pack, tiny, n_text_tokens=9)
    plan_error = mod(pack, "ditfa_core.plan").PlanError
    with pytest.raises(plan_error, match=r"n_text_tokens: plan has 9, model has 6"):
        sample(apply_plan(tiny.patcher, other_text), tiny.latent, tiny.positive, tiny.negative, steps=3)
    other_all = flux_plan(pack, tiny, n_text_tokens=9, n_image_tokens=48, grid=(1, 6, 8))
    with pytest.raises(plan_error) as err:
        sample(apply_plan(tiny.patcher, other_all), tiny.latent, tiny.positive, tiny.negative, steps=3)
    for part in ("n_image_tokens: plan has 48, model has 24", "n_text_tokens: plan has 9, model has 6",
                 "grid: plan has (1, 6, 8), model has (1, 4, 6)", "adapt"):
        assert part in str(err.value)
    out = sample(apply_plan(tiny.patcher, other_all, mode="adapt"), tiny.latent, tiny.positive, tiny.negative,
                 steps=3)
    assert torch.equal(out, ref)


# -- 5. plan files: the Load list holds what loads; a Save prefix is one line -----------------------------


@pytest.fixture
def plans_dir(pack: ModuleType, tmp_path: Path) -> Any:
    import folder_paths

    files = mod(pack, "nodes.plan_files")
    saved = folder_paths.folder_names_and_paths.get(files.FOLDER)
    folder = tmp_path / "plans"
    folder.mkdir()
    folder_paths.folder_names_and_paths[files.FOLDER] = ([str(folder)], set(files.EXTENSIONS))
    yield folder
    if saved is None:
        folder_paths.folder_names_and_paths.pop(files.FOLDER, None)
    else:
        folder_paths.folder_names_and_paths[files.FOLDER] = saved


def test_load_list_holds_exactly_the_plans_that_load(pack: ModuleType, plans_dir: Path) -> None:
    files = mod(pack, "nodes.plan_files")
    text = flux_plan(pack, make_model("flux")).to_json()
    (plans_dir / "good.json").write_text(text)
    (plans_dir / "sub").mkdir()
    (plans_dir / "sub" / "deeper.json").write_text(text)
    (plans_dir / "link.json").symlink_to(plans_dir / "good.json")
    (plans_dir / "dangling.json").symlink_to(plans_dir / "missing.json")
    (plans_dir / "loop.json").symlink_to(plans_dir / "loop.json")
    (plans_dir / "loopdir").symlink_to(plans_dir)
    (plans_dir / "linkdir").symlink_to(plans_dir / "sub")
    listed = files.list_plans()
    assert listed == ["good.json", "sub/deeper.json"]
    for name in listed:
        assert files.load_plan(name).model.family == "flux"
    for name in ("link.json", "dangling.json", "loop.json", "loopdir/good.json", "linkdir/deeper.json",
                 "../plans/good.json", "sub/../good.json"):
        with pytest.raises(mod(pack, "ditfa_core.plan").PlanError, match="no plan named"):
            files.load_plan(name)


@pytest.mark.parametrize("prefix", ["plan\n", "plan\r", "\nplan", "a" * 101, "a/b", "..", "", "pl\x00an"])
def test_save_prefix_is_one_plain_name(pack: ModuleType, plans_dir: Path, prefix: str) -> None:
    plan = flux_plan(pack, make_model("flux"))
    with pytest.raises(mod(pack, "ditfa_core.plan").PlanError, match="filename prefix"):
        mod(pack, "nodes.plan_nodes").DiTFastAttnSavePlan.execute(plan=plan, filename_prefix=prefix)
    assert not any(plans_dir.parent.rglob("*.json"))


# -- 6. torch.compile: the engine's bookkeeping is never traced ----------------------------------------


@pytest.mark.slow
def test_torch_compile_does_not_recompile_per_step_or_run(pack: ModuleType, engines: list[Any]) -> None:
    """The host's compile wrapper (backend eager: dynamo's guards without inductor's codegen): a 6-step
    run with every strategy must not hit the recompile limit (a guard on the engine's float FLOPs
    counter did, and step-dependent engine state), a second run compiles nothing new, and the engine
    still counts its work."""
    import logging

    import torch._dynamo
    from comfy_api.torch_helpers import set_torch_compile_wrapper
    from torch._dynamo.utils import counters

    warnings: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warnings.append(record.getMessage())

    torch._dynamo.reset()
    counters.clear()
    tiny = make_model("flux")
    model = apply_rows(pack, tiny.patcher, ["FULL", "WA_RS_ASC", "AST", "WA_RS", "ASC", "FULL"]).clone()
    set_torch_compile_wrapper(model=model, backend="eager")
    handler = Catch(logging.WARNING)
    logging.getLogger("torch._dynamo").addHandler(handler)
    try:
        first = sample(model, tiny.latent, tiny.positive, tiny.negative, steps=6)
        graphs = counters["stats"]["unique_graphs"]
        again = sample(model, tiny.latent, tiny.positive, tiny.negative, steps=6)
    finally:
        logging.getLogger("torch._dynamo").removeHandler(handler)
        torch._dynamo.reset()
    assert not [w for w in warnings if "recompile_limit" in w or "cache_size_limit" in w], warnings
    assert counters["stats"]["unique_graphs"] == graphs, "the second run recompiled"
    assert torch.equal(first, again)
    stats = engines[-1].stats
    assert stats.calls > 0 and stats.chunks["share"] > 0 and stats.chunks["window"] > 0, stats
