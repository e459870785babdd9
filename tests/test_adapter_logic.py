"""Host-free tests of the adapter's pure logic: sigma -> step, CFG chunk roles, token layouts.

The pack is imported as a package (as ComfyUI does), never as a top-level ``nodes``, which is ComfyUI's.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "comfyui_ditfastattn"   # the name comfy_host.load_pack uses, so both test files share one copy


def _pack() -> ModuleType:
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACKAGE, ROOT / "__init__.py",
                                                      submodule_search_locations=[str(ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = module
        spec.loader.exec_module(module)
    return sys.modules[PACKAGE]


def mod(name: str) -> ModuleType:
    _pack()
    return importlib.import_module(f"{PACKAGE}.{name}")


steps = mod("nodes.steps")
families = mod("nodes.families")
run_mod = mod("nodes.run")
Role = mod("ditfa_core.context").Role

SIGMAS = [1.0, 0.75, 0.5, 0.25, 0.0]


@pytest.mark.parametrize(("sigma", "step"), [
    (1.0, 0), (0.75, 1), (0.5, 2), (0.25, 3),      # euler: the schedule's own sigmas
    (0.9, 0), (0.6, 1), (0.3, 2), (0.1, 3),        # 2S / DPM-2 midpoints stay in their bracket
    (1.2, 0),                                      # s_churn raises sigma above the first
    (0.0, 3),                                      # the final sigma maps to the last row
    (0.75 * (1 + 1e-7), 1),                        # float noise on a schedule sigma
])
def test_step_for_sigma(sigma: float, step: int) -> None:
    assert steps.step_for_sigma(SIGMAS, sigma) == step


def test_step_for_sigma_denoise_schedule() -> None:
    """denoise < 1 hands the sampler the tail of a longer schedule: steps count from its start."""
    tail = [0.7595, 0.5, 0.25, 0.0]
    assert [steps.step_for_sigma(tail, s) for s in tail[:-1]] == [0, 1, 2]


def test_chunk_roles_follow_the_guiders_names() -> None:
    roles = steps.cond_roles({"positive": [{"uuid": "pos"}], "negative": [{"uuid": "neg"}]})
    chunks = steps.chunk_roles([1, 0], ["neg", "pos"], roles)
    assert [(c.key, c.role) for c in chunks] == [("neg", Role.UNCOND), ("pos", Role.COND)]


def test_chunk_roles_dual_cfg_middle_prompt_never_borrows() -> None:
    """DualCFGGuider lists [negative, middle, positive]: index 0 is not conditional, and the middle
    prompt is a conditional prompt of its own, so it must be computed, not given the positive's rows."""
    roles = steps.cond_roles({"positive": [{"uuid": "pos"}], "middle": [{"uuid": "mid"}],
                              "negative": [{"uuid": "neg"}], "empty_negative_prompt": [{"uuid": "e"}]})
    chunks = steps.chunk_roles([0, 1, 2, 3], ["neg", "mid", "pos", "e"], roles)
    assert [c.role for c in chunks] == [Role.UNCOND, Role.OTHER, Role.COND, Role.UNCOND]


def test_chunk_roles_without_guider_information() -> None:
    chunks = steps.chunk_roles([1, 0], None, None)
    assert [c.role for c in chunks] == [Role.UNCOND, Role.COND]
    assert len({c.key for c in chunks}) == 2


def _run(roles: dict, shares: bool = True) -> object:
    parts = run_mod.RunParts(lambda *a: None, lambda: None, None, lambda step: shares)
    return run_mod.Run(None, None, parts, [1.0, 0.5, 0.0], roles, None)


@pytest.mark.parametrize("order", [["pos", "neg"], ["neg", "pos"], ["neg", "mid", "pos"]])
def test_lenders_run_first_in_any_guider_order(order: list[str]) -> None:
    names = {"pos": "positive", "neg": "negative", "mid": "middle"}
    run = _run(steps.cond_roles({names[u]: [{"uuid": u}] for u in order}))
    conds = [[{"uuid": u}] for u in order]
    first, rest = run.lenders_first(conds, torch.tensor([1.0]))
    assert [c[0]["uuid"] for c in first if c] == ["pos"]
    assert sorted(c[0]["uuid"] for c in rest if c) == sorted(set(order) - {"pos"})
    assert _run({}, shares=False).lenders_first(conds, torch.tensor([1.0])) is None
    assert run.lenders_first([conds[order.index("pos")], None], torch.tensor([1.0])) is None


def test_forward_chunks_carry_their_context_window_and_area() -> None:
    run = _run(steps.cond_roles({"positive": [{"uuid": "p"}], "negative": [{"uuid": "n"}]}))
    run.family = SimpleNamespace(grid=lambda dm, shape: (1, 2, 2), appended=lambda dm, grid, conds: 0)
    run.begin_evaluation([[{"uuid": "p", "area": [2, 2, 0, 0]}], [{"uuid": "n"}]])
    to = {"cond_or_uncond": [0, 1], "uuids": ["p", "n"],
          "context_window": SimpleNamespace(index_list=[2, 3], dim=2)}
    fwd = run.forward(torch.zeros(2, 4, 2, 2), None, to)
    assert [c.tokens for c in fwd.chunks] == [((2, 2, 0, 0), (2, (2, 3))), (None, (2, (2, 3)))]


@pytest.mark.parametrize(("family", "n_tokens", "n_text", "start"), [
    ("flux", 30, 6, 6),             # [txt, img]
    ("flux", 54, 6, 6),             # [txt, img, kontext refs]
    ("sd3", 31, 7, 7),              # [txt, img]
    ("sd3", 24, 7, 0),              # SD3.5 x-self-attention: image only
    ("aura_flow", 37, 5, 13),       # [8 registers + txt, img]
    ("hunyuan_video", 29, 5, 0),    # [img, txt]
    ("hidream", 36, 4, 0),          # [img, t5 + llama]
    ("ltxv", 24, 5, 0),             # self-attention over the image
])
def test_layouts(family: str, n_tokens: int, n_text: int, start: int) -> None:
    layout = families.FAMILIES[family].layout(n_tokens, (1, 4, 6), n_text)
    assert layout is not None and layout.image_start == start and layout.grid == (1, 4, 6)


@pytest.mark.parametrize(("family", "n_tokens"), [("ltxv", 30), ("flux", 20), ("hunyuan_video", 20)])
def test_layout_that_does_not_fit_is_refused(family: str, n_tokens: int) -> None:
    assert families.FAMILIES[family].layout(n_tokens, (1, 4, 6), 6) is None


@pytest.mark.parametrize(("dm", "shape", "grid"), [
    (SimpleNamespace(patch_size=2), (1, 16, 8, 12), (1, 4, 6)),
    (SimpleNamespace(patch_size=2), (1, 16, 9, 13), (1, 5, 7)),             # padded up to whole patches
    (SimpleNamespace(patch_size=(1, 2, 2)), (1, 16, 3, 8, 12), (3, 4, 6)),  # Wan
    (SimpleNamespace(patch_size=2), (1, 16, 1, 8, 12), (1, 4, 6)),          # Qwen's 5-D latent
    (SimpleNamespace(patch_spatial=2, patch_temporal=1), (1, 16, 2, 8, 12), (2, 4, 6)),  # Cosmos
    (SimpleNamespace(patchifier=SimpleNamespace(patch_size=(1, 1, 1))), (1, 128, 2, 4, 6), (2, 4, 6)),
])
def test_grid(dm: object, shape: tuple[int, ...], grid: tuple[int, int, int]) -> None:
    assert families.FAMILIES["flux"].grid(dm, shape) == grid


def test_sd3_counts_the_extra_self_attention() -> None:
    joint_blocks = torch.nn.ModuleList([torch.nn.Module(), torch.nn.Module()])
    joint_blocks[0].x_block = SimpleNamespace(x_block_self_attn=True)
    dm = SimpleNamespace(joint_blocks=joint_blocks)
    blocks, n = families.FAMILIES["sd3"].layer_bases(dm)
    assert n == 3 and [(base, calls) for _, base, calls in blocks] == [(0, 2), (2, 1)]


@pytest.mark.parametrize(("cls", "reason"), [
    ("WAN22_S2V", "motion-frame tokens"), ("LTXAV", "audio"), ("HunyuanVideo15", "ByT5"),
    ("Kandinsky5", "visual blocks"), ("WAN21_Vace", "VACE"), ("ChromaRadiance", "pixel-space"),
    ("SDXL", "not one of the supported"),
])
def test_detect_refuses_unknown_models_by_name(cls: str, reason: str) -> None:
    patcher = SimpleNamespace(model=type(cls, (), {"diffusion_model": None})())
    with pytest.raises(families.UnsupportedModel, match=rf"\({cls} / .*{reason}"):
        families.detect(patcher)


@pytest.mark.parametrize("cls", ["Lumina2", "Flux2", "WAN22"])
def test_2026_classes_are_supported(cls: str) -> None:
    patcher = SimpleNamespace(model=type(cls, (), {"diffusion_model": None})())
    assert families.detect(patcher).name in families.FAMILIES


def test_wan_appended_latents_stay_global() -> None:
    """Wan 0.33+ appends in-context latents after the image: the window stays on the image tokens."""
    wan = families.FAMILIES["wan"]
    dm = SimpleNamespace(patch_size=(1, 2, 2))
    grid = (3, 4, 6)
    extra = {"context_latents": [torch.zeros(1, 16, 1, 8, 12), torch.zeros(1, 16, 2, 8, 12)]}
    n_after = wan.appended(dm, grid, extra)
    assert n_after == 24 + 48
    ref = 24   # a reference frame prepended by ref_conv
    layout = wan.layout(ref + 72 + n_after, grid, 8, n_after)
    assert (layout.image_start, layout.image_end) == (ref, ref + 72)
    assert wan.appended(dm, grid, {}) == 0


def test_z_image_padding_after_the_image_stays_global() -> None:
    lumina = families.FAMILIES["lumina2"]
    dm = SimpleNamespace(pad_tokens_multiple=32)
    n_after = lumina.appended(dm, (1, 4, 6), {})
    assert n_after == 8
    layout = lumina.layout(64 + 24 + 8, (1, 4, 6), 5, n_after)
    assert (layout.image_start, layout.image_end) == (64, 88)


def test_host_block_types_map_to_block_lists() -> None:
    flux = families.FAMILIES["flux"]
    assert flux.block_list("double") == "double_blocks" and flux.block_list("single") == "single_blocks"
    assert flux.block_list("refiner") is None
    assert families.FAMILIES["cosmos_predict2"].block_list(None) == "blocks"
    assert families.FAMILIES["sd3"].block_list("double") is None


def test_a_mask_that_keeps_every_key_is_no_mask() -> None:
    keeps = mod("nodes.override").keeps_every_key
    assert keeps(torch.ones(1, 9, dtype=torch.bool)) and keeps(torch.zeros(1, 1, 9))
    assert not keeps(torch.tensor([[True, False]])) and not keeps(torch.tensor([[0.0, -1e9]]))
    assert not keeps(torch.ones(1, 9, dtype=torch.long))
