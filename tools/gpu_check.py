"""The GPU check: everything the CPU cannot measure, in one command of at most eight minutes.

    python -m tools.gpu_check --comfyui PATH [--out DIR] [--budget 470]
    python -m tools.gpu_check --dry-run [--comfyui PATH]      # the same code on the CPU, toy sizes (CI)

Meant for a GPU machine with torch (2.11+) and Triton, where neither flash-attn nor ComfyUI need be
installed: the ComfyUI source travels with the repository and is named by ``--comfyui`` (or
``COMFYUI_PATH``); its minimal pip dependencies must import there (the preflight lists any missing).

Sections, in order, each in its own process with its own time limit (a section that finishes early
passes its spare seconds on; one that overruns is killed and the rows it wrote so far are kept):

1. ``kernel_tests``: the CUDA tests of ``tests/test_kernels.py`` (every backend against the fp64
   reference, fp32/bf16/fp16), outcome per test.
2. ``table2``: the paper's Table 2 shape (16 heads x 72, bf16) at N = 4096, 16384, 32768: every window
   backend against dense attention, then every strategy through the engine.
3. ``headwise``: head-wise cells (DiTFastAttnV2) through the engine, 24 heads x 128, bf16, N = 4096 and
   16384: latency as a share of the per-layer FULL call for 0-24 of 24 heads windowed (ARROW), vs the
   engine's FLOPs fraction (``tools.headwise_evidence``).
4. ``e2e_pixart_2k``, ``e2e_flux_1k``, ``e2e_flux_2k``: end to end through the real host with random
   weights (``tools.benchmarks.e2e``): unpatched, all-FULL, a plan at the paper's D6 FLOPs,
   EasyCache, and EasyCache with the plan, interleaved, medians with ranges.

Writes ``DIR/<section>.json`` as it goes and ``DIR/gpu_check.json`` at the end (DIR: ``--out``, else
``$OUT``, else ``gpu_check_out``), and prints the summary tables last.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("gpu_check")


@dataclass(frozen=True)
class Section:
    """A section and its share of the budget in seconds (GPU and dry run alike)."""

    name: str
    seconds: float
    title: str


SECTIONS = (
    Section("kernel_tests", 120, "CUDA kernel tests: every backend vs the fp64 reference"),
    Section("table2", 110, "Paper Table 2 shape (16 heads x 72), window kernels and strategies"),
    Section("headwise", 40, "Head-wise plans: latency per share of ARROW heads (24 heads x 128, bf16)"),
    Section("e2e_pixart_2k", 95, "PixArt-Sigma-XL 2048^2 end to end"),
    Section("e2e_flux_1k", 45, "Flux 1024^2 end to end"),
    Section("e2e_flux_2k", 60, "Flux 2048^2 end to end"),
)
DEFAULT_BUDGET = 470.0     # seconds; the check must end within 8 minutes
KILL_GRACE = 15.0          # seconds a section may overrun its limit before it is killed

# GPU configuration, then the dry run's toy version of it (same code paths, CPU sizes).
KERNEL_TESTS = {"gpu": "cuda", "dry": "fp32_matches_fp64_reference and blocked"}
# The dry run leaves compiled Flex out: compiling it on a CPU takes seconds per shape.
TABLE2 = {"gpu": dict(tokens=[4096, 16384, 32768], heads=16, head_dims=[72], dtype="bf16", repeats=20,
                      backends=["all"]),
          "dry": dict(tokens=[256, 576], heads=2, head_dims=[72], dtype="bf16", repeats=2,
                      backends=["blocked"])}
E2E_MODELS = {"e2e_pixart_2k": ("pixart_sigma_2k", "pixart_sigma_smoke"),
              "e2e_flux_1k": ("flux_1k", "flux_smoke"),
              "e2e_flux_2k": ("flux_2k", "flux_smoke")}
HEADWISE = {"gpu": dict(sides=[64, 128], heads=24, head_dim=128, rounds=10, kinds=("band", "nbhd")),
            "dry": dict(sides=[8], heads=4, head_dim=16, rounds=2, kinds=("band",))}
E2E = {"gpu": dict(steps=10, repeats=5, warmup_steps=1, dtype="bf16"),
       "dry": dict(steps=4, repeats=2, warmup_steps=1, dtype="fp32")}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="the same code on the CPU at toy sizes")
    parser.add_argument("--comfyui", help="ComfyUI source checkout (default: $COMFYUI_PATH)")
    parser.add_argument("--out", help="results folder (default: $OUT, else gpu_check_out)")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET, help="seconds for all sections")
    parser.add_argument("--only", nargs="+", choices=[s.name for s in SECTIONS], help="run these sections")
    parser.add_argument("--section", choices=[s.name for s in SECTIONS], help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=float, default=0.0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def out_dir(args: argparse.Namespace) -> Path:
    path = Path(args.out or os.environ.get("OUT") or "gpu_check_out")
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- the sections (each runs in its own process) ------------------------------------------------------


class Recorder:
    """Writes a section's result file after every unit of work, so a killed section keeps its rows."""

    def __init__(self, path: Path, started: float, limit: float) -> None:
        self.path, self.started, self.limit = path, started, limit
        self.result: dict[str, Any] = {"rows": [], "notes": []}

    def left(self) -> float:
        return self.limit - (time.perf_counter() - self.started) if self.limit else float("inf")

    def save(self) -> None:
        from tools.benchmarks.common import write_json  # atomic: a killed section leaves a whole file

        write_json(self.path, self.result)


def kernel_tests(args: argparse.Namespace, rec: Recorder) -> None:
    """pytest in this process, with a plugin that records each test's outcome as it ends."""
    import pytest

    class Outcomes:
        def pytest_runtest_logreport(self, report: Any) -> None:
            if report.when == "call" or report.outcome != "passed":
                rec.result["rows"].append({"test": report.nodeid.split("::")[-1], "when": report.when,
                                           "outcome": report.outcome,
                                           "error": str(report.longrepr)[-600:] if report.failed else None})
                rec.save()

    expr = KERNEL_TESTS["dry" if args.dry_run else "gpu"]
    test_file = str(REPO_ROOT / "tests" / "test_kernels.py")
    code = pytest.main(["-q", "-p", "no:cacheprovider", "-k", expr, test_file], plugins=[Outcomes()])
    rec.result["exit_code"] = int(code)


def table2(args: argparse.Namespace, rec: Recorder) -> None:
    """Window kernels vs dense, then the strategies through the engine, one (N, D) at a time."""
    import torch

    from ditfa_core.kernels import available_backends
    from tools.benchmarks import kernels

    cfg = TABLE2["dry" if args.dry_run else "gpu"]
    device = torch.device("cpu" if args.dry_run else "cuda")
    dtype = kernels.DTYPES[cfg["dtype"]]
    rec.result["settings"] = {**cfg, "device": str(device),
                              "backends": available_backends(device, dtype)}
    bench = argparse.Namespace(heads=cfg["heads"], repeats=cfg["repeats"], budget=0.5, fraction=1 / 8,
                               kinds=["band", "nbhd"], backends=cfg["backends"])
    rec.result["strategy_rows"] = []
    for n in cfg["tokens"]:
        for d in cfg["head_dims"]:
            if rec.left() < 5:
                rec.result["notes"].append(f"N={n} D={d}: not run, the section's time was spent")
                continue
            try:
                for kind in bench.kinds:
                    sub = argparse.Namespace(**{**vars(bench), "kind": kind, "head_dim": d})
                    for row in kernels.measure(n, sub, device, dtype, report=lambda _row: None):
                        rec.result["rows"].append({**row, "head_dim": d, "kind": kind})
                    rec.save()
                rec.result["strategy_rows"] += kernels.strategy_rows(n, d, bench, device, dtype)
            except Exception as exc:   # a failing shape must not cost the later ones
                rec.result["notes"].append(f"N={n} D={d}: {type(exc).__name__}: {exc}")
            rec.save()


def headwise(args: argparse.Namespace, rec: Recorder) -> None:
    """DiTFastAttnV2's head-wise cells through the engine: latency per share of windowed heads, vs FLOPs."""
    import dataclasses

    import torch

    from tools import headwise_evidence

    cfg = HEADWISE["dry" if args.dry_run else "gpu"]
    device, dtype = ("cpu", torch.float32) if args.dry_run else ("cuda", torch.bfloat16)
    rec.result["settings"] = {**cfg, "device": device, "dtype": str(dtype)}
    for side in cfg["sides"]:
        if rec.left() < 5:
            rec.result["notes"].append(f"N={side * side}: not run, the section's time was spent")
            continue
        sizes = dataclasses.replace(headwise_evidence.QUICK, side=side, heads=cfg["heads"],
                                    head_dim=cfg["head_dim"], rounds=cfg["rounds"], kinds=cfg["kinds"],
                                    device=device, dtype=dtype)
        for kind in sizes.kinds:
            rows = headwise_evidence.kernel_rows(sizes, kind, torch.get_num_threads())
            rec.result["rows"] += [{**row, "tokens": side * side} for row in rows]
            rec.save()


def e2e(args: argparse.Namespace, rec: Recorder) -> None:
    """One model through the real host (the section name picks it), within the section's time."""
    import torch

    from tools.benchmarks import e2e as bench

    gpu_name, dry_name = E2E_MODELS[args.section]
    name = dry_name if args.dry_run else gpu_name
    cfg = E2E["dry" if args.dry_run else "gpu"]
    device = torch.device("cpu" if args.dry_run else "cuda")
    why = bench.comfyui_unavailable(device)
    if why:
        rec.result["skipped"] = why
        return
    host = bench.load_host(device)
    spec = {**bench.MODELS, **bench.SMOKE_MODELS}[name]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[cfg["dtype"]]
    margin = 0.25 * rec.left() if rec.limit else 0.0     # building the model and the warm-up runs
    options = argparse.Namespace(steps=cfg["steps"], repeats=cfg["repeats"],
                                 warmup_steps=cfg["warmup_steps"], cfg=None, levels=["D6"], window="band",
                                 window_fraction=1 / 8,
                                 easycache=bench.FORCED_SKIP, seed=0,
                                 budget=max(1.0, rec.left() - margin) if rec.limit else 0.0)
    rec.result["settings"] = {**cfg, "model": name, "device": str(device), "levels": options.levels}

    def save(rows: list[dict]) -> None:
        rec.result["rows"] = rows
        rec.save()

    save(bench.bench_model(name, spec, options, device, dtype, host, on_round=save))


RUNNERS: dict[str, Callable[[argparse.Namespace, Recorder], None]] = {
    "kernel_tests": kernel_tests, "table2": table2, "headwise": headwise,
    **{name: e2e for name in E2E_MODELS},
}


def run_section(args: argparse.Namespace) -> None:
    """Child mode: one section, its result file rewritten as rows arrive."""
    rec = Recorder(out_dir(args) / f"{args.section}.json", time.perf_counter(), args.limit)
    rec.save()
    try:
        RUNNERS[args.section](args, rec)
        rec.result["status"] = "ok"
    except Exception as exc:
        log.exception("section %s failed", args.section)
        rec.result["status"] = f"error: {type(exc).__name__}: {exc}"
    rec.save()


# -- the driver --------------------------------------------------------------------------------------


def preflight(args: argparse.Namespace) -> dict[str, Any]:
    """What this machine offers: torch, CUDA, Triton, flash-attn, the host and its pip dependencies."""
    import importlib.util

    import torch

    from tools.benchmarks.common import environment

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from comfy_host import MINIMAL_DEPS, find_comfyui, is_comfyui_checkout

    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    imports = {"pyyaml": "yaml", "pillow": "PIL"}
    root = find_comfyui()
    return {"environment": environment(device), "dry_run": args.dry_run,
            "triton": importlib.util.find_spec("triton") is not None,
            "flash_attn": importlib.util.find_spec("flash_attn") is not None,
            "comfyui": str(root) if root else None,
            "comfyui_ok": bool(root and is_comfyui_checkout(root)),
            "missing_host_deps": [d for d in MINIMAL_DEPS
                                  if importlib.util.find_spec(imports.get(d, d)) is None]}


def drive(args: argparse.Namespace) -> dict[str, Any]:
    """Every section in its own process, each limited to its share plus what earlier ones left."""
    from tools.benchmarks.common import write_json

    out = out_dir(args)
    env = {**os.environ, **({"COMFYUI_PATH": str(Path(args.comfyui).absolute())} if args.comfyui else {})}
    if args.comfyui:
        os.environ["COMFYUI_PATH"] = env["COMFYUI_PATH"]
    started = time.perf_counter()
    report: dict[str, Any] = {"preflight": preflight(args), "budget_s": args.budget, "sections": {}}
    if not args.dry_run and report["preflight"]["environment"]["device"] != "cuda":
        raise SystemExit("torch sees no CUDA device: run with --dry-run on a CPU")
    sections = [s for s in SECTIONS if not args.only or s.name in args.only]
    spare = 0.0
    for i, section in enumerate(sections):
        later = sum(s.seconds for s in sections[i + 1:])
        left = args.budget - (time.perf_counter() - started)
        limit = min(section.seconds + spare, left - 0.5 * later)
        result = run_child(section, limit, args, env, out) if limit >= 10 else \
            {"status": "skipped: the check's budget was spent", "rows": []}
        spare = max(0.0, section.seconds + spare - result.get("seconds", 0.0))
        report["sections"][section.name] = result
        write_json(out / "gpu_check.json", report)
    report["seconds"] = time.perf_counter() - started
    write_json(out / "gpu_check.json", report)
    return report


def run_child(section: Section, limit: float, args: argparse.Namespace, env: dict[str, str],
              out: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "tools.gpu_check", "--section", section.name,
               "--limit", f"{limit:.0f}", "--out", str(out), *(["--dry-run"] if args.dry_run else [])]
    log.info("section %s: up to %.0f s", section.name, limit)
    t0 = time.perf_counter()
    try:
        code = subprocess.run(command, cwd=REPO_ROOT, env=env, timeout=limit + KILL_GRACE).returncode
        status = None if code == 0 else f"error: exit code {code}"
    except subprocess.TimeoutExpired:
        status = f"killed after {limit + KILL_GRACE:.0f} s (partial rows kept)"
    path = out / f"{section.name}.json"
    result = json.loads(path.read_text()) if path.is_file() else {"rows": []}
    result["status"] = status or result.get("status", "error: no status written")
    result["seconds"] = time.perf_counter() - t0
    result["limit_s"] = limit
    return result


# -- the tables printed last -------------------------------------------------------------------------


def summary(report: dict[str, Any]) -> str:
    """Markdown: machine, section status, test outcomes, Table 2, the head-wise rows, the e2e rows."""
    from tools.benchmarks import e2e as bench
    from tools.benchmarks import kernels
    from tools.benchmarks.common import markdown_table

    pre, sections = report["preflight"], report["sections"]
    env = pre["environment"]
    lines = [f"## GPU check{' (dry run, CPU)' if pre['dry_run'] else ''}: {env['device_name']}, "
             f"torch {env['torch']}, CUDA {env['cuda']}, driver {env['driver']}, triton {pre['triton']}, "
             f"flash-attn {pre['flash_attn']}, ComfyUI {pre['comfyui']} (missing deps: "
             f"{', '.join(pre['missing_host_deps']) or 'none'})", ""]
    status = [{"section": name, "status": s.get("status"), "seconds": s.get("seconds"),
               "limit": s.get("limit_s"), "notes": "; ".join(s.get("notes", [])) or s.get("skipped")}
              for name, s in sections.items()]
    lines += [markdown_table(status, [("section", "section"), ("status", "status"), ("seconds", "s"),
                                      ("limit", "limit s"), ("notes", "notes")]), ""]
    tests = sections.get("kernel_tests", {}).get("rows", [])
    if tests:
        counts = {o: sum(r["outcome"] == o for r in tests) for o in ("passed", "failed", "skipped")}
        lines.append(f"Kernel tests: {counts}")
        lines += [f"- FAILED {r['test']} ({r['when']}): {(r['error'] or '').splitlines()[-1:]}"
                  for r in tests if r["outcome"] == "failed"]
        lines.append("")
    table = sections.get("table2", {})
    if table.get("rows"):
        lines += [markdown_table(table["rows"], kernels.WINDOW_COLUMNS), ""]
    if table.get("strategy_rows"):
        lines += [markdown_table(table["strategy_rows"], kernels.STRATEGY_COLUMNS), ""]
    heads = sections.get("headwise", {}).get("rows", [])
    if heads:
        from tools.headwise_evidence import kernel_table
        lines += [kernel_table(heads), ""]
    e2e_rows = [r for name in E2E_MODELS for r in sections.get(name, {}).get("rows", [])]
    if e2e_rows:
        lines += [markdown_table(e2e_rows, bench.COLUMNS), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.section:
        run_section(args)
        return None
    report = drive(args)
    print(summary(report), flush=True)
    return report


if __name__ == "__main__":
    main()
