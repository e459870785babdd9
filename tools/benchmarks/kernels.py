"""Window attention latency versus full attention, per backend and sequence length, and the cost of
every strategy (paper Table 2) measured on the engine.

The number that matters for DiTFastAttn is how much of the FLOP saving a kernel turns into time:
``latency fraction`` (windowed / full) against ``FLOPs fraction`` (visible pairs / N^2). A ratio near
1 means the kernel is as efficient per pair as dense SDPA.

Growth with size on the CPU (latency fraction and latency/FLOPs for band and neighbourhood windows
at each N, head dim, dtype and thread count, the automatic kernel beside ``blocked``, timed round-robin
with dense SDPA; then the fitted exponent of time vs N):

    python -m tools.benchmarks.kernels [--quick] [--tokens 1024 4096 16384 32768]
        [--head-dims 64 128] [--dtypes fp32 bf16] [--threads 1 2] [--kinds band nbhd] [--json out.json]

Both tables over head dims 64/72/128 (the ``kernels`` suite): ``python -m tools.benchmarks kernels``.
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

from ditfa_core.context import COND_UNCOND, CallContext
from ditfa_core.engine import FastAttention
from ditfa_core.kernels import auto_choice, available_backends, dense_attention, windowed_attention
from ditfa_core.schedule import Schedule
from ditfa_core.strategies import Strategy
from ditfa_core.windows import KINDS, AttentionPattern, TokenLayout, WindowSpec

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


def paired_ms(fns: dict[str, Callable[[], torch.Tensor]], repeats: int) -> dict[str, float]:
    """Median ms of each function, timed round-robin after one warm-up each, so that a load that
    drifts during the measurement hits every kernel alike (wall clock: CPU)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


def timed_pair(dense: Callable[[], torch.Tensor], call: Callable[[], torch.Tensor], device: torch.device,
               args: argparse.Namespace) -> tuple[float, float]:
    """(dense ms, call ms): one after the other on a GPU, round-robin on a CPU with as many rounds
    as ``args.budget`` seconds allow (at least 2, at most ``args.repeats``)."""
    if device.type == "cuda":
        return (time_ms(dense, device, args.repeats, args.budget),
                time_ms(call, device, args.repeats, args.budget))
    t0 = time.perf_counter()
    dense()
    first = time.perf_counter() - t0
    rounds = max(2, min(args.repeats, int(args.budget / max(2 * first, 1e-6))))
    ms = paired_ms({"dense": dense, "call": call}, rounds)
    return ms["dense"], ms["call"]


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
    (``report`` sees each row as it is measured)."""
    pattern = make_pattern(n, args.kind, args.fraction)
    gen = torch.Generator().manual_seed(n)
    shape = (1, args.heads, n, args.head_dim)
    q, k, v = (torch.randn(shape, generator=gen).to(device, dtype) for _ in range(3))
    full_ms = time_ms(functools.partial(dense_attention, q, k, v), device, args.repeats, args.budget)
    flops = pattern.pair_count() / n**2
    rows = []
    for backend in backend_names(args.backends, device, dtype) or ["auto"]:
        window = functools.partial(windowed_attention, q, k, v, pattern, backend=backend)
        try:
            win_ms = time_ms(window, device, args.repeats, args.budget)
        except ValueError as exc:   # this backend cannot run this pattern (e.g. flash-attn and a 2-D box)
            log.info("skipped: %s", exc)
            continue
        name = f"auto={auto_choice(q, k, v, pattern)}" if backend == "auto" else backend
        rows.append({"tokens": n, "backend": name, "radius": list(pattern.radius),
                     "full_ms": full_ms, "window_ms": win_ms, "latency_fraction": win_ms / full_ms,
                     "flops_fraction": flops, "latency_per_flops": win_ms / full_ms / flops})
        if report is not None:
            report(rows[-1])
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
                    window: WindowSpec, backend: str, args: argparse.Namespace, device: torch.device) -> dict:
    """One layer's attention call at step 1 under ``strategy`` through the engine (a CFG batch of one
    conditional and one unconditional row), against one dense call of the same batch timed with it
    (round-robin on a CPU, so that the FULL row reads 1.0 however the load drifts)."""
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
        dense_ms, ms = timed_pair(functools.partial(dense_attention, q, k, v),
                                  functools.partial(engine, q, k, v, ctx), device, args)
        fallbacks = engine.stats.fallbacks
    finally:
        engine.close()
    uses_window = strategy.uses_window or refresh
    pattern = window.resolve(layout)
    return {"tokens": n, "heads": q.shape[1], "head_dim": q.shape[-1], "strategy": label,
            "window": window.kind if uses_window else None,
            "backend": (backend if backend != "auto" else f"auto={auto_choice(q, k, v, pattern)}")
            if uses_window else "dense",
            "dense_ms": dense_ms, "ms": ms, "latency_fraction": ms / dense_ms, "flops_fraction": flops,
            "latency_per_flops": ms / dense_ms / flops if flops else None, "fallbacks": fallbacks}


def strategy_rows(n: int, head_dim: int, args: argparse.Namespace, device: torch.device,
                  dtype: torch.dtype) -> list[dict]:
    """Paper Table 2 at one (N, head dim): every strategy, each window kind and backend for WA-RS."""
    gen = torch.Generator().manual_seed(n * 1000 + head_dim)
    shape = (2, args.heads, n, head_dim)
    qkv = tuple(torch.randn(shape, generator=gen).to(device, dtype) for _ in range(3))
    rows = []
    for label, strategy, refresh in STRATEGY_CASES:
        if not (strategy.uses_window or refresh):
            rows.append(engine_call_row(label, strategy, refresh, qkv, WindowSpec("band", args.fraction),
                                        "auto", args, device))
            continue
        for kind in args.kinds:
            window = WindowSpec(kind, args.fraction)
            for backend in backend_names(args.backends, device, dtype) or ["auto"]:
                try:
                    rows.append(engine_call_row(label, strategy, refresh, qkv, window, backend, args, device))
                except ValueError as exc:   # the backend cannot run this window
                    log.info("skipped: %s", exc)
    return rows


# -- the ``kernels`` suite of ``python -m tools.benchmarks`` --------------------------------------

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
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
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


# -- the growth study: ``python -m tools.benchmarks.kernels`` ------------------------------------


def load_average() -> float | None:
    """The 1-minute load average (how busy the machine was), None where unknown."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def growth_rows(n: int, d: int, dtype_name: str, threads: int, args: argparse.Namespace) -> list[dict]:
    """Dense SDPA and each kernel for each window kind at one (N, D, dtype, threads), timed together."""
    torch.set_num_threads(threads)
    dtype = DTYPES[dtype_name]
    gen = torch.Generator().manual_seed(n + d)
    q, k, v = (torch.randn(1, args.heads, n, d, generator=gen).to(dtype) for _ in range(3))
    patterns = {kind: make_pattern(n, kind, args.fraction) for kind in args.kinds}
    fns: dict[str, Callable[[], torch.Tensor]] = {"dense": functools.partial(dense_attention, q, k, v)}
    chosen = {}
    for kind, pattern in patterns.items():
        chosen[kind] = auto_choice(q, k, v, pattern)
        for backend in ["auto", *(b for b in args.compare if b != chosen[kind])]:
            fns[f"{kind}/{backend}"] = functools.partial(windowed_attention, q, k, v, pattern,
                                                         backend=backend)
    repeats = args.repeats if n < args.long else max(1, args.repeats // 2)
    ms = paired_ms(fns, repeats)
    rows = []
    for name, window_ms in ms.items():
        if name == "dense":
            continue
        kind, backend = name.split("/")
        flops = patterns[kind].pair_count() / n**2
        rows.append({"tokens": n, "head_dim": d, "dtype": dtype_name, "threads": threads, "kind": kind,
                     "backend": f"auto={chosen[kind]}" if backend == "auto" else backend,
                     "radius": window_size(patterns[kind]), "full_ms": ms["dense"],
                     "window_ms": window_ms, "flops_fraction": flops,
                     "latency_fraction": window_ms / ms["dense"],
                     "latency_per_flops": window_ms / ms["dense"] / flops, "repeats": repeats,
                     "load": load_average()})
    return rows


def window_size(pattern: AttentionPattern) -> str:
    """The radius per axis, and the tile of a tile window (its radius counts tiles)."""
    tile = "" if pattern.tile == (1, 1, 1) else f" of tiles {'x'.join(map(str, pattern.tile))}"
    return "x".join(map(str, pattern.radius)) + tile


def exponents(rows: list[dict]) -> list[dict]:
    """Least-squares slope of log(ms) against log(N), for dense SDPA and each kernel, per series."""
    series: dict[tuple, dict[int, float]] = {}
    for r in rows:
        base = (r["head_dim"], r["dtype"], r["threads"])
        series.setdefault((*base, "dense", "dense SDPA"), {})[r["tokens"]] = r["full_ms"]
        kernel = "auto" if r["backend"].startswith("auto") else r["backend"]
        series.setdefault((*base, r["kind"], kernel), {})[r["tokens"]] = r["window_ms"]
    out = []
    for (d, dtype, threads, kind, kernel), points in series.items():
        if len(points) < 2:
            continue
        xs = [math.log(n) for n in points]
        ys = [math.log(ms) for ms in points.values()]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
        out.append({"head_dim": d, "dtype": dtype, "threads": threads, "kind": kind, "backend": kernel,
                    "tokens": "-".join(map(str, sorted(points))), "exponent": slope})
    return out


GROWTH_COLUMNS = [("tokens", "N"), ("head_dim", "D"), ("dtype", "dtype"), ("threads", "threads"),
                  ("kind", "window"), ("backend", "kernel"), ("radius", "radius"), ("full_ms", "dense ms"),
                  ("window_ms", "window ms"), ("flops_fraction", "FLOPs frac"),
                  ("latency_fraction", "latency frac"), ("latency_per_flops", "lat/FLOPs"), ("load", "load")]
EXPONENT_COLUMNS = [("kind", "window"), ("backend", "kernel"), ("head_dim", "D"), ("dtype", "dtype"),
                    ("threads", "threads"), ("tokens", "N range"), ("exponent", "time ~ N^p: p")]
QUICK = {"tokens": [1024, 4096, 16384], "repeats": 3}


def main(argv: list[str] | None = None) -> dict:
    """Latency fraction and latency/FLOPs against N for band and neighbourhood windows, head dims,
    dtypes and thread counts, then the fitted exponents of time vs N; CPU wall clock."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096, 16384, 32768])
    parser.add_argument("--quick", action="store_true",
                        help=f"CPU-sized: {QUICK} (32k dense fp32 takes minutes per point on 2 cores)")
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--fraction", type=float, default=1 / 8)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--compare", nargs="*", default=["blocked"],
                        help="kernels timed beside the automatic choice")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (halved from --long tokens)")
    parser.add_argument("--long", type=int, default=16384, help="from this N, half the rounds")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    try:
        return _study(parser, args)
    finally:
        torch.set_num_threads(threads)


def _study(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    if args.quick:
        for key, value in QUICK.items():
            if parser.get_default(key) == getattr(args, key):
                setattr(args, key, value)
    print(f"# window kernels vs dense SDPA: {cpu_name()}, torch {torch.__version__}, {args.heads} heads, "
          f"window {args.fraction:g}, load {load_average()}", flush=True)
    rows: list[dict] = []
    for n in args.tokens:
        for d in args.head_dims:
            for dtype_name in args.dtypes:
                for threads in args.threads:
                    new = growth_rows(n, d, dtype_name, threads, args)
                    rows += new
                    print(markdown_table(new, GROWTH_COLUMNS).split("\n", 2)[2], flush=True)
    fits = exponents(rows)
    print("\n" + markdown_table(rows, GROWTH_COLUMNS) + "\n\n" + markdown_table(fits, EXPONENT_COLUMNS))
    result = {"device": cpu_name(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
              "args": vars(args), "rows": rows, "exponents": fits}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
