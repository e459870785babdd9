"""The engine's strategy semantics (paper §3.2-3.4), CFG layouts, fallbacks and cache hygiene."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from ditfa_core.context import COND_UNCOND, CallContext, Chunk, Role
from ditfa_core.engine import FastAttention
from ditfa_core.kernels import windowed_attention
from ditfa_core.schedule import Schedule
from ditfa_core.strategies import Strategy as S
from ditfa_core.windows import TokenLayout, WindowSpec

H, N, D = 2, 64, 16
LAYOUT = TokenLayout(N, grid=(1, 8, 8))
WINDOW = WindowSpec("band", fraction=0.25)
COND, UNCOND = COND_UNCOND


def qkv(seed: int, b: int = 2, n: int = N) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, H, n, D, generator=g) for _ in range(3))  # type: ignore[return-value]


def dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v)


def window(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: TokenLayout = LAYOUT) -> torch.Tensor:
    return windowed_attention(q, k, v, WINDOW.resolve(layout))


def ctx(step: int, chunks=(COND, UNCOND), layer: int = 0, layout: TokenLayout = LAYOUT, eval_key=None):
    return CallContext(layer=layer, step=step, chunks=tuple(chunks), layout=layout, eval_key=eval_key or step)


def engine(*rows: str, layers: int = 1) -> FastAttention:
    return FastAttention(Schedule.from_rows([[r] * layers for r in rows]), WINDOW)


def test_all_full_is_bit_identical_to_plain_attention():
    e = engine("FULL", "FULL", "FULL", layers=2)
    for step in range(3):
        for layer in range(2):
            q, k, v = qkv(10 * step + layer)
            assert torch.equal(e(q, k, v, ctx(step, layer=layer)), dense(q, k, v))
    assert e.stats.residual_refreshes == 0 and len(e.state) == 0


def test_host_scale_reaches_window_and_dense():
    """A call's own softmax scale (ComfyUI 0.33+'s ``scale``) is used by the window, the residual and
    the engine's dense kernel: WA-RS at step 1 is W_s(q1) + O_s(q0) - W_s(q0)."""
    e = engine("FULL", "WA_RS")
    scale = 0.11
    q0, k0, v0 = qkv(0)
    q1, k1, v1 = qkv(1)
    first = e(q0, k0, v0, CallContext(0, 0, COND_UNCOND, LAYOUT, 0, scale))
    torch.testing.assert_close(first, F.scaled_dot_product_attention(q0, k0, v0, scale=scale))
    out = e(q1, k1, v1, CallContext(0, 1, COND_UNCOND, LAYOUT, 1, scale))
    pattern = WINDOW.resolve(LAYOUT)
    w0, w1 = (windowed_attention(*t, pattern, scale=scale) for t in ((q0, k0, v0), (q1, k1, v1)))
    torch.testing.assert_close(out, w1 + first - w0, atol=1e-6, rtol=1e-5)


def test_wa_rs_right_after_full_equals_full():
    e = engine("FULL", "WA_RS")
    q, k, v = qkv(0)
    full = e(q, k, v, ctx(0))
    torch.testing.assert_close(e(q, k, v, ctx(1)), full, atol=1e-6, rtol=1e-6)
    assert e.stats.residual_refreshes == 2   # one per CFG chunk, at the FULL step only


def test_wa_rs_uses_the_residual_of_the_most_recent_full_step():
    e = engine("FULL", "WA_RS", "FULL", "WA_RS")
    xs = [qkv(s) for s in range(4)]
    outs = [e(*x, ctx(s)) for s, x in enumerate(xs)]
    r2 = dense(*xs[2]) - window(*xs[2])
    torch.testing.assert_close(outs[3], window(*xs[3]) + r2, atol=1e-6, rtol=1e-6)
    r0 = dense(*xs[0]) - window(*xs[0])
    torch.testing.assert_close(outs[1], window(*xs[1]) + r0, atol=1e-6, rtol=1e-6)


def test_residual_is_computed_only_when_a_later_wa_rs_step_reads_it():
    e = engine("FULL", "FULL", "AST", "FULL", "WA_RS", "WA_RS")
    for s in range(6):
        e(*qkv(s), ctx(s))
    assert e.stats.residual_refreshes == 2   # at step 3 only, for both chunks


def test_ast_returns_the_output_of_the_last_computed_step():
    e = engine("FULL", "AST", "AST")
    first = e(*qkv(0), ctx(0))
    for s in (1, 2):
        out = e(*qkv(s), ctx(s))
        assert torch.equal(out, first)
    assert e.stats.chunks["reuse"] == 4


def test_asc_in_one_batch_any_chunk_order_and_more_chunks():
    for chunks in [(COND, UNCOND), (UNCOND, COND), (UNCOND, COND, Chunk("neg2", Role.UNCOND))]:
        e = engine("ASC")
        q, k, v = qkv(1, b=2 * len(chunks))
        out = e(q, k, v, ctx(0, chunks))
        b = 2
        rows = {c.key: slice(i * b, (i + 1) * b) for i, c in enumerate(chunks)}
        expect_cond = dense(q[rows["cond"]], k[rows["cond"]], v[rows["cond"]])
        torch.testing.assert_close(out[rows["cond"]], expect_cond)
        assert torch.equal(out[rows["uncond"]], out[rows["cond"]])
        assert e.stats.chunks["share"] == len(chunks) - 1


def test_asc_never_lends_to_another_conditional_prompt():
    """DualCFG's middle prompt (OTHER) is computed; only the unconditional rows borrow."""
    chunks = (UNCOND, Chunk("middle", Role.OTHER), COND)
    e = engine("ASC")
    q, k, v = qkv(3, b=3)
    out = e(q, k, v, ctx(0, chunks))
    torch.testing.assert_close(out[1:2], dense(q[1:2], k[1:2], v[1:2]))
    assert torch.equal(out[0:1], out[2:3]) and not torch.equal(out[1:2], out[2:3])
    assert e.stats.chunks["share"] == 1


def test_caches_and_cfg_pairs_are_per_token_subset():
    """Two forwards over different parts of the latent (context windows, areas) with the same shape
    and chunk keys: neither reads the other's output, and ASC pairs only within a part."""
    a, b = (Chunk("cond", Role.COND, "w0"), Chunk("uncond", Role.UNCOND, "w0")), \
        (Chunk("cond", Role.COND, "w1"), Chunk("uncond", Role.UNCOND, "w1"))
    e = engine("FULL", "AST")
    oa, ob = e(*qkv(0), ctx(0, a)), e(*qkv(1), ctx(0, b))
    assert torch.equal(e(*qkv(2), ctx(1, a)), oa) and torch.equal(e(*qkv(3), ctx(1, b)), ob)
    e = engine("ASC")
    oc = e(*qkv(4, b=1), ctx(0, a[:1], eval_key=1))
    qu, ku, vu = qkv(5, b=1)
    torch.testing.assert_close(e(qu, ku, vu, ctx(0, b[1:], eval_key=1)), dense(qu, ku, vu))
    assert e.stats.fallbacks == 1
    assert torch.equal(e(qu, ku, vu, ctx(0, a[1:], eval_key=1)), oc)


def test_asc_separate_calls_conditional_first():
    e = engine("ASC")
    qc, kc, vc = qkv(1, b=1)
    qu, ku, vu = qkv(2, b=1)
    oc = e(qc, kc, vc, ctx(0, (COND,), eval_key="s0"))
    ou = e(qu, ku, vu, ctx(0, (UNCOND,), eval_key="s0"))
    assert torch.equal(ou, oc)
    assert e.stats.fallbacks == 0


def test_asc_unconditional_first_or_other_evaluation_falls_back(caplog):
    e = engine("ASC", "ASC")
    qu, ku, vu = qkv(2, b=1)
    with caplog.at_level(logging.INFO, logger="ditfa_core.engine"):
        ou = e(qu, ku, vu, ctx(0, (UNCOND,), eval_key="s0"))
        e(*qkv(1, b=1), ctx(0, (COND,), eval_key="s0"))
        ou2 = e(qu, ku, vu, ctx(1, (UNCOND,), eval_key="s1"))   # partner is from another evaluation
    torch.testing.assert_close(ou, dense(qu, ku, vu))
    torch.testing.assert_close(ou2, dense(qu, ku, vu))
    assert e.stats.fallbacks == 2
    assert sum("conditional" in r.message for r in caplog.records) == 1   # said once


def test_asc_with_different_text_lengths_shares_image_rows_only():
    n_img = 64
    lc = TokenLayout(6 + n_img, image_start=6, grid=(1, 8, 8))
    lu = TokenLayout(9 + n_img, image_start=9, grid=(1, 8, 8))
    e = engine("ASC")
    qc, kc, vc = qkv(1, b=1, n=lc.n_tokens)
    qu, ku, vu = qkv(2, b=1, n=lu.n_tokens)
    oc = e(qc, kc, vc, ctx(0, (COND,), layout=lc, eval_key="s0"))
    ou = e(qu, ku, vu, ctx(0, (UNCOND,), layout=lu, eval_key="s0"))
    assert torch.equal(ou[:, :, 9:], oc[:, :, 6:])
    torch.testing.assert_close(ou[:, :, :9], dense(qu[:, :, :9], ku, vu))


def test_wa_rs_asc_computes_the_conditional_window_and_shares_it():
    e = engine("FULL", "WA_RS_ASC")
    q0, k0, v0 = qkv(0)
    e(q0, k0, v0, ctx(0))
    q, k, v = qkv(1)
    out = e(q, k, v, ctx(1))
    r = dense(q0[:1], k0[:1], v0[:1]) - window(q0[:1], k0[:1], v0[:1])
    torch.testing.assert_close(out[:1], window(q[:1], k[:1], v[:1]) + r, atol=1e-6, rtol=1e-6)
    assert torch.equal(out[1:], out[:1])


def test_missing_caches_fall_back_to_full_and_say_so_once(caplog):
    e = engine("WA_RS", "AST", "WA_RS")
    with caplog.at_level(logging.INFO, logger="ditfa_core.engine"):
        for s in range(3):
            q, k, v = qkv(s)
            out = e(q, k, v, ctx(s))
            if s == 0:
                torch.testing.assert_close(out, dense(q, k, v))
    assert e.stats.fallbacks == 2   # both chunks at step 0; step 2 uses the residual step 0 refreshed
    assert sum("WA_RS fell back" in r.message for r in caplog.records) == 1


def test_caches_never_leak_across_reset_shape_grid_or_chunk():
    e = engine("FULL", "AST")
    e(*qkv(0), ctx(0))
    e.state.clear()
    q, k, v = qkv(1)
    torch.testing.assert_close(e(q, k, v, ctx(1)), dense(q, k, v))

    for other in [qkv(2, b=4), qkv(2, n=80)]:   # another batch size, another resolution
        e = engine("FULL", "AST")
        e(*qkv(0), ctx(0))
        q, k, v = other
        layout = TokenLayout(q.shape[2], grid=(1, 8, q.shape[2] // 8))
        out = e(q, k, v, ctx(1, layout=layout))
        torch.testing.assert_close(out, dense(q, k, v))

    e = engine("FULL", "AST")   # same shape, another grid: never mixes
    e(*qkv(0), ctx(0))
    q, k, v = qkv(3)
    torch.testing.assert_close(e(q, k, v, ctx(1, layout=TokenLayout(N, grid=(1, 4, 16)))), dense(q, k, v))

    e = engine("FULL", "AST")   # a chunk key never seen before gets no other chunk's cache
    e(*qkv(0, b=1), ctx(0, (Chunk("a", Role.COND),)))
    q, k, v = qkv(4, b=1)
    torch.testing.assert_close(e(q, k, v, ctx(1, (Chunk("b", Role.COND),))), dense(q, k, v))


def test_stats_count_the_attention_work_skipped():
    e = engine("FULL", "AST", "ASC", "WA_RS_ASC")
    for s in range(4):
        e(*qkv(s), ctx(s))
    st = e.stats
    assert st.chunks == {"dense": 3, "window": 1, "reuse": 2, "share": 2}
    pattern = WINDOW.resolve(LAYOUT)
    expect = (2 * N * N + 2 * pattern.pair_count() + 0 + N * N + pattern.pair_count()) / (8 * N * N)
    assert st.flops_fraction == pytest.approx(expect)


def test_layers_beyond_the_plan_and_uneven_batches_run_dense():
    e = engine("AST")
    q, k, v = qkv(0, b=3)
    torch.testing.assert_close(e(q, k, v, ctx(0, layer=5)), dense(q, k, v))
    torch.testing.assert_close(e(q, k, v, ctx(0)), dense(q, k, v))


def test_cache_device_and_byte_count():
    e = FastAttention(Schedule.from_rows([["FULL"], ["AST"]]), WINDOW, cache_device="cpu")
    first = e(*qkv(0), ctx(0))
    assert e.state.nbytes == first.numel() * first.element_size()
    assert torch.equal(e(*qkv(1), ctx(1)), first)
    e.close()
    assert e.state.nbytes == 0 and len(e.state) == 0
    assert e.stats.peak_cache_bytes == first.numel() * first.element_size()   # what the log reports


def test_peak_cache_counts_the_largest_step_boundary():
    """FULL keeps residual and output for WA-RS and AST; the peak is their sum, not what is left at
    the end (the last step keeps nothing more)."""
    e = FastAttention(Schedule.from_rows([["FULL"], ["WA_RS"], ["AST"]]), WINDOW)
    out = e(*qkv(0), ctx(0))
    held = e.state.nbytes
    assert held == 2 * out.numel() * out.element_size()
    e(*qkv(1), ctx(1))
    e(*qkv(2), ctx(2))
    e.close()
    assert e.stats.peak_cache_bytes >= held


def test_schedule_needs():
    sch = Schedule.from_rows([[x] for x in ["FULL", "WA_RS", "AST", "FULL", "ASC", "WA_RS", "FULL"]])
    assert [r[0] for r in sch.needs_residual] == [True, False, False, True, True, False, False]
    assert [r[0] for r in sch.needs_output] == [True, True, False, False, False, False, False]
    assert sch.strategy(99, 0) is S.FULL


def test_schedule_from_rows_takes_names_and_members():
    assert Schedule.from_rows([[S.FULL, "wa-rs"]]).grid == ((S.FULL, S.WA_RS),)
