"""Window attention backends against the fp64 dense-mask reference, plus their invariants."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_mask

import ditfa_core.kernels as kernels
from ditfa_core.kernels import (
    available_backends,
    banded,
    blocked,
    dense_attention,
    flex,
    select_backend,
    tiled,
    tuning,
    windowed_attention,
)
from ditfa_core.kernels.reference import reference_attention
from ditfa_core.windows import AttentionPattern, TokenLayout, WindowSpec

CPU = torch.device("cpu")
# Compiling flex on CPU costs seconds per shape: its output tests use these shapes only.
FLEX_CASES = ["band+text", "video+text", "tile-image+text"]

# name: (layout, window, batch, heads, head_dim)
CASES = {
    "band": (TokenLayout(256), WindowSpec(radius=20), 2, 3, 64),
    "band-odd-d72": (TokenLayout(333), WindowSpec(fraction=0.2), 1, 2, 72),
    "band-one-head": (TokenLayout(191), WindowSpec(radius=7), 1, 1, 32),
    "band-r0": (TokenLayout(65), WindowSpec(radius=0), 1, 2, 16),
    "band-window-ge-n": (TokenLayout(100), WindowSpec(radius=150), 1, 2, 16),
    "band+text": (TokenLayout(333, image_start=45), WindowSpec(radius=33), 1, 2, 64),
    "band-just-wider-than-2r": (TokenLayout(90), WindowSpec(radius=44), 2, 2, 32),
    "band+text-both-sides": (TokenLayout(300, image_start=17, grid=(1, 1, 260)), WindowSpec(radius=40),
                             2, 2, 40),
    "image": (TokenLayout(24 * 20, grid=(1, 24, 20)), WindowSpec("nbhd"), 1, 2, 64),
    "image+text-odd": (TokenLayout(77 + 19 * 23, image_start=77, grid=(1, 19, 23)), WindowSpec("nbhd"),
                       1, 2, 72),
    "video+text": (TokenLayout(333, image_start=45, grid=(2, 12, 12)), WindowSpec("nbhd", radius=(1, 3, 5)),
                   1, 2, 64),
    "video-r0-axis": (TokenLayout(5 * 6 * 7, grid=(5, 6, 7)), WindowSpec("nbhd", radius=(0, 2, 3)), 1, 2, 16),
    "tile-image": (TokenLayout(32 * 24, grid=(1, 32, 24)), WindowSpec("tile"), 2, 2, 64),
    "tile-image+text": (TokenLayout(77 + 24 * 16, image_start=77, grid=(1, 24, 16)),
                        WindowSpec("tile", radius=1), 1, 2, 40),
    "tile-video+text": (TokenLayout(3 + 4 * 8 * 12 + 5, image_start=3, grid=(4, 8, 12)),
                        WindowSpec("tile", radius=(0, 1, 1)), 1, 3, 32),
    "tile-partial": (TokenLayout(23 * 19, grid=(1, 23, 19)), WindowSpec("tile", radius=1), 1, 2, 16),
    "tile-r2+text": (TokenLayout(5 + 40 * 48, image_start=5, grid=(1, 40, 48)), WindowSpec("tile", radius=2),
                     1, 2, 32),
}


def qkv(case: str, dtype: torch.dtype = torch.float32, device: torch.device = CPU, seed: int = 0):
    layout, _, b, h, d = CASES[case]
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, layout.n_tokens, d, generator=gen).to(device, dtype) for _ in range(3)]


def pattern_of(case: str) -> AttentionPattern:
    layout, spec, *_ = CASES[case]
    return spec.resolve(layout)


def assert_bf16_close(out: torch.Tensor, q, k, v, pattern: AttentionPattern) -> None:
    """flash-attn's criterion: no worse than twice torch's own low-precision error, plus slack."""
    ref = reference_attention(q, k, v, pattern)
    mask = pattern.dense_mask(q.device)
    sdpa_err = (F.scaled_dot_product_attention(q, k, v, attn_mask=mask).double() - ref).abs().max()
    err = (out.double() - ref).abs().max()
    assert err <= 2 * sdpa_err + 1e-3, (err, sdpa_err)
    assert err <= 1e-2, err


SPECIFIC = {"banded": banded, "tiled": tiled}   # backends for some patterns only


def _params(backends: list[str], cases=CASES):
    # Inductor itself trips torch.jit's deprecation warning while compiling flex.
    flex_marks = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
    marks = {"flex": flex_marks}
    return [pytest.param(b, c, id=f"{b}-{c}", marks=marks.get(b, []))
            for b in backends for c in cases if (b != "flex" or c in FLEX_CASES)
            and (b not in SPECIFIC or SPECIFIC[b].supports(pattern_of(c), CPU, torch.float32))]


@pytest.mark.parametrize(("backend", "case"), _params(available_backends(CPU, torch.float32)))
def test_fp32_matches_fp64_reference(backend: str, case: str) -> None:
    q, k, v = qkv(case)
    pattern = pattern_of(case)
    out = windowed_attention(q, k, v, pattern, backend=backend)
    ref = reference_attention(q, k, v, pattern)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("backend", "case"),
                         _params(available_backends(CPU, torch.float32),
                                 ["video+text", "band+text", "tile-image+text"]))
def test_host_scale_is_honoured(backend: str, case: str) -> None:
    """ComfyUI 0.33+ may pass its own softmax ``scale``: every backend applies it, the dense kernel too."""
    q, k, v = qkv(case)
    pattern = pattern_of(case)
    out = windowed_attention(q, k, v, pattern, backend=backend, scale=0.3)
    torch.testing.assert_close(out.double(), reference_attention(q, k, v, pattern, 0.3), atol=1e-5, rtol=1e-5)
    ref = reference_attention(q, k, v, None, 0.3)
    torch.testing.assert_close(dense_attention(q, k, v, 0.3).double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("backend", "case"),
                         _params([b for b in available_backends(CPU, torch.bfloat16) if b != "flex"]))
def test_bf16_within_flash_attn_criterion(backend: str, case: str) -> None:
    q, k, v = qkv(case, torch.bfloat16)
    pattern = pattern_of(case)
    assert_bf16_close(windowed_attention(q, k, v, pattern, backend=backend), q, k, v, pattern)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("block", [9, 1000])
def test_blocked_is_exact_for_any_tile_size(case: str, block: int) -> None:
    q, k, v = qkv(case)
    pattern = pattern_of(case)
    ref = reference_attention(q, k, v, pattern)
    out = blocked.attention(q, k, v, pattern, block=block)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_tiled_runs_2d_grids_on_strips_and_3d_grids_on_gathers() -> None:
    """Both ways of handing SDPA the window tiles are exact; a video whose time axis is one tile deep is
    a 2-D tile grid (strips), a deeper one is gathered."""
    for grid, radius, tile, strips in (((2, 8, 8), (0, 1, 1), (2, 2, 2), True),
                                       ((4, 8, 8), (1, 1, 1), (2, 2, 2), False),
                                       ((1, 12, 20), (0, 1, 2), (1, 3, 4), True)):
        layout = TokenLayout(7 + grid[0] * grid[1] * grid[2], 7, grid)
        pattern = AttentionPattern(layout, "tile", radius, tile)
        assert tiled.strided(pattern) == strips
        gen = torch.Generator().manual_seed(1)
        q, k, v = (torch.randn(1, 3, pattern.layout.n_tokens, 16, generator=gen) for _ in range(3))
        torch.testing.assert_close(tiled.attention(q, k, v, pattern).double(),
                                   reference_attention(q, k, v, pattern), atol=1e-5, rtol=1e-5)


def test_window_runs_follow_the_tile_window_rule() -> None:
    """Window starts clamp(i - R, 0, n - k): constant at the borders, advancing by one inside."""
    assert tiled.window_starts(8, 5, 2) == [0, 0, 0, 1, 2, 3, 3, 3]
    assert tiled.window_runs(8, 5, 2) == [(0, 3, 0, 0), (3, 6, 1, 1), (6, 8, 3, 0)]
    assert tiled.window_runs(3, 3, 1) == [(0, 3, 0, 0)]
    assert tiled.window_runs(6, 3, 1) == [(0, 2, 0, 0), (2, 5, 1, 1), (5, 6, 3, 0)]


def test_window_covering_sequence_equals_dense() -> None:
    q, k, v = qkv("band-window-ge-n")
    pattern = pattern_of("band-window-ge-n")
    assert pattern.is_full
    dense = dense_attention(q, k, v)
    torch.testing.assert_close(windowed_attention(q, k, v, pattern), dense, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(blocked.attention(q, k, v, pattern, block=64), dense, atol=1e-6, rtol=1e-6)
    video = AttentionPattern(TokenLayout(210, grid=(5, 6, 7)), "nbhd", (4, 5, 6))
    q, k, v = qkv("video-r0-axis")
    torch.testing.assert_close(blocked.attention(q, k, v, video, block=32), dense_attention(q, k, v),
                               atol=1e-6, rtol=1e-6)


def test_arrow_without_global_tokens_equals_plain_window() -> None:
    q, k, v = qkv("band")
    n = q.shape[2]
    plain = AttentionPattern(TokenLayout(n), "band", (0, 0, 20))
    arrow = AttentionPattern(TokenLayout(n, image_start=0, grid=(1, 1, n)), "band", (0, 0, 20))
    assert arrow.layout.n_global == 0
    torch.testing.assert_close(windowed_attention(q, k, v, arrow), windowed_attention(q, k, v, plain),
                               atol=0, rtol=0)


def test_per_head_patterns_equal_heads_one_at_a_time() -> None:
    layout = TokenLayout(150, image_start=6, grid=(1, 12, 12))
    heads = [WindowSpec("nbhd", radius=2).resolve(layout), None, WindowSpec(radius=9).resolve(layout),
             WindowSpec("nbhd", radius=2).resolve(layout), WindowSpec(radius=500).resolve(layout)]
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, len(heads), 150, 32, generator=gen) for _ in range(3))
    out = windowed_attention(q, k, v, heads)
    for h, p in enumerate(heads):
        one = slice(h, h + 1)
        single = dense_attention(q[:, one], k[:, one], v[:, one]) if p is None else \
            windowed_attention(q[:, one], k[:, one], v[:, one], p)
        torch.testing.assert_close(out[:, one], single, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.double(), reference_attention(q, k, v, heads), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", [c for c in CASES if banded.supports(pattern_of(c), CPU, torch.float32)])
@pytest.mark.parametrize("tile", [1, 7, 64, 1000])
def test_banded_is_exact_for_any_tile_size(case: str, tile: int) -> None:
    q, k, v = qkv(case)
    pattern = pattern_of(case)
    ref = reference_attention(q, k, v, pattern)
    out = banded.attention(q, k, v, pattern, tile=tile)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_auto_measures_once_caches_and_obeys_the_override(tmp_path, monkeypatch, caplog, request) -> None:
    monkeypatch.setenv("DITFA_KERNEL_CACHE", str(tmp_path / "choices.json"))
    monkeypatch.setattr(tuning, "_memory", {})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)    # six candidates rather than twelve (each also on one thread)
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    layout = TokenLayout(1200, image_start=8)
    pattern = WindowSpec(radius=60).resolve(layout)
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 1200, 32, generator=gen) for _ in range(3))
    ref = reference_attention(q, k, v, pattern)
    with caplog.at_level("INFO", logger="ditfa_core.kernels.tuning"):
        torch.testing.assert_close(windowed_attention(q, k, v, pattern).double(), ref, atol=1e-5, rtol=1e-5)
        windowed_attention(q, k, v, pattern)
    assert sum("window kernel for" in r.message for r in caplog.records) == 1, "measured once"
    timed = next(r.message for r in caplog.records if "window kernel for" in r.message)
    assert "inf" not in timed, "every candidate was timed"
    key = tuning.shape_key(pattern, q)
    stored = json.loads((tmp_path / "choices.json").read_text())[key]
    assert tuning.Choice.parse(stored).backend in {"banded", "blocked"}
    monkeypatch.setattr(tuning, "_memory", {})
    assert tuning.cached(key) == tuning.Choice.parse(stored), "read back from disk"

    monkeypatch.setenv("DITFA_WINDOW_BACKEND", "blocked:64")
    calls = []
    spy = dataclasses.replace(kernels._BACKENDS["blocked"], run=lambda *a: calls.append(a[5]) or q)
    monkeypatch.setitem(kernels._BACKENDS, "blocked", spy)
    windowed_attention(q, k, v, pattern)
    assert calls == [64]
    monkeypatch.setenv("DITFA_WINDOW_BACKEND", "blocked:x")
    with pytest.raises(ValueError, match="name:tile"):
        windowed_attention(q, k, v, pattern)
    monkeypatch.setenv("DITFA_WINDOW_BACKEND", "blocked:64@1")
    torch.set_num_threads(2)
    monkeypatch.setitem(kernels._BACKENDS, "blocked", dataclasses.replace(
        spy, run=lambda *a: calls.append(torch.get_num_threads()) or q))
    windowed_attention(q, k, v, pattern)
    assert calls[-1] == 1 and torch.get_num_threads() == 2, "one thread inside, restored after"
    monkeypatch.setenv("DITFA_WINDOW_BACKEND", "blocked:64@x")
    with pytest.raises(ValueError, match="name:tile"):
        windowed_attention(q, k, v, pattern)


def test_cpu_selection_and_errors() -> None:
    assert select_backend(pattern_of("band"), "cpu", torch.float32) == "banded"
    assert select_backend(pattern_of("band-r0"), "cpu", torch.float32) == "blocked"
    assert select_backend(pattern_of("video+text"), CPU, torch.bfloat16) == "blocked"
    assert select_backend(pattern_of("tile-image+text"), CPU, torch.float32) == "tiled"
    assert select_backend(pattern_of("tile-partial"), CPU, torch.float32) == "blocked"
    assert available_backends("cpu", torch.float32)[:3] == ["banded", "tiled", "blocked"]
    q, k, v = qkv("band")
    pattern = pattern_of("band")
    with pytest.raises(ValueError, match="unknown"):
        windowed_attention(q, k, v, pattern, backend="natten")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="not available"):
            windowed_attention(q, k, v, pattern, backend="flash_attn")
    with pytest.raises(ValueError, match="per-head"):
        windowed_attention(q, k, v, [pattern, None])
    with pytest.raises(ValueError, match="tokens"):
        windowed_attention(q, k, v, pattern_of("band-one-head"))
    with pytest.raises(ValueError, match="shape"):
        windowed_attention(q[0], k[0], v[0], pattern)


@pytest.mark.parametrize("case", ["band", "band+text-both-sides", "image+text-odd", "video+text",
                                  "video-r0-axis", "tile-image+text", "tile-partial"])
def test_flex_block_mask_covers_exactly_the_dense_mask(case: str) -> None:
    """Blocks left out hold no visible pair, full blocks hold only visible pairs, and the mask_mod
    (in the kernel's token order) reproduces the dense mask; all checked without compiling."""
    pattern = pattern_of(case)
    n = pattern.layout.n_tokens
    built = flex.block_mask(pattern, CPU)
    perm = built.perm if built.perm is not None else torch.arange(n)
    dense = pattern.dense_mask()[perm][:, perm]
    mod_mask = create_mask(built.block_mask.mask_mod, 1, 1, n, n, device="cpu")[0, 0]
    assert torch.equal(mod_mask, dense)

    nb, pad = built.block_mask.kv_indices.shape[-2], -n % flex.BLOCK
    blocks = F.pad(dense, (0, pad, 0, pad)).reshape(nb, flex.BLOCK, nb, flex.BLOCK).transpose(1, 2)
    real = F.pad(torch.ones(n, n, dtype=torch.bool), (0, pad, 0, pad))
    real = real.reshape(nb, flex.BLOCK, nb, flex.BLOCK).transpose(1, 2)
    selected = built.block_mask.to_dense()[0, 0].bool()
    full = _full_blocks(built.block_mask, nb)
    assert not (blocks.any((-1, -2)) & ~selected).any(), "a block with visible pairs was skipped"
    assert (blocks | ~real).all((-1, -2))[full].all(), "a full block holds masked pairs"
    if built.perm is None:
        # 1-D bands: the analytic bounds are exact, as create_block_mask would give.
        assert torch.equal(selected, blocks.any((-1, -2)))


def _full_blocks(block_mask, n_blocks: int) -> torch.Tensor:
    full = torch.zeros(n_blocks, n_blocks, dtype=torch.bool)
    counts, indices = block_mask.full_kv_num_blocks[0, 0], block_mask.full_kv_indices[0, 0]
    for row in range(n_blocks):
        full[row, indices[row, : counts[row]].long()] = True
    return full


def test_flex_tile_permutation_groups_compact_tiles() -> None:
    pattern = pattern_of("video+text")
    assert flex.tile_shape(pattern.grid, pattern.radius) == (2, 8, 8)
    perm = flex.block_mask(pattern, CPU).perm
    assert perm is not None and torch.equal(perm.sort().values, torch.arange(pattern.layout.n_tokens))
    assert torch.equal(perm[:45], torch.arange(45))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", list(CASES))
def test_cuda_backends_low_precision(case: str, dtype: torch.dtype) -> None:
    device = torch.device("cuda")
    pattern = pattern_of(case)
    q, k, v = qkv(case, dtype, device)
    for backend in available_backends(device, dtype):
        try:
            out = windowed_attention(q, k, v, pattern, backend=backend)
        except ValueError as err:
            assert "cannot run" in str(err)
            continue
        assert_bf16_close(out, q, k, v, pattern)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", list(CASES))
def test_cuda_fp32_backends_match_reference(case: str) -> None:
    device = torch.device("cuda")
    pattern = pattern_of(case)
    q, k, v = qkv(case, torch.float32, device)
    ref = reference_attention(q, k, v, pattern)
    for backend in available_backends(device, torch.float32):
        out = windowed_attention(q, k, v, pattern, backend=backend)
        torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    assert select_backend(pattern, device, torch.float32) == available_backends(device, torch.float32)[0]


def test_growth_study_smoke(tmp_path, capsys) -> None:
    from tools.benchmarks.kernels import main

    out = tmp_path / "bench.json"
    main(["--tokens", "256", "576", "--heads", "1", "--head-dims", "16", "--dtypes", "fp32", "--threads", "1",
          "--repeats", "1", "--json", str(out)])
    result = json.loads(out.read_text())
    assert {(r["tokens"], r["kind"]) for r in result["rows"]} >= {(256, "band"), (576, "nbhd")}
    assert any(r["backend"].startswith("auto=") for r in result["rows"])
    fits = {(f["kind"], f["backend"]) for f in result["exponents"]}
    assert ("dense", "dense") in {(k, b.split()[0]) for k, b in fits} and ("band", "auto") in fits
    assert "lat/FLOPs" in capsys.readouterr().out
