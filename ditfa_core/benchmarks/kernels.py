"""Window attention latency versus full attention, per backend and sequence length.

The number that matters for DiTFastAttn is how much of the FLOP saving a kernel turns into time:
``latency fraction`` (windowed / full) against ``FLOPs fraction`` (visible pairs / N^2). A ratio near
1 means the kernel is as efficient per pair as dense SDPA.

    python -m ditfa_core.benchmarks.kernels [--device cpu|cuda] [--dtype fp32|bf16]
        [--tokens 1024 2048 4096 8192 16384] [--heads 4] [--head-dim 64] [--fraction 0.125]
        [--kind band|nbhd] [--backends blocked flex] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

from ..kernels import available_backends, dense_attention, select_backend, windowed_attention
from ..windows import AttentionPattern, TokenLayout, WindowSpec

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Seconds of measured runs per (N, kernel) on CPU: large N gets fewer repeats so the default run
# (five lengths, full + windowed) stays around two minutes on two cores.
CPU_BUDGET_S = 4.0


def time_ms(fn: Callable[[], torch.Tensor], device: torch.device, max_repeats: int) -> float:
    """Median milliseconds of fn after warm-up (CUDA events on GPU, wall clock on CPU)."""
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
    for _ in range(min(max_repeats, max(2, int(CPU_BUDGET_S / max(first, 1e-6)))) - 1):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def cpu_name() -> str:
    """The CPU model (Linux), else whatever platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def make_pattern(n: int, kind: str, fraction: float) -> AttentionPattern:
    """A band over n tokens, or a neighbourhood over the most square (1, h, w) grid of n tokens."""
    if kind == "band":
        return WindowSpec("band", fraction).resolve(TokenLayout(n))
    h = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return WindowSpec("nbhd", fraction).resolve(TokenLayout(n, grid=(1, h, n // h)))


def measure(n: int, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> list[dict]:
    """Rows for one sequence length: full SDPA once, then each backend's windowed attention."""
    pattern = make_pattern(n, args.kind, args.fraction)
    gen = torch.Generator().manual_seed(n)
    shape = (1, args.heads, n, args.head_dim)
    q, k, v = (torch.randn(shape, generator=gen).to(device, dtype) for _ in range(3))
    full_ms = time_ms(functools.partial(dense_attention, q, k, v), device, args.repeats)
    flops = pattern.pair_count() / n**2
    rows = []
    for backend in args.backends or [select_backend(pattern, device, dtype)]:
        window = functools.partial(windowed_attention, q, k, v, pattern, backend=backend)
        win_ms = time_ms(window, device, args.repeats)
        rows.append({"tokens": n, "backend": backend, "radius": list(pattern.radius),
                     "full_ms": full_ms, "window_ms": win_ms, "latency_fraction": win_ms / full_ms,
                     "flops_fraction": flops, "latency_per_flops": win_ms / full_ms / flops})
        print_row(rows[-1])
    return rows


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
