"""Command line: calibrate a plan for the reference DiT, sample it, and the paper's Table 1 in miniature.

``python -m ditfa_core calibrate`` (or ``ditfa calibrate`` once installed) is the pack's main job on its
built-in reference model: it searches a plan, writes it as JSON with a heatmap PNG beside it, then
samples an evaluation set with and without the plan and prints what the plan saves and what it costs
in quality. ``sample`` writes reference samples (optionally under a plan) as an MNIST-style .npz and a
PNG grid; ``table`` sweeps delta (paper D1-D6) for both searches.

Every option is checked before any work starts: a bad value ends the program with one line naming the
option and the allowed range, and exit status 2. Each phase prints a progress line with its remaining
time; Ctrl-C stops at once with exit status 130 and never leaves a half-written file.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TextIO

import torch

from . import __version__
from .heatmap import caption, render_png
from .plan import MAX_DIM, Calibration, Cost, ModelInfo, Plan, PlanError, WindowSetting
from .plan.io import write_atomic
from .reference import WEIGHTS_DIR, DiT, load_reference, real_floor, weights_available
from .reference.fastattn import SearchOutcome, calibrate, pair_fraction, token_layout
from .reference.images import write_samples
from .reference.quality import BATCH, EvalSet, PairedEvaluator, Row, markdown, sample_set, versus_markdown
from .reference.table1 import ALONE, D_LEVELS, Calib, as_json
from .reference.table1 import table as table1
from .windows import KINDS, WindowSpec

FAMILY = "reference-dit"
EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130


# -- input checking ------------------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``ditfa: error: argument --steps: must be ...`` and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def integer(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type accepting integers in [lo, hi]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be an integer in [{lo}, {hi}], got {text!r}")
        return value
    return parse


def number(lo: float, hi: float, *, low_open: bool = False) -> Callable[[str], float]:
    """An argparse type accepting finite numbers in [lo, hi] (or (lo, hi] with ``low_open``)."""
    interval = f"{'(' if low_open else '['}{lo:g}, {hi:g}]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or not (lo < value if low_open else lo <= value) or value > hi:
            raise argparse.ArgumentTypeError(f"must be a finite number in {interval}, got {text!r}")
        return value
    return parse


def check_output(parser: argparse.ArgumentParser, option: str, path: Path, suffix: str,
                 png_beside: bool = True) -> None:
    """Refuse, before any work, an output that does not end in ``suffix`` or cannot be written; the PNG
    written beside it (same name, .png) is checked too."""
    if path.suffix.lower() != suffix:
        beside = " (the PNG is written beside it)" if png_beside else ""
        parser.error(f"argument {option}: must end in {suffix}{beside}, got '{path}'")
    folder = path.parent
    if not folder.is_dir():
        parser.error(f"argument {option}: folder '{folder}' does not exist")
    try:   # a real probe: permission bits say nothing for root, a read-only mount or /proc
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        parser.error(f"argument {option}: cannot write in folder '{folder}': {e.strerror}")
    for target in (path, path.with_suffix(".png")) if png_beside else (path,):
        if target.is_dir() or (target.exists() and not os.access(target, os.W_OK)):
            parser.error(f"argument {option}: '{target}' exists and cannot be overwritten")


def load_plan(parser: argparse.ArgumentParser, path: Path) -> Plan:
    try:
        return Plan.load(path)
    except (OSError, PlanError) as e:
        parser.error(f"argument --plan: {e}")


# -- progress ------------------------------------------------------------------------------------------


def clock(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """One phase's progress line on stderr: ``[2/4] raw samples [####....] 8/20 0:12 elapsed, ~0:18 left``.

    On a terminal the line redraws in place; in a log (not a tty) a line is written at every quarter.
    The remaining time extrapolates the phase's own rate so far. Several calls of the phase (batches)
    are counted as one: ``offset`` units are added to what the caller reports.
    """

    def __init__(self, phase: int, phases: int, label: str, total: int | None = None,
                 stream: TextIO | None = None) -> None:
        self.head, self.total, self.stream = f"[{phase}/{phases}] {label:<14}", total, stream or sys.stderr
        self.start, self.offset, self.shown = time.perf_counter(), 0, -1
        self.tty = self.stream.isatty()

    def __call__(self, done: int, total: int | None = None) -> None:
        self.total = self.total or total or 1   # given at construction, or by the first call
        done = min(self.total, self.offset + done)
        quarter = 4 * done // self.total
        if not self.tty and quarter == self.shown:
            return
        self.shown = quarter
        elapsed = time.perf_counter() - self.start
        left = f"~{clock(elapsed / done * (self.total - done))} left" if done else "estimating"
        bar = "#" * (24 * done // self.total) + "." * (24 - 24 * done // self.total)
        end = "\n" if done == self.total or not self.tty else ""
        self.stream.write(f"{chr(13) if self.tty else ''}{self.head} [{bar}] {done}/{self.total} "
                          f"{clock(elapsed)} elapsed, {left}{end}")
        self.stream.flush()

    def batch_done(self, units: int) -> None:
        self.offset += units

    def finish(self) -> None:
        if self.offset < self.total:
            self.offset = self.total
            self(0)


def phase_progress(first: int, phases: int) -> Callable[[str], Progress]:
    """Progress lines for consecutive phases ``first``, ``first + 1``, ... of ``phases``, one per call."""
    counter = iter(range(first, phases + 1))
    return lambda label: Progress(next(counter, phases), phases, label)


def machine() -> str:
    """The CPU's model name where Linux tells it, else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical CPUs)"
    except OSError:
        pass
    return f"{platform.machine()} ({os.cpu_count()} logical CPUs)"


# -- commands ------------------------------------------------------------------------------------------


def model_info(model: DiT) -> ModelInfo:
    layout = token_layout(model)
    return ModelInfo(FAMILY, model.num_layers, model.num_heads, layout.n_image, 0, layout.grid)


def make_plan(model: DiT, outcome: SearchOutcome, args: argparse.Namespace, window: WindowSpec) -> Plan:
    calibration = Calibration(
        steps=args.steps, sampler="euler", scheduler="linear", cfg=args.cfg, delta=args.delta,
        window=WindowSetting(window.kind, window.fraction, window.radius), search=args.mode,
        seconds=outcome.seconds, generations=outcome.generations,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        tool_version=__version__, resolution=(model.config.image_size,) * 2,
    )
    cost = Cost.estimate(outcome.grid, pair_fraction(model, window))
    return Plan(model_info(model), outcome.grid, cost, calibration)


def cmd_calibrate(args: argparse.Namespace) -> int:
    model, classifier = load_reference()
    window = WindowSpec(args.window, args.fraction)
    phases = 4 if args.eval_samples else 1
    labels = torch.arange(args.calib_samples) % 10
    progress = Progress(1, phases, "calibration", args.steps)
    outcome = calibrate(model, labels, mode=args.mode, delta=args.delta, steps=args.steps, cfg=args.cfg,
                        seed=args.seed + 1, window=window, progress=progress, granularity=args.granularity)
    plan = make_plan(model, outcome, args, window)
    out = Path(args.out)
    plan.save(out)
    render_png(plan, out.with_suffix(".png"))
    print("\n".join([f"plan: {out} and {out.with_suffix('.png')}", plan.summary(), *caption(plan)[1:]]),
          flush=True)
    if args.eval_samples:
        evalset = EvalSet(args.eval_samples, args.steps, args.cfg, args.seed)
        ev = PairedEvaluator(model, classifier, evalset, window, phase_progress(2, phases))
        found = ev.sample("plan samples", plan.grid)
        metrics = Progress(4, phases, "metrics", 2)
        rows = [ev.row("raw")]
        metrics(1)
        rows.append(ev.score(f"{args.mode} delta={args.delta:g}", found, search_cost=outcome.generations,
                             search_seconds=outcome.seconds))
        metrics(2)
        print(markdown(rows, real_floor()))
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    plan = load_plan(args.parser, Path(args.plan)) if args.plan else None
    model, _ = load_reference()
    window, grid = WindowSpec(), None
    if plan is not None:
        try:
            plan.check_fits(True, **dataclasses.asdict(model_info(model)))
        except PlanError as e:
            args.parser.error(f"argument --plan: {e}")
        grid = plan.resampled(args.steps)
        if plan.calibration is not None:
            w = plan.calibration.window
            window = WindowSpec(w.kind, w.fraction, w.radius)
    evalset = EvalSet(10 * args.per_class, args.steps, args.cfg, args.seed)
    total = -(-evalset.n // BATCH) * args.steps
    samples = sample_set(model, evalset, grid, window=window, progress=Progress(1, 1, "samples", total))
    labels = evalset.labels
    png = write_samples(samples.images, labels, Path(args.out))
    print(f"samples: {args.out} ({len(labels)} images, attention FLOPs {100 * samples.flops_fraction:.1f}% "
          f"of full) and {png}")
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    model, classifier = load_reference()
    window = WindowSpec(args.window, args.fraction)
    evalset = EvalSet(args.eval_samples, args.steps, args.cfg, args.seed)
    fast = args.levels if "fast" in args.modes else []
    greedy = args.greedy_levels if "greedy" in args.modes else []
    alone = args.alone or None
    headwise = list(dict.fromkeys(args.headwise))
    twins = [level for level in headwise if level not in fast]   # layer-wise plans searched for them
    phases = (1 + 2 * (len(fast) + len(greedy) + len(twins)) + len(ALONE) * (alone is not None)
              + len(headwise))
    progress = phase_progress(1, phases)
    ev = PairedEvaluator(model, classifier, evalset, window, progress)
    calib = Calib(args.calib_samples, args.steps, args.cfg, args.seed + 1, window)
    started = time.perf_counter()
    rows: list[Row] = []

    def report(row: Row) -> None:
        rows.append(row)
        print(markdown([row], header=not rows[:-1]), flush=True)
        if args.json:
            payload = {"settings": {k: v for k, v in vars(args).items() if k not in ("func", "parser")},
                       "machine": machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "seconds": time.perf_counter() - started, "floor": real_floor(),
                       "rows": as_json(rows)}
            write_atomic(args.json, json.dumps(payload, indent=1))   # an interrupted sweep keeps its rows

    table1(model, ev, calib, fast_levels=fast, greedy_levels=greedy, alone_target=alone,
           headwise_levels=headwise, progress=progress, report=report)
    print(markdown(rows, real_floor()))
    if headwise:
        print(versus_markdown(rows))
    return 0


# -- the parser ----------------------------------------------------------------------------------------

SEED_MAX = 2**63 - 2   # the calibration batch uses seed + 1


def sampling_options(steps_help: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--steps", type=integer(1, MAX_DIM), default=20, help=steps_help)
    p.add_argument("--cfg", type=number(0, 30), default=4.0,
                   help="classifier-free guidance scale, 0-30 (default 4; 1 = no guidance)")
    p.add_argument("--seed", type=integer(0, SEED_MAX), default=0,
                   help="seed of the initial noise (default 0)")
    return p


def search_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--window", choices=KINDS, default="band",
                   help="band: the paper's 1-D window; nbhd: 2-D neighbourhood on the token grid; tile: "
                        "whole tiles of the grid around each query's tile (Sliding Tile Attention)")
    p.add_argument("--fraction", type=number(0, 1, low_open=True), default=1 / 8,
                   help="window size as a share of the image tokens, in (0, 1] (default 1/8, paper §4.1)")
    p.add_argument("--calib-samples", type=integer(1, 256), default=8,
                   help="labels in the calibration batch, 1-256 (default 8)")
    return p


def parser() -> Parser:
    p = Parser(prog="ditfa", description=__doc__.split("\n\n")[0])
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    steps = f"sampling steps, 1-{MAX_DIM} (the plan format's cap; default 20)"
    c = sub.add_parser("calibrate", parents=[sampling_options(steps), search_options()],
                       help="search a plan for the reference DiT and measure it (the main job)")
    c.add_argument("--mode", choices=["fast", "greedy"], default="fast",
                   help="fast: about 2 model evaluations per sampling step; greedy: paper Algorithm 1, "
                        "about 4 x layers")
    c.add_argument("--granularity", choices=["layer", "head"], default="layer",
                   help="layer: one strategy per layer (DiTFastAttn); head: one per head, chosen by a "
                        "knapsack (DiTFastAttnV2; with --mode fast)")
    c.add_argument("--delta", type=number(0, 1, low_open=True), default=0.1,
                   help="error threshold in (0, 1] (paper D1-D6: 0.025-0.15; default 0.1)")
    c.add_argument("--eval-samples", type=integer(0, 20_000), default=200,
                   help="images sampled with and without the plan for FID and class accuracy, 0-20000 "
                        "(default 200, about 2 minutes on 2 CPU cores; 0: skip; 1000+ for real measurements)")
    c.add_argument("--out", default="reference_plan.json",
                   help="plan file, must end in .json; its heatmap is written beside it as .png")
    c.set_defaults(func=cmd_calibrate)
    s = sub.add_parser("sample", parents=[sampling_options(steps)],
                       help="reference DiT samples as an MNIST-style .npz and a PNG grid")
    s.add_argument("--per-class", type=integer(1, 1000), required=True, help="images per digit class, 1-1000")
    s.add_argument("--out", required=True, help="output file, must end in .npz; the PNG grid goes beside it")
    s.add_argument("--plan", help="sample under this plan (a reference-DiT plan, e.g. from calibrate)")
    s.set_defaults(func=cmd_sample)
    t = sub.add_parser("table", parents=[sampling_options(steps), search_options()],
                       help="paper Table 1 in miniature: D1-D6, both searches")
    t.add_argument("--eval-samples", type=integer(2, 20_000), default=1000,
                   help="images per configuration, 2-20000 (default 1000, the same labels and noise for all)")
    t.add_argument("--modes", nargs="+", choices=["fast", "greedy"], default=["fast", "greedy"])
    t.add_argument("--levels", nargs="+", choices=list(D_LEVELS), default=list(D_LEVELS),
                   help="delta levels for the fast search (default D1-D6)")
    t.add_argument("--greedy-levels", nargs="+", choices=list(D_LEVELS), default=["D2", "D4", "D6"],
                   help="delta levels for greedy, which costs about 4 x layers model evaluations per step "
                        "(default D2 D4 D6)")
    t.add_argument("--alone", type=number(0, 1), default=0.6,
                   help="attention FLOPs share at which each technique alone (WA-RS, AST, ASC) is measured, "
                        "in [0, 1] (default 0.6; 0 leaves those rows out)")
    t.add_argument("--headwise", nargs="*", choices=list(D_LEVELS), default=[], metavar="LEVEL",
                   help="also head-wise plans (DiTFastAttnV2) at the attention FLOPs of the fast layer-wise "
                        "plans of these levels (delta bisected to within 1 point), each compared with that "
                        "plan, paired (e.g. --headwise D2 D3 D4; default none)")
    t.add_argument("--json", help="also write the rows and settings here (.json)")
    t.set_defaults(func=cmd_table)
    for sp in (c, s, t):
        sp.set_defaults(parser=sp)
    return p


def check_args(args: argparse.Namespace) -> None:
    """Every check that needs more than one option's value, before any work starts."""
    if not weights_available():
        sys.exit(f"ditfa: error: the reference DiT's weights are not in {WEIGHTS_DIR} (the ComfyUI registry "
                 "package leaves them out): run from a git checkout or `pip install .` from one")
    if importlib.util.find_spec("PIL") is None:
        sys.exit("ditfa: error: writing the PNG needs Pillow: pip install pillow")
    if args.command == "calibrate":
        check_output(args.parser, "--out", Path(args.out), ".json")
        if args.eval_samples == 1:
            args.parser.error("argument --eval-samples: must be 0 (skip) or at least 2 (FID needs 2 images)")
        if args.granularity == "head" and args.mode != "fast":
            args.parser.error("argument --granularity: head-wise plans are searched with --mode fast only")
    elif args.command == "sample":
        check_output(args.parser, "--out", Path(args.out), ".npz")
        if not Path(args.plan or ".").exists():
            args.parser.error(f"argument --plan: no such file '{args.plan}'")
    elif args.command == "table" and args.json:
        check_output(args.parser, "--json", Path(args.json), ".json", png_beside=False)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 failed, 2 bad input, 130 interrupted)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parser().parse_args(argv)
    check_args(args)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted (Ctrl-C): stopped; no file is left half-written\n")
        return EXIT_INTERRUPTED
    except (OSError, RuntimeError) as e:
        sys.stderr.write(f"ditfa: error: {e}\n")
        return EXIT_FAILED
