"""Window attention latency versus full attention, per backend and sequence length, and the cost of
every strategy (paper Table 2) measured on the engine.

The number that matters for DiTFastAttn is how much of the FLOP saving a kernel turns into time:
``latency fraction`` (windowed / full) against ``FLOPs fraction`` (visible pairs / N^2). A ratio near
1 means the kernel is as efficient per pair as dense SDPA.

The window table alone (one head dim):

    python -m ditfa_core.benchmarks.kernels [--device cpu|cuda] [--dtype fp32|bf16]
        [--tokens 1024 2048 4096 8192 16384] [--heads 4] [--head-dim 64] [--fraction 0.125]
        [--kind band|nbhd] [--backends blocked flex] [--threads 2] [--json out.json]

Both tables over head dims 64/72/128 (the ``kernels`` suite): ``python -m ditfa_core.benchmarks kernels``.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import statistics
import time
from collections.abc import Callable

import torch

from ..context import COND_UNCOND, CallContext
from ..engine import FastAttention
from ..kernels import available_backends, dense_attention, select_backend, windowed_attention
from ..schedule import Schedule
from ..strategies import Strategy
from ..windows import AttentionPattern, TokenLayout, WindowSpec
from .common import cpu_name, markdown_table

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Seconds of measured runs per (N, kernel) on CPU: large N gets fewer repeats so the default run
# (five lengths, full + windowed) stays around two minutes on two cores.
CPU_BUDGET_S = 4.0


def time_ms(fn: Callable[[], torch.Tensor], device: torch.device, max_repeats: int,
            budget_s: float = CPU_BUDGET_S) -> float:
    """Median milliseconds of fn after warm-up (CUDA events on GPU, wall clock on CPU, where the
    repeats stop once about ``budget_s`` seconds are spent)."""
    for _ in range(3 if device.type == "cuda" else 1):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        times = []
        for _ in range(max_repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        return statistics.median(times)
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = [first * 1e3]
    for _ in range(min(max_repeats, max(2, int(budget_s / max(first, 1e-6)))) - 1):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


VIDEO_GRID = (21, 30, 52)
"""Wan 2.1 at 480x832, 81 frames: 21 latent frames of 30x52 patches (32760 tokens)."""


def grid_layout(n: int) -> TokenLayout:
    """n image tokens on their grid: the video grid for its token count, else the most square (1, h, w)
    grid (a band flattens it, a neighbourhood uses it)."""
    if n == math.prod(VIDEO_GRID):
        return TokenLayout(n, grid=VIDEO_GRID)
    h = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return TokenLayout(n, grid=(1, h, n // h))


def make_pattern(n: int, kind: str, fraction: float) -> AttentionPattern:
    """A band over n tokens, or a neighbourhood over their grid (``grid_layout``)."""
    return WindowSpec(kind, fraction).resolve(grid_layout(n))


def backend_names(requested: list[str] | None, device: torch.device, dtype: torch.dtype) -> list[str]:
    """``--backends``: None (the caller uses what ``auto`` picks), names, or ``all`` available here."""
    if requested == ["all"]:
        return available_backends(device, dtype)
    return requested or []


def measure(n: int, args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
            report: Callable[[dict], None] | None = None) -> list[dict]:
    """Rows for one sequence length: full SDPA once, then each backend's windowed attention
    (``report`` sees each row as it is measured; default: print it)."""
    pattern = make_pattern(n, args.kind, args.fraction)
    gen = torch.Generator().manual_seed(n)
    shape = (1, args.heads, n, args.head_dim)
    q, k, v = (torch.randn(shape, generator=gen).to(device, dtype) for _ in range(3))
    full_ms = time_ms(functools.partial(dense_attention, q, k, v), device, args.repeats, args.budget)
    flops = pattern.pair_count() / n**2
    rows = []
    for backend in backend_names(args.backends, device, dtype) or [select_backend(pattern, device, dtype)]:
        window = functools.partial(windowed_attention, q, k, v, pattern, backend=backend)
        try:
            win_ms = time_ms(window, device, args.repeats, args.budget)
        except ValueError as exc:   # this backend cannot run this pattern (e.g. flash-attn and a 2-D box)
            log.info("skipped: %s", exc)
            continue
        rows.append({"tokens": n, "backend": backend, "radius": list(pattern.radius),
                     "full_ms": full_ms, "window_ms": win_ms, "latency_fraction": win_ms / full_ms,
                     "flops_fraction": flops, "latency_per_flops": win_ms / full_ms / flops})
        (report or print_row)(rows[-1])
    return rows


# (label, strategy timed at step 1, whether that step also refreshes the WA-RS residual)
STRATEGY_CASES: tuple[tuple[str, Strategy, bool], ...] = (
    ("FULL", Strategy.FULL, False),
    ("FULL+residual", Strategy.FULL, True),
    ("ASC", Strategy.ASC, False),
    ("WA-RS", Strategy.WA_RS, False),
    ("WA-RS+ASC", Strategy.WA_RS_ASC, False),
    ("AST", Strategy.AST, False),
)


def strategy_schedule(strategy: Strategy, refresh: bool) -> Schedule:
    """Step 0 FULL (it leaves the residual and output the later steps read), step 1 ``strategy``; a
    FULL step that must refresh the residual is followed by a WA-RS step 2."""
    rows = [[Strategy.FULL], [strategy]] + ([[Strategy.WA_RS]] if refresh else [])
    return Schedule(tuple(tuple(row) for row in rows))


def engine_call_row(label: str, strategy: Strategy, refresh: bool, qkv: tuple[torch.Tensor, ...],
                    window: WindowSpec, backend: str, dense_ms: float, args: argparse.Namespace,
                    device: torch.device) -> dict:
    """One layer's attention call at step 1 under ``strategy`` through the engine (a CFG batch of one
    conditional and one unconditional row), against one dense call of the same batch."""
    q, k, v = qkv
    n = q.shape[2]
    layout = grid_layout(n)
    engine = FastAttention(strategy_schedule(strategy, refresh), window, backend=backend)
    try:
        engine(q, k, v, CallContext(0, 0, COND_UNCOND, layout, eval_key=0))
        flops0, full0 = engine.stats.flops, engine.stats.full_flops
        ctx = CallContext(0, 1, COND_UNCOND, layout, eval_key=1)
        engine(q, k, v, ctx)
        flops = (engine.stats.flops - flops0) / (engine.stats.full_flops - full0)
        ms = time_ms(functools.partial(engine, q, k, v, ctx), device, args.repeats, args.budget)
        fallbacks = engine.stats.fallbacks
    finally:
        engine.close()
    uses_window = strategy.uses_window or refresh
    pattern = window.resolve(layout)
    return {"tokens": n, "heads": q.shape[1], "head_dim": q.shape[-1], "strategy": label,
            "window": window.kind if uses_window else None,
            "backend": (backend if backend != "auto" else select_backend(pattern, device, q.dtype))
            if uses_window else "dense",
            "dense_ms": dense_ms, "ms": ms, "latency_fraction": ms / dense_ms, "flops_fraction": flops,
            "latency_per_flops": ms / dense_ms / flops if flops else None, "fallbacks": fallbacks}


def strategy_rows(n: int, head_dim: int, args: argparse.Namespace, device: torch.device,
                  dtype: torch.dtype) -> list[dict]:
    """Paper Table 2 at one (N, head dim): every strategy, each window kind and backend for WA-RS."""
    gen = torch.Generator().manual_seed(n * 1000 + head_dim)
    shape = (2, args.heads, n, head_dim)
    qkv = tuple(torch.randn(shape, generator=gen).to(device, dtype) for _ in range(3))
    dense_ms = time_ms(functools.partial(dense_attention, *qkv), device, args.repeats, args.budget)
    rows = []
    for label, strategy, refresh in STRATEGY_CASES:
        if not (strategy.uses_window or refresh):
            rows.append(engine_call_row(label, strategy, refresh, qkv, WindowSpec("band", args.fraction),
                                        "auto", dense_ms, args, device))
            continue
        for kind in args.kinds:
            window = WindowSpec(kind, args.fraction)
            for backend in backend_names(args.backends, device, dtype) or ["auto"]:
                try:
                    rows.append(engine_call_row(label, strategy, refresh, qkv, window, backend, dense_ms,
                                                args, device))
                except ValueError as exc:   # the backend cannot run this window
                    log.info("skipped: %s", exc)
    return rows


# -- the ``kernels`` suite of ``python -m ditfa_core.benchmarks`` --------------------------------------

VIDEO_TOKENS = math.prod(VIDEO_GRID)

SMOKE = {"tokens": [256], "head_dims": [64, 72], "heads": 2, "repeats": 2, "budget": 0.05}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--video", action="store_true",
                        help=f"also N = {VIDEO_TOKENS} (Wan 2.1 480p, 81 frames)")
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 72, 128])
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                        help="auto: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--fraction", type=float, default=1 / 8, help="window area / image tokens")
    parser.add_argument("--kinds", nargs="+", default=["band", "nbhd"], choices=["band", "nbhd"])
    parser.add_argument("--backends", nargs="+",
                        help="window backends, or 'all' available (default: what backend='auto' picks)")
    parser.add_argument("--repeats", type=int, default=20, help="most measured runs per timing")
    parser.add_argument("--budget", type=float, default=CPU_BUDGET_S, help="CPU seconds per timing")


STRATEGY_COLUMNS = [("tokens", "N"), ("heads", "H"), ("head_dim", "D"), ("strategy", "strategy"),
                    ("window", "window"), ("backend", "backend"), ("ms", "ms"),
                    ("flops_fraction", "FLOPs frac"), ("latency_fraction", "latency frac"),
                    ("latency_per_flops", "lat/FLOPs")]
WINDOW_COLUMNS = [("tokens", "N"), ("head_dim", "D"), ("kind", "window"), ("backend", "backend"),
                  ("radius", "radius"), ("full_ms", "full ms"), ("window_ms", "window ms"),
                  ("flops_fraction", "FLOPs frac"), ("latency_fraction", "latency frac"),
                  ("latency_per_flops", "lat/FLOPs")]


def run_suite(args: argparse.Namespace, device: torch.device) -> dict:
    """Both tables for every (N, head dim): the bare window kernel vs dense SDPA, then the engine's
    cost per strategy (1 conditional + 1 unconditional batch row, as under CFG)."""
    dtype_name = args.dtype if args.dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    dtype = DTYPES[dtype_name]
    tokens = [*args.tokens, *([VIDEO_TOKENS] if args.video else [])]
    window_rows, rows = [], []
    for n in tokens:
        for d in args.head_dims:
            for kind in args.kinds:
                sub = argparse.Namespace(**{**vars(args), "kind": kind, "head_dim": d})
                for row in measure(n, sub, device, dtype, report=lambda _row: None):
                    window_rows.append({**row, "head_dim": d, "kind": kind,
                                        "radius": "x".join(map(str, row["radius"]))})
            rows += strategy_rows(n, d, args, device, dtype)
    print(f"\n### Window kernel vs dense SDPA ({dtype_name}, {args.heads} heads, batch 1)\n")
    print(markdown_table(window_rows, WINDOW_COLUMNS))
    print(f"\n### Strategies through the engine ({dtype_name}, {args.heads} heads, batch = cond + uncond)\n")
    print(markdown_table(rows, STRATEGY_COLUMNS))
    return {"settings": {"dtype": dtype_name, "tokens": tokens},
            "available_backends": available_backends(device, dtype),
            "window_rows": window_rows, "strategy_rows": rows}


def run(args: argparse.Namespace) -> dict:
    """All rows plus the context needed to compare runs (device, torch, threads)."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    rows = [row for n in args.tokens for row in measure(n, args, device, dtype)]
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "heads": args.heads,
        "head_dim": args.head_dim,
        "fraction": args.fraction,
        "kind": args.kind,
        "available_backends": available_backends(device, dtype),
        "rows": rows,
    }


HEADER = f"{'N':>6} {'backend':>11} {'radius':>13} {'full ms':>9} {'window ms':>10} {'lat frac':>9} " \
         f"{'FLOP frac':>9} {'lat/FLOP':>8}"


def print_row(row: dict) -> None:
    radius = "x".join(map(str, row["radius"]))
    print(f"{row['tokens']:>6} {row['backend']:>11} {radius:>13} {row['full_ms']:>9.2f} "
          f"{row['window_ms']:>10.2f} {row['latency_fraction']:>9.3f} {row['flops_fraction']:>9.3f} "
          f"{row['latency_per_flops']:>8.2f}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--fraction", type=float, default=1 / 8)
    parser.add_argument("--kind", default="band", choices=["band", "nbhd"])
    parser.add_argument("--backends", nargs="+", help="default: the one backend='auto' picks")
    parser.add_argument("--repeats", type=int, default=10, help="most measured runs per kernel")
    parser.add_argument("--budget", type=float, default=CPU_BUDGET_S, help="CPU seconds per kernel timing")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device={args.device} dtype={args.dtype} heads={args.heads} head_dim={args.head_dim} "
          f"fraction={args.fraction:g} kind={args.kind} threads={torch.get_num_threads()} "
          f"torch={torch.__version__}")
    print(HEADER)
    result = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
