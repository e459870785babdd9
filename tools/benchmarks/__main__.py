"""``python -m tools.benchmarks <kernels|e2e|calibration|compile> [--smoke] [--device auto|cpu|cuda]
[--threads N] [--json PATH] [suite options]``: prints markdown tables, writes every setting and the
machine description with the results as JSON. ``--smoke`` is the CPU/CI size of a suite (it checks
that the suite runs; its timings mean little). ``<suite> --help`` lists a suite's options.

``python -m tools.benchmarks all [--smoke] [--out DIR]`` runs every suite in its default (GPU)
configuration, the kernels with the video length too, one JSON per suite in DIR; e2e and compile are
skipped with the reason when ComfyUI is not found.
"""

from __future__ import annotations

import argparse
import datetime
import sys

import torch

from . import calibration, e2e, kernels, torch_compile
from .common import environment, resolve_device, write_json

SUITES = {"kernels": kernels, "e2e": e2e, "calibration": calibration, "compile": torch_compile}


def build_parser(smoke: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``smoke`` naming a suite, that suite's defaults are its smoke configuration."""
    parser = argparse.ArgumentParser(prog="python -m tools.benchmarks", description=__doc__)
    subs = parser.add_subparsers(dest="suite", required=True)
    for name, module in SUITES.items():
        sub = subs.add_parser(name, help=(module.__doc__ or "").split("\n\n")[0].replace("\n", " "))
        sub.add_argument("--smoke", action="store_true", help="tiny CPU/CI configuration of this suite")
        sub.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        sub.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
        sub.add_argument("--json", help="write settings, machine and results here")
        module.add_arguments(sub)
        if name == smoke:
            sub.set_defaults(**module.SMOKE)
    return parser


def run_all(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="python -m tools.benchmarks all")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", default=".", help="folder for kernels.json, e2e.json, calibration.json")
    args = parser.parse_args(argv)
    common = ["--device", args.device, *(["--smoke"] if args.smoke else []),
              *(["--threads", str(args.threads)] if args.threads else [])]
    results = {}
    for suite in SUITES:
        if suite in ("e2e", "compile"):
            why = e2e.comfyui_unavailable(resolve_device(args.device))
            if why:
                print(f"# `e2e` skipped: {why}")
                continue
        extra = ["--video"] if suite == "kernels" and not args.smoke else []
        results[suite] = main([suite, *common, *extra, "--json", f"{args.out}/{suite}.json"])
    return results


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["all"]:
        return run_all(argv[1:])
    args = build_parser().parse_args(argv)
    if args.smoke:
        args = build_parser(args.suite).parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    env = environment(device)
    print(f"# `{args.suite}` benchmark{' (smoke)' if args.smoke else ''}: {env['device_name']}, "
          f"torch {env['torch']}, CUDA {env['cuda']}, driver {env['driver']}, {env['threads']} threads")
    result = SUITES[args.suite].run_suite(args, device)
    out = {"suite": args.suite, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
           "argv": argv, "environment": env, "args": vars(args), **result}
    if args.json:
        write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
