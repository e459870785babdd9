"""Calibration time of both plan searches, in multiples of one uncompressed generation.

Runs on the reference DiT (``ditfa_core.reference``): the trained MNIST weights, or a random-weight
preset (``tiny`` for CI, ``xl`` = DiT-XL/2 geometry for a GPU). Design target: calibration <= 3
generations (the paper's greedy search costs about layers x 4 generations).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from ditfa_core.flops import plan_flops_fraction
from ditfa_core.reference import DIT_FILE, WEIGHTS_DIR, DiT, DiTConfig, load_dit
from ditfa_core.reference.fastattn import calibrate, generate, token_layout
from ditfa_core.search import SEARCHES
from ditfa_core.windows import WindowSpec

from .common import markdown_table

SMOKE = {"model": "tiny", "steps": 4, "batch": 2, "gen_repeats": 1}

COLUMNS = [("model", "model"), ("mode", "search"), ("steps", "steps"), ("delta", "delta"),
           ("generation_s", "1 generation s"), ("calibration_s", "calibration s"),
           ("generations", "calibration / generation"), ("forwards_per_eval", "forwards / evaluation"),
           ("plan_flops_fraction", "plan FLOPs frac"), ("plan_generation_s", "with plan s")]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="mnist", choices=["mnist", "tiny", "xl"],
                        help="mnist: the committed trained weights; tiny/xl: random weights")
    parser.add_argument("--modes", nargs="+", default=list(SEARCHES), choices=list(SEARCHES))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=4.0)
    parser.add_argument("--batch", type=int, default=8, help="calibration labels (one image each)")
    parser.add_argument("--delta", type=float, default=0.1, help="error threshold (paper D4 = 0.1)")
    parser.add_argument("--window-fraction", type=float, default=1 / 8)
    parser.add_argument("--gen-repeats", type=int, default=3, help="timed uncompressed generations")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])


def load_model(name: str, device: torch.device, dtype: torch.dtype) -> DiT:
    if name == "mnist":
        return load_dit(WEIGHTS_DIR / DIT_FILE, device, dtype)
    torch.manual_seed(0)
    return DiT(DiTConfig.preset(name)).to(device=device, dtype=dtype).eval()


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """(fn(), wall seconds), with the GPU drained before the clock stops."""
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def run_suite(args: argparse.Namespace, device: torch.device) -> dict:
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model = load_model(args.model, device, dtype)
    labels = [i % model.config.num_classes for i in range(args.batch)]
    window = WindowSpec("band", args.window_fraction)
    pairs = window.resolve(token_layout(model)).pair_count() / token_layout(model).n_tokens ** 2

    def one_generation(grid: Any = None) -> Any:
        return generate(model, labels, grid, steps=args.steps, cfg=args.cfg, window=window)

    timed(one_generation, device)  # warm-up
    gen_s = statistics.median(timed(one_generation, device)[1] for _ in range(args.gen_repeats))
    rows = []
    for mode in args.modes:
        outcome, cal_s = timed(lambda mode=mode: calibrate(model, labels, mode=mode, delta=args.delta,
                                                           steps=args.steps, cfg=args.cfg, window=window),
                               device)
        _, plan_s = timed(lambda grid=outcome.grid: one_generation(grid), device)
        rows.append({"model": args.model, "mode": mode, "steps": args.steps, "delta": args.delta,
                     "generation_s": gen_s, "calibration_s": cal_s, "generations": cal_s / gen_s,
                     "forwards_per_eval": outcome.generations,
                     "plan_flops_fraction": plan_flops_fraction(outcome.grid, pairs),
                     "plan_generation_s": plan_s})
    print(f"\n### Calibration time (reference DiT `{args.model}`, {model.num_layers} layers, "
          f"{len(labels)} labels, CFG {args.cfg:g})\n")
    print(markdown_table(rows, COLUMNS))
    return {"settings": {"layers": model.num_layers, "tokens": token_layout(model).n_tokens,
                         "window_pair_fraction": pairs}, "rows": rows}
