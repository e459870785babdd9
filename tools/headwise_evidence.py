"""Evidence for head-wise plans (DiTFastAttnV2): do windowed heads save time, and do head-wise plans
beat layer-wise ones at the same attention FLOPs?

    python3 -m tools.headwise_evidence [--comfyui PATH] [--quick] [--threads 1 2] [--parts kernels host]
        [--json OUT.json]

1. Kernel latency per head pattern on the CPU, through the engine (``FastAttention`` with a head-wise
   ``Schedule``): (B=2 with cond/uncond chunks, H, N, D) fp32 self-attention over a 1 x s x s image grid
   where k of the H heads run ARROW (the plain window on image-only tokens) and the rest FULL, for a band
   and a neighbourhood window. Latency is a fraction of the per-layer FULL call, timed in the same round
   (configurations interleaved, rounds >= 5, medians with min-max over rounds), beside the FLOPs
   fraction the engine reports (``stats.flops_fraction``); ``lat/FLOPs`` near 1 means the saved FLOPs
   are saved time. One row windows every other head (interleaved) instead of the first k: the engine
   gathers such heads into copies, the row shows what the copies cost.
2. Tiny random-weight MMDiT models of the real host classes (SD3, Flux, Qwen-Image; ``tests/
   comfy_models.py`` with more heads and tokens than the tests use) through real ComfyUI samplers: the
   fast search calibrated layer-wise at several δ, and head-wise at a δ bisected until its plan's
   attention FLOPs match the layer-wise plan's; for each plan the rel-L1 of the final latent against the
   unpatched sample (same seed), the FLOPs the plan promises against those the engines spent, and the
   search cost in generations. Skipped when ComfyUI is not found (``--comfyui`` or ``COMFYUI_PATH``).

``--quick`` shrinks both parts to toy sizes (seconds; ``tests/test_headwise_evidence.py`` runs it): its
timings mean nothing. Random weights: rel-L1 measures how far each plan moves this one network's output,
so it compares how the two searches spend an error budget; it says nothing about image quality (no
trained attention, no locality for the window to exploit).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import logging
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from ditfa_core.context import COND_UNCOND, CallContext
from ditfa_core.engine import FastAttention
from ditfa_core.metrics import rel_l1
from ditfa_core.schedule import Cell, Schedule
from ditfa_core.strategies import Strategy
from ditfa_core.windows import TokenLayout, WindowSpec
from tools.benchmarks.common import environment, markdown_table, write_json

log = logging.getLogger(__name__)

TESTS_DIR = Path(__file__).resolve().parents[1] / "tests"


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Everything one run measures; ``FULL`` is the brief's configuration, ``QUICK`` a toy one."""

    side: int               # image grid 1 x side x side: N = side^2 tokens
    heads: int
    head_dim: int
    rounds: int             # timed rounds; each runs every configuration once
    kinds: tuple[str, ...]  # window shapes, each at ``fraction``
    fraction: float
    host_heads: int         # heads of the tiny ComfyUI models
    latent: int             # latent side (image tokens = (latent / 2)^2)
    steps: int
    layer_deltas: tuple[float, ...]
    bisections: int         # head-wise calibrations per pairing, at most
    tolerance: float        # |FLOPs(head) - FLOPs(layer)| that ends the bisection
    families: tuple[str, ...] = ("sd3", "flux", "qwen_image")
    device: str = "cpu"     # where the kernel part runs (the GPU check passes "cuda")
    dtype: torch.dtype = torch.float32


FULL = Sizes(64, 24, 64, 5, ("band", "nbhd"), 1 / 8, 8, 32, 8, (0.1, 0.3), 6, 0.01)
QUICK = Sizes(16, 4, 16, 2, ("band",), 1 / 8, 2, 16, 3, (0.5,), 1, 0.05, ("flux",))


# -- the machine -------------------------------------------------------------------------------------


def load() -> str:
    """``uptime``'s line (who else is using the machine), else the load averages."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def machine() -> dict[str, Any]:
    return {**environment(torch.device("cpu")), "load": load()}


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


# -- 1. kernel latency per head pattern ---------------------------------------------------------------


def head_patterns(heads: int) -> dict[str, Cell]:
    """Name -> cell: the per-layer FULL baseline, then k = 0, H/4, H/2, 3H/4, H heads ARROW (the first
    k, the rest FULL), then H/2 heads ARROW interleaved (every other head)."""
    arrow, full = Strategy.ARROW, Strategy.FULL
    cells: dict[str, Cell] = {"FULL (per-layer cell)": full}
    for k in sorted({heads * i // 4 for i in range(5)}):
        cells[f"{k}/{heads} ARROW, contiguous"] = (arrow,) * k + (full,) * (heads - k)
    cells[f"{heads // 2}/{heads} ARROW, interleaved"] = tuple(arrow if h % 2 else full for h in range(heads))
    return cells


def windowed(cell: Cell) -> int:
    return 0 if isinstance(cell, Strategy) else sum(s is Strategy.ARROW for s in cell)


def inputs(sizes: Sizes, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, CallContext]:
    """Random (2, H, N, D) q, k, v of ``sizes.dtype`` on ``sizes.device`` and the call: layer 0, step 0,
    cond/uncond chunks, 1 x s x s grid."""
    n = sizes.side**2
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, sizes.heads, n, sizes.head_dim, generator=gen).to(sizes.device, sizes.dtype)
               for _ in range(3))
    return q, k, v, CallContext(0, 0, COND_UNCOND, TokenLayout(n, grid=(1, sizes.side, sizes.side)))


def kernel_rows(sizes: Sizes, kind: str, threads: int) -> list[dict[str, Any]]:
    """One row per head pattern: latency and its fraction of the per-layer FULL call (same round),
    the engine's FLOPs fraction, and their ratio."""
    torch.set_num_threads(threads)
    q, k, v, ctx = inputs(sizes)
    window = WindowSpec(kind, sizes.fraction)
    cells = head_patterns(sizes.heads)
    engines = {name: FastAttention(Schedule(((cell,),)), window) for name, cell in cells.items()}
    sync = torch.cuda.synchronize if q.is_cuda else (lambda: None)
    calls = {name: (lambda e=e: (e(q, k, v, ctx), sync())) for name, e in engines.items()}
    for call in calls.values():   # warm-up: the kernel choice, the resolved window
        call()
    flops = {name: e.stats.flops_fraction for name, e in engines.items()}
    ms: dict[str, list[float]] = {name: [] for name in cells}
    names = list(cells)
    for r in range(sizes.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:   # rotate who goes first
            t0 = time.perf_counter()
            calls[name]()
            ms[name].append((time.perf_counter() - t0) * 1e3)
    base = ms[names[0]]
    rows = []
    for name, cell in cells.items():
        frac = spread([t / b for t, b in zip(ms[name], base, strict=True)])
        rows.append({
            "window": f"{kind} {sizes.fraction:g}", "threads": threads, "pattern": name,
            "windowed_heads": windowed(cell), "flops_fraction": flops[name],
            "ms": spread(ms[name]), "latency_fraction": frac,
            "lat_per_flops": frac["median"] / flops[name],
        })
    return rows


def profile_call(sizes: Sizes, kind: str, threads: int, pattern: str, top: int = 12) -> str:
    """torch.profiler's table of the ``top`` ops by self CPU time for one call of ``pattern``."""
    torch.set_num_threads(threads)
    q, k, v, ctx = inputs(sizes)
    cell = head_patterns(sizes.heads)[pattern]
    engine = FastAttention(Schedule(((cell,),)), WindowSpec(kind, sizes.fraction))
    engine(q, k, v, ctx)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        engine(q, k, v, ctx)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


KERNEL_COLUMNS = [("window", "window"), ("threads", "threads"), ("pattern", "heads ARROW (rest FULL)"),
                  ("flops_fraction", "FLOPs fraction"), ("ms_text", "ms median (min-max)"),
                  ("latency_text", "latency fraction (min-max)"), ("lat_per_flops", "lat/FLOPs")]


def kernel_table(rows: list[dict[str, Any]]) -> str:
    shown = [{**r, "ms_text": "{median:.1f} ({min:.1f}-{max:.1f})".format(**r["ms"]),
              "latency_text": "{median:.3f} ({min:.3f}-{max:.3f})".format(**r["latency_fraction"])}
             for r in rows]
    return markdown_table(shown, KERNEL_COLUMNS)


# -- 2. layer-wise vs head-wise plans through real ComfyUI ---------------------------------------------


@dataclasses.dataclass
class Host:
    """The pieces of a bootstrapped ComfyUI this part uses: the pack's modules and the tests' models."""

    models: ModuleType   # tests/comfy_models.py
    calibrate: ModuleType
    apply: ModuleType
    version: str


def load_host(path: str | None) -> Host | str:
    """The host, or why it cannot be used (ComfyUI not found or not importable)."""
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))
    comfy_host = importlib.import_module("comfy_host")
    try:
        root = comfy_host.bootstrap_comfyui(Path(path) if path else None)
    except comfy_host.ComfyUIUnavailable as exc:
        return str(exc)
    pack = comfy_host.load_pack()
    import comfy.utils

    comfy.utils.PROGRESS_BAR_ENABLED = False   # Calibrate's tqdm bar, once per calibration
    version = comfy_host.comfyui_version(root)
    return Host(importlib.import_module("comfy_models"), comfy_host.pack_module(pack, "nodes.calibrate"),
                comfy_host.pack_module(pack, "nodes.apply"), ".".join(map(str, version or ())))


@contextlib.contextmanager
def recording(apply: ModuleType) -> Iterator[list[Any]]:
    """Every FastAttention the Apply node builds inside the block (one per sampling run and thread)."""
    made: list[Any] = []
    base = apply.FastAttention

    class Recording(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    apply.FastAttention = Recording
    try:
        yield made
    finally:
        apply.FastAttention = base


class Pairing:
    """One tiny model: its unpatched sample, and plans calibrated, applied and scored against it."""

    def __init__(self, host: Host, family: str, sizes: Sizes, seed: int = 0) -> None:
        self.host, self.family, self.sizes, self.seed = host, family, sizes, seed
        tiny = host.models.make_model(family, heads=sizes.host_heads)
        shape = (1, 16, 1, sizes.latent, sizes.latent) if tiny.latent.dim() == 5 else (1, 16, sizes.latent,
                                                                                         sizes.latent)
        self.tiny = dataclasses.replace(tiny, latent=torch.zeros(shape))
        self.reference = self._sample(self.tiny.patcher)
        self.calibrations = 0

    def _sample(self, patcher: Any) -> torch.Tensor:
        t = self.tiny
        return self.host.models.sample(patcher, t.latent, t.positive, t.negative, steps=self.sizes.steps,
                                       cfg=4.0, seed=self.seed)

    def calibrate(self, delta: float, granularity: str) -> Any:
        self.calibrations += 1
        plan, _ = self.host.calibrate.calibrate(
            self.tiny.patcher, self.tiny.positive, self.tiny.negative, {"samples": self.tiny.latent},
            seed=self.seed, steps=self.sizes.steps, cfg=4.0, sampler_name="euler", scheduler="simple",
            denoise=1.0, delta=delta, window=WindowSpec("band", self.sizes.fraction), search="fast",
            granularity=granularity)
        return plan

    def score(self, plan: Any, label: str) -> dict[str, Any]:
        """Apply ``plan``, sample, and compare with the unpatched sample and with the plan's promise."""
        with recording(self.host.apply) as engines:
            out = self._sample(self.host.apply.apply_plan(self.tiny.patcher, plan))
        spent = sum(e.stats.flops for e in engines) / sum(e.stats.full_flops for e in engines)
        cells = [c for row in plan.grid for c in row]
        return {"family": self.family, "plan": label, "delta": plan.calibration.delta,
                "heads": plan.model.num_heads, "flops_promised": plan.cost.attn_flops_fraction,
                "flops_spent": spent, "rel_l1": rel_l1(self.reference, out),
                "generations": plan.calibration.generations, "search_s": plan.calibration.seconds,
                "head_cells": sum(isinstance(c, tuple) for c in cells), "cells": len(cells),
                "fallbacks": sum(e.stats.fallbacks for e in engines)}

    def matched(self, start: float, target: float) -> tuple[Any, int]:
        """The head-wise plan whose attention FLOPs are nearest ``target`` and the calibrations it took
        (at most ``sizes.bisections``): from δ = ``start``, δ x/÷ 4 until the target is bracketed (a
        larger δ compresses more), then bisection in log δ between the nearest plans on either side."""
        first, seen = self.calibrations, []   # (log δ, FLOPs - target, plan)
        x = math.log(start)
        for _ in range(self.sizes.bisections):
            plan = self.calibrate(math.exp(x), "head")
            gap = plan.cost.attn_flops_fraction - target
            seen.append((x, gap, plan))
            if abs(gap) <= self.sizes.tolerance:
                break
            above = [s[0] for s in seen if s[1] > 0]   # too many FLOPs left: δ must grow
            below = [s[0] for s in seen if s[1] < 0]
            if not below:
                x = max(above) + math.log(4)
            elif not above:
                x = min(below) - math.log(4)
            else:
                x = (max(above) + min(below)) / 2
        return min(seen, key=lambda s: abs(s[1]))[2], self.calibrations - first


def host_rows(host: Host, sizes: Sizes, report: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    rows = []
    for family in sizes.families:
        pairing = Pairing(host, family, sizes)
        for delta in sizes.layer_deltas:
            layer = pairing.score(pairing.calibrate(delta, "layer"), "layer-wise")
            plan, tries = pairing.matched(delta, layer["flops_promised"])
            head = pairing.score(plan, "head-wise")
            head["bisections"] = tries
            for row in (layer, head):
                row["tokens"] = (sizes.latent // 2) ** 2
                row["pair"] = f"δ_layer={delta:g}"
                report(row)
                rows.append(row)
    return rows


HOST_COLUMNS = [("family", "model"), ("heads", "heads"), ("tokens", "image tokens"), ("pair", "pair"),
                ("plan", "plan"), ("delta", "δ"), ("flops_promised", "FLOPs promised"),
                ("flops_spent", "FLOPs spent"), ("rel_l1", "rel-L1 vs unpatched"),
                ("head_cells", "head-wise cells"), ("generations", "search generations"),
                ("search_s", "search s"), ("bisections", "δ tries")]


# -- the command -------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", help="ComfyUI checkout (default: COMFYUI_PATH)")
    parser.add_argument("--quick", action="store_true", help="toy sizes: proves the script runs")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--parts", nargs="+", default=["kernels", "host"], choices=["kernels", "host"])
    parser.add_argument("--json", default="headwise_evidence.json", help="where to write the results")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    result: dict[str, Any] = {"machine": machine(), "sizes": dataclasses.asdict(sizes), "quick": args.quick}
    print(f"machine: {result['machine']['cpu']}, {os.cpu_count()} CPUs, torch {torch.__version__}; "
          f"{result['machine']['load']}")
    threads = torch.get_num_threads()
    try:
        result["kernels"] = run_kernels(sizes, args.threads) if "kernels" in args.parts else None
        result["host"] = run_host(args.comfyui, sizes) if "host" in args.parts else None
    finally:
        torch.set_num_threads(threads)
    result["machine"]["load_after"] = load()
    print(f"\nload after: {result['machine']['load_after']}")
    write_json(args.json, result)
    return result


def run_kernels(sizes: Sizes, threads: Sequence[int]) -> dict[str, Any]:
    n = sizes.side**2
    print(f"\n## Kernel latency per head pattern: B=2 (cond/uncond), H={sizes.heads}, N={n} "
          f"(grid 1x{sizes.side}x{sizes.side}), D={sizes.head_dim}, {sizes.dtype}, {sizes.device}, "
          f"{sizes.rounds} rounds\n")
    rows = [r for t in threads for kind in sizes.kinds for r in kernel_rows(sizes, kind, t)]
    print(kernel_table(rows))
    worst = max(rows, key=lambda r: r["lat_per_flops"])
    out: dict[str, Any] = {"rows": rows, "load": load()}
    if worst["lat_per_flops"] > 1.5 and sizes is not QUICK:
        kind = worst["window"].split()[0]
        out["profile"] = {"pattern": worst["pattern"], "window": worst["window"], "threads": worst["threads"],
                          "table": profile_call(sizes, kind, worst["threads"], worst["pattern"])}
        print(f"\nprofile of '{worst['pattern']}', {worst['window']}, {worst['threads']} threads "
              f"(lat/FLOPs {worst['lat_per_flops']:.2f}):\n{out['profile']['table']}")
    return out


def run_host(path: str | None, sizes: Sizes) -> dict[str, Any] | None:
    host = load_host(path)
    if isinstance(host, str):
        print(f"\n## Host part skipped: {host}")
        return {"skipped": host}
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    print(f"\n## Layer-wise vs head-wise at matched attention FLOPs: ComfyUI {host.version}, random weights, "
          f"{sizes.host_heads} heads, latent {sizes.latent}x{sizes.latent}, {sizes.steps} euler steps, "
          "cfg 4, band 1/8\n")
    t0 = time.perf_counter()
    rows = host_rows(host, sizes, lambda r: log.info("%s", r))
    print(markdown_table(rows, HOST_COLUMNS))
    return {"comfyui": host.version, "rows": rows, "seconds": time.perf_counter() - t0}


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
