"""Command line: calibrate a plan for the reference DiT, and the paper's Table 1 in miniature.

``python -m ditfa_core calibrate`` is the pack's main job on its built-in default model: it
searches a plan, writes it as JSON and as a heatmap PNG, and prints what the plan saves and what
it costs in quality. ``python -m ditfa_core table`` sweeps delta (paper D1-D6) for both searches.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import __version__
from .heatmap import render_png
from .metrics import rel_l1
from .plan import Calibration, Cost, ModelInfo, Plan, WindowSetting
from .reference import DigitClassifier, DiT, load_reference
from .reference.fastattn import calibrate, generate, token_layout
from .windows import WindowSpec

D_LEVELS = {f"D{i}": 0.025 * i for i in range(1, 7)}   # paper §4.1: delta = 0.025 ... 0.15


class ProgressLine:
    """A one-line progress bar on stderr (the CLI's; ComfyUI nodes use ComfyUI's own)."""

    def __init__(self, label: str) -> None:
        self.label, self.start = label, time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        filled = 30 * done // total
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} "
                         f"{time.perf_counter() - self.start:5.1f}s")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()


@dataclass
class Row:
    name: str
    flops: float
    fid: float
    accuracy: float
    rel_l1: float
    generations: float | None = None
    search_seconds: float | None = None

    def cells(self) -> list[str]:
        g = "-" if self.generations is None else f"{self.generations:.2f}"
        s = "-" if self.search_seconds is None else f"{self.search_seconds:.1f}"
        return [self.name, f"{100 * self.flops:.1f}%", f"{self.fid:.2f}", f"{100 * self.accuracy:.1f}%",
                f"{self.rel_l1:.4f}", g, s]


HEADER = ["config", "attn FLOPs", "FID", "class acc", "rel-L1 vs raw", "search (gens)", "search (s)"]


def markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines)


class Evaluator:
    """Generates the evaluation set once uncompressed, then scores plans against it."""

    def __init__(self, model: DiT, classifier: DigitClassifier, n: int, steps: int, cfg: float,
                 seed: int, window: WindowSpec) -> None:
        self.model, self.classifier, self.steps, self.cfg, self.seed = model, classifier, steps, cfg, seed
        self.window = window
        self.labels = torch.arange(n) % 10
        self.raw = generate(model, self.labels, steps=steps, cfg=cfg, seed=seed).images

    def row(self, name: str, grid=None, search=None) -> Row:
        run = generate(self.model, self.labels, grid, steps=self.steps, cfg=self.cfg, seed=self.seed,
                       window=self.window)
        return Row(name, run.stats.flops_fraction, self.classifier.fid(run.images),
                   self.classifier.class_accuracy(run.images, self.labels), rel_l1(self.raw, run.images),
                   None if search is None else search.generations,
                   None if search is None else search.seconds)


def make_plan(model: DiT, outcome, args: argparse.Namespace, window: WindowSpec) -> Plan:
    layout = token_layout(model)
    pair_fraction = window.resolve(layout).pair_count() / layout.n_tokens**2
    calibration = Calibration(
        steps=args.steps, sampler="euler", scheduler="linear", cfg=args.cfg, delta=args.delta,
        window=WindowSetting(window.kind, window.fraction, window.radius), search=args.mode,
        seconds=outcome.seconds, generations=outcome.generations,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        tool_version=__version__, resolution=(model.config.image_size,) * 2,
    )
    info = ModelInfo("reference-dit", model.num_layers, model.num_heads, layout.n_image, 0, layout.grid)
    return Plan(info, outcome.grid, Cost.estimate(outcome.grid, pair_fraction), calibration)


def cmd_calibrate(args: argparse.Namespace) -> int:
    model, classifier = load_reference()
    window = WindowSpec(args.window, args.fraction)
    labels = torch.arange(args.calib_samples) % 10
    outcome = calibrate(model, labels, mode=args.mode, delta=args.delta, steps=args.steps, cfg=args.cfg,
                        seed=args.seed + 1, window=window, progress=ProgressLine(f"calibrate ({args.mode})"))
    plan = make_plan(model, outcome, args, window)
    out = Path(args.out)
    plan.save(out)
    render_png(plan, out.with_suffix(".png"))
    print(f"plan: {out} and {out.with_suffix('.png')}\n{plan.summary()}")
    if args.eval_samples:
        ev = Evaluator(model, classifier, args.eval_samples, args.steps, args.cfg, args.seed, window)
        raw = ev.row("raw")
        found = ev.row(f"{args.mode} delta={args.delta:g}", plan.grid, outcome)
        print(markdown([raw, found]))
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    model, classifier = load_reference()
    window = WindowSpec(args.window, args.fraction)
    ev = Evaluator(model, classifier, args.eval_samples, args.steps, args.cfg, args.seed, window)
    labels = torch.arange(args.calib_samples) % 10
    one_generation = generate(model, labels, steps=args.steps, cfg=args.cfg, seed=args.seed + 1).seconds
    rows = [ev.row("raw")]
    for mode in args.modes:
        levels = args.greedy_levels if mode == "greedy" else args.levels
        for name, delta in ((n, D_LEVELS[n]) for n in levels):
            outcome = calibrate(model, labels, mode=mode, delta=delta, steps=args.steps, cfg=args.cfg,
                                seed=args.seed + 1, window=window, progress=ProgressLine(f"{mode} {name}"))
            row = ev.row(f"{mode} {name} (delta {delta:.3f})", outcome.grid, outcome)
            row.search_seconds = outcome.seconds / one_generation   # in multiples of one generation's time
            rows.append(row)
            print(markdown([row]).splitlines()[-1], flush=True)
    print(markdown(rows))
    if args.json:
        payload = {"settings": vars(args) | {"modes": list(args.modes)}, "torch": torch.__version__,
                   "threads": torch.get_num_threads(), "one_generation_seconds": one_generation,
                   "rows": [r.__dict__ for r in rows]}
        Path(args.json).write_text(json.dumps(payload, indent=2))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ditfa_core", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    common.add_argument("--cfg", type=float, default=4.0, help="classifier-free guidance scale (default 4)")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--window", choices=["band", "nbhd"], default="band",
                        help="band: the paper's 1-D window; nbhd: 2-D neighbourhood on the token grid")
    common.add_argument("--fraction", type=float, default=1 / 8, help="window size / image tokens (1/8)")
    common.add_argument("--calib-samples", type=int, default=8, help="labels in the calibration batch")
    common.add_argument("--eval-samples", type=int, default=100, help="images for FID and accuracy (0: skip)")
    c = sub.add_parser("calibrate", parents=[common], help="search a plan for the reference DiT (main job)")
    c.add_argument("--mode", choices=["fast", "greedy"], default="fast")
    c.add_argument("--delta", type=float, default=0.1, help="error threshold (paper D1-D6: 0.025-0.15)")
    c.add_argument("--out", default="reference_plan.json", help="plan file; the heatmap goes beside it")
    c.set_defaults(func=cmd_calibrate)
    t = sub.add_parser("table", parents=[common], help="paper Table 1 in miniature: D1-D6, both searches")
    t.add_argument("--modes", nargs="+", choices=["fast", "greedy"], default=["fast", "greedy"])
    t.add_argument("--levels", nargs="+", choices=list(D_LEVELS), default=list(D_LEVELS),
                   help="delta levels for the fast search (default D1-D6)")
    t.add_argument("--greedy-levels", nargs="+", choices=list(D_LEVELS), default=list(D_LEVELS),
                   help="delta levels for greedy, which costs about 4 x layers generations each")
    t.add_argument("--json", help="also write the rows and settings here")
    t.set_defaults(func=cmd_table)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parser().parse_args(argv)
    return args.func(args)
