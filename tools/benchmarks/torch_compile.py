"""torch.compile through real ComfyUI: what DiTFastAttn adds to the compile of the host's
``TorchCompileModel`` wrapper (``comfy_api.torch_helpers.set_torch_compile_wrapper``).

For each tiny model family of the test harness (``tests/comfy_models``; real classes, toy sizes), the
unpatched model and the same model with DiTFastAttn Apply (a plan that uses every strategy) are
compiled from a fresh dynamo state and sampled several times, with step counts that change between
runs. Reported per configuration: compiled graphs and frames after each run (a count that keeps
growing means recompiles), graph breaks, recompile-limit hits, the first run's time (compile + run)
and the median of the later runs. Needs ComfyUI (``COMFYUI_PATH``) like ``e2e``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from typing import Any

import torch

from .common import markdown_table
from .e2e import load_host

SMOKE = {"families": ["flux"], "backend": "eager", "steps": [3, 6, 6]}
PLAN_ROWS = ["FULL", "WA_RS_ASC", "AST", "WA_RS", "ASC", "FULL"]

COLUMNS = [("family", "model"), ("config", "configuration"), ("backend", "backend"),
           ("graphs", "graphs after each run"), ("frames", "frames"), ("breaks", "graph breaks"),
           ("limit_hits", "recompile-limit hits"), ("first_s", "first run s (compile)"),
           ("later_s", "later runs s (median)"), ("first_ratio", "first run / unpatched")]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--families", nargs="+", default=["flux", "wan21_t2v", "sd3"])
    parser.add_argument("--backend", default="inductor", choices=["inductor", "eager", "aot_eager"])
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 8, 8, 6],
                        help="step count of each run, in order (the first run compiles)")


class _LimitHits(logging.Handler):
    """Counts dynamo's 'hit config.recompile_limit' warnings."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.hits = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "recompile_limit" in record.getMessage() or "cache_size_limit" in record.getMessage():
            self.hits += 1


def _plan(pack: Any, patcher: Any) -> Any:
    plan = importlib_module(pack, "ditfa_core.plan")
    family = importlib_module(pack, "nodes.families").detect(patcher)
    _, n = family.layer_bases(patcher.model.diffusion_model)
    info = plan.ModelInfo(family.name, n, family.heads(patcher.model.diffusion_model) or 1, 1)
    return plan.Plan(info, [[s] * n for s in PLAN_ROWS], plan.Cost(1.0))


def importlib_module(pack: Any, name: str) -> Any:
    import importlib

    return importlib.import_module(f"{pack.__name__}.{name}")


def measure(comfy_models: Any, pack: Any, family: str, patched: bool, args: argparse.Namespace) -> dict:
    """Compile counts and times of one configuration, from a fresh dynamo state."""
    import torch._dynamo
    from comfy_api.torch_helpers import set_torch_compile_wrapper
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    tiny = comfy_models.make_model(family)
    model = tiny.patcher
    if patched:
        apply = importlib_module(pack, "nodes.apply")
        model = apply.apply_plan(model, _plan(pack, model), mode="adapt")
    model = model.clone()
    set_torch_compile_wrapper(model=model, backend=args.backend)
    hits = _LimitHits()
    logging.getLogger("torch._dynamo").addHandler(hits)
    graphs, times = [], []
    try:
        for steps in args.steps:
            start = time.perf_counter()
            comfy_models.sample(model, tiny.latent, tiny.positive, tiny.negative, steps=steps)
            times.append(time.perf_counter() - start)
            graphs.append(int(counters["stats"]["unique_graphs"]))
    finally:
        logging.getLogger("torch._dynamo").removeHandler(hits)
    return {"family": family, "config": "DiTFastAttn" if patched else "unpatched", "backend": args.backend,
            "graphs": " / ".join(map(str, graphs)), "frames": int(counters["frames"]["total"]),
            "breaks": int(sum(counters["graph_break"].values())), "limit_hits": hits.hits,
            "first_s": times[0], "later_s": statistics.median(times[1:]) if len(times) > 1 else None}


def run_suite(args: argparse.Namespace, device: torch.device) -> dict:
    _, comfy_models, pack = load_host(device)
    rows = []
    for family in args.families:
        base = measure(comfy_models, pack, family, False, args)
        ours = measure(comfy_models, pack, family, True, args)
        base["first_ratio"], ours["first_ratio"] = 1.0, ours["first_s"] / base["first_s"]
        rows += [base, ours]
    print(markdown_table(rows, COLUMNS))
    return {"rows": rows}
