"""The pack on ComfyUI as people run it in 2026 (0.33+), and on 0.3.64 where the feature exists there.

New call conventions (``scale``, ``enable_gqa``, host block keys, Wan's appended latents), the 2026
families (Flux 2, Z-Image, Lumina 2 with unpadded prompts), several threads sampling one patched model,
and core's attention and step-cache nodes in the same chain. Skips with the enabling steps without a host;
tests of a 0.33+ feature skip on an older host with the reason.
"""

from __future__ import annotations

import concurrent.futures
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # helpers sit next to this file, not in a package

from comfy_host import bootstrap_comfyui, comfyui_version
from comfy_models import FACTORIES_2026, TinyModel, host_has, make_model
from test_comfy_nodes import COMPRESSED, STEPS, apply, run

pytestmark = pytest.mark.usefixtures("unload_models")


def _require_2026(what: str) -> None:
    version = comfyui_version(bootstrap_comfyui())
    if version is not None and version < (0, 33, 0):
        pytest.skip(f"{what} needs ComfyUI 0.33+, this host is {'.'.join(map(str, version))}; set "
                    "COMFYUI_PATH_2026 (tests/test_host_matrix.py) or COMFYUI_PATH to a 2026 checkout")


def assert_supported(pack: ModuleType, engines: list[Any], tiny: TinyModel) -> Any:
    """All-FULL is bit-identical to the unpatched model; a mixed plan runs, windows and reuses, and makes
    fewer dense attention calls and less attention work than the all-FULL run (how much less depends on
    the text share: Flux 2 pads its prompt to 512 tokens, which stay global). Returns the mixed engine."""
    ref = tiny.sample(steps=STEPS)
    assert torch.equal(run(apply(pack, tiny, ["FULL"] * STEPS), tiny), ref)
    full = engines[-1].stats
    assert full.calls > 0, "attention never reached the engine"
    out = run(apply(pack, tiny, COMPRESSED), tiny)
    assert torch.isfinite(out).all() and not torch.equal(out, ref)
    stats = engines[-1].stats
    assert stats.chunks["window"] > 0 and stats.chunks["reuse"] > 0, stats
    assert stats.chunks["dense"] < full.chunks["dense"] and stats.flops < full.flops, (stats, full)
    return engines[-1]


# -- families ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(FACTORIES_2026))
def test_2026_family_supported(pack: ModuleType, engines: list[Any], family: str) -> None:
    cls = FACTORIES_2026[family][0]
    if not host_has(cls):
        pytest.skip(f"this ComfyUI has no {cls} model class (added in 0.33)")
    assert_supported(pack, engines, make_model(family))


def test_lumina2_with_masks_that_keep_every_key_is_compressed(pack: ModuleType, engines: list[Any]) -> None:
    """Lumina 2 / Z-Image pass a mask on joint calls; when it hides nothing the call is unmasked. (ComfyUI
    0.3.64 drops a padded prompt's pad tokens before the joint layers, so its joint mask keeps every key
    even then; 0.33 passes no caption mask.)"""
    assert_supported(pack, engines, make_model("lumina2_unpadded"))


def test_wan_appended_context_latents_stay_outside_the_window(pack: ModuleType, engines: list[Any]) -> None:
    """Wan 0.33+ appends in-context latents after the video tokens: they stay global, the window covers
    exactly the video tokens."""
    _require_2026("Wan context_latents")
    tiny = make_model("wan21_t2v")
    extra = torch.randn(1, 16, 1, 8, 12, generator=torch.Generator().manual_seed(5))
    for cond in (tiny.positive, tiny.negative):
        cond[0][1] = {**cond[0][1], "context_latents": [extra]}
    engine = assert_supported(pack, engines, tiny)
    n_video, n_extra = 3 * 4 * 6, 1 * 4 * 6
    layouts = list(engine._patterns)
    assert layouts and all((lay.image_start, lay.image_end, lay.n_tokens) == (0, n_video, n_video + n_extra)
                           for lay in layouts), layouts


# -- call conventions --------------------------------------------------------------------------------------


def _flux_attention(monkeypatch: pytest.MonkeyPatch, call: Callable[..., Any]) -> None:
    """Route Flux's attention calls through ``call(real_attention, q, k, v, heads, **kwargs)``."""
    import comfy.ldm.flux.math as flux_math

    real = flux_math.optimized_attention
    monkeypatch.setattr(flux_math, "optimized_attention", lambda *a, **kw: call(real, *a, **kw))


def _run_with(pack: ModuleType, monkeypatch: pytest.MonkeyPatch, call: Callable[..., Any],
              rows: list[str]) -> torch.Tensor:
    with monkeypatch.context() as m:
        _flux_attention(m, call)
        tiny = make_model("flux")
        return run(apply(pack, tiny, rows), tiny) if rows else tiny.sample(steps=STEPS)


SCALE = 0.07


def _with_scale(real: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, **kw: Any) -> Any:
    return real(q, k, v, heads, scale=SCALE, **kw)


def _prescaled(real: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, **kw: Any) -> Any:
    return real(q * (SCALE * q.shape[-1] ** 0.5), k, v, heads, **kw)


def _gqa(real: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, **kw: Any) -> Any:
    return real(q, k[:, :1], v[:, :1], heads, enable_gqa=True, **kw)      # (B, 1, L, D) k/v, skip_reshape


def _repeated(real: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, **kw: Any) -> Any:
    return real(q, k[:, :1].expand_as(k), v[:, :1].expand_as(v), heads, **kw)


@pytest.mark.parametrize(("call", "same"), [(_with_scale, _prescaled), (_gqa, _repeated)],
                         ids=["scale", "gqa"])
def test_host_call_keywords_are_honoured(pack: ModuleType, engines: list[Any],
                                         monkeypatch: pytest.MonkeyPatch, call: Any, same: Any) -> None:
    """A call with ``scale`` (or GQA k/v with ``enable_gqa``) gives the unpatched output bit for bit under an
    all-FULL plan, and under a mixed plan what the same attention written without the keyword gives."""
    _require_2026("the scale/enable_gqa keywords of the attention backends")
    ref = _run_with(pack, monkeypatch, call, [])
    assert torch.equal(_run_with(pack, monkeypatch, call, ["FULL"] * STEPS), ref)
    out = _run_with(pack, monkeypatch, call, COMPRESSED)
    assert engines[-1].stats.chunks["window"] > 0
    torch.testing.assert_close(out, _run_with(pack, monkeypatch, same, COMPRESSED), atol=2e-4, rtol=1e-3)
    assert not torch.allclose(out, ref, atol=2e-4)


def test_host_block_keys_replace_the_pre_hooks(pack: ModuleType, engines: list[Any]) -> None:
    """Where the host reports ``block_type``/``block_index`` (0.33+), the pack's pre-hooks go after the
    first block; on 0.3.64 they tag every block for the whole run."""
    tiny = make_model("flux")
    dm = tiny.patcher.model.diffusion_model
    hooked: list[bool] = []

    def look(step: int, *_: Any) -> None:
        hooked.append(any(b._forward_pre_hooks for b in (*dm.double_blocks, *dm.single_blocks)))

    ref = tiny.sample(steps=STEPS)
    assert torch.equal(run(apply(pack, tiny, ["FULL"] * STEPS), tiny, callback=look), ref)
    reports = comfyui_version(bootstrap_comfyui()) >= (0, 33, 0)
    assert hooked and all(h is not reports for h in hooked), hooked
    run(apply(pack, tiny, COMPRESSED), tiny)
    assert engines[-1].stats.chunks["window"] > 0 and engines[-1].stats.fallbacks == 0


# -- threads ------------------------------------------------------------------------------------------------


def _split_wrapper(pools: list[concurrent.futures.ThreadPoolExecutor] | None) -> Callable[..., torch.Tensor]:
    """A model function wrapper that runs each CFG chunk as its own forward, chunk i always on worker
    ``pools[i]`` (persistent threads, as ComfyUI's MultiGPUThreadPool keeps one per device), all at once;
    with ``pools=None`` one after the other on the calling thread."""

    def wrapper(apply_model: Callable[..., torch.Tensor], args: dict[str, Any]) -> torch.Tensor:
        x, t, c, roles = args["input"], args["timestep"], args["c"], args["cond_or_uncond"]
        n = len(roles)
        b = x.shape[0] // n

        def chunk(i: int) -> torch.Tensor:
            rows = slice(i * b, (i + 1) * b)
            ci = {key: val[rows] if isinstance(val, torch.Tensor) and val.shape[:1] == x.shape[:1] else val
                  for key, val in c.items()}
            to = dict(c["transformer_options"])
            to["cond_or_uncond"], to["uuids"] = [roles[i]], [to["uuids"][i]]
            ci["transformer_options"] = to
            return apply_model(x[rows], t[rows], **ci)

        if pools is None:
            return torch.cat([chunk(i) for i in range(n)])
        futures = [pools[i % len(pools)].submit(chunk, i) for i in range(n)]
        return torch.cat([f.result() for f in futures])

    return wrapper


def test_two_threads_sample_one_patched_model(pack: ModuleType, engines: list[Any]) -> None:
    """Several devices sampling one patched model (ComfyUI 0.33+ multi-GPU) call attention from two threads
    at once: each thread runs its own engine, and the result equals the same chunks run one after another."""
    tiny = make_model("wan21_t2v")
    rows = ["FULL", "WA_RS", "AST"]   # no CFG sharing: the chunks are independent, so the outputs must agree
    sequential = apply(pack, tiny, rows)
    sequential.set_model_unet_function_wrapper(_split_wrapper(None))
    expected = run(sequential, tiny)
    pools = [concurrent.futures.ThreadPoolExecutor(max_workers=1) for _ in range(2)]
    try:
        threaded = apply(pack, tiny, rows)
        threaded.set_model_unet_function_wrapper(_split_wrapper(pools))
        first = len(engines)
        out = run(threaded, tiny)
    finally:
        for pool in pools:
            pool.shutdown()
    assert torch.equal(out, expected)
    workers = [e for e in engines[first:] if e.stats.calls]
    assert len(workers) == 2, [e.stats for e in engines[first:]]
    assert all(e.stats.chunks["window"] > 0 and e.stats.chunks["reuse"] > 0 for e in workers)
    assert all(not e.state.nbytes for e in engines), "every thread's caches are freed when the run ends"


# -- core nodes in the same chain --------------------------------------------------------------------------


def _attention_backend(model: Any) -> Any:
    from comfy_extras.nodes_model_advanced import ModelAttentionBackend

    return ModelAttentionBackend().patch(model, "pytorch attention")[0]


@pytest.mark.parametrize("order", ["backend_then_fastattn", "fastattn_then_backend"])
def test_core_attention_backend_node_composes(pack: ModuleType, engines: list[Any], order: str) -> None:
    """Core "Model Attention Backend" writes the same override slot without chaining. Before Apply FastAttn,
    it is DiTFastAttn's dense kernel; after it, DiTFastAttn puts itself back on top for each run and uses it
    as the dense kernel. Either way: all-FULL is bit-identical to the backend node alone (whose kernel,
    PyTorch SDPA, differs from the CPU default), a mixed plan compresses."""
    _require_2026("core's Model Attention Backend node")
    tiny = make_model("flux")
    ref = run(_attention_backend(tiny.patcher), tiny)

    def chain(rows: list[str]) -> Any:
        if order == "backend_then_fastattn":
            tiny.patcher, original = _attention_backend(tiny.patcher), tiny.patcher
            try:
                return apply(pack, tiny, rows)
            finally:
                tiny.patcher = original
        return _attention_backend(apply(pack, tiny, rows))

    assert torch.equal(run(chain(["FULL"] * STEPS), tiny), ref)
    out = run(chain(COMPRESSED), tiny)
    assert torch.isfinite(out).all() and engines[-1].stats.chunks["window"] > 0


@pytest.mark.parametrize("node", ["EasyCache", "LazyCache"])
def test_core_step_caches_after_fastattn(pack: ModuleType, engines: list[Any], node: str) -> None:
    """Core EasyCache/LazyCache (applied after ours) skip whole forwards: no stale cache is read."""
    import comfy_extras.nodes_easycache as caches

    cls = caches.EasyCacheNode if node == "EasyCache" else caches.LazyCacheNode
    tiny = make_model("flux")
    patched = apply(pack, tiny, ["FULL", "WA_RS_ASC", "AST", "WA_RS", "AST", "ASC"])
    cached = cls.execute(model=patched, reuse_threshold=3.0, start_percent=0.0, end_percent=1.0,
                         verbose=False)[0]
    out = run(cached, tiny, steps=6)
    assert torch.isfinite(out).all()
    assert 0 < engines[-1].stats.calls < 6 * 4, f"{node} should have skipped some forwards"
