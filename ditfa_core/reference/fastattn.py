"""Running the reference DiT with a plan, or under a plan search.

This is the reference model's adapter, the counterpart of what ``nodes/`` does for ComfyUI: it
describes each attention call to the engine (layer, step, CFG chunks, token layout) and routes
the sampler's model evaluations through a search when one is calibrating.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..context import COND_UNCOND, CallContext, Chunk
from ..engine import FastAttention, Stats
from ..schedule import Grid, Schedule
from ..search import make_search
from ..strategies import Strategy
from ..windows import TokenLayout, WindowSpec
from .model import AttentionHook, DiT
from .sampling import AttentionForStep, sample

Attend = Callable[[Tensor, Tensor, Tensor, CallContext], Tensor]


def token_layout(model: DiT, size: tuple[int, int] | None = None) -> TokenLayout:
    """The reference DiT's tokens: an image grid only (class and time enter through adaLN)."""
    height, width = size or (model.config.image_size, model.config.image_size)
    grid = model.grid(torch.empty(0, 0, height, width))
    return TokenLayout(grid[0] * grid[1] * grid[2], grid=grid)


def pair_fraction(model: DiT, window: WindowSpec) -> float:
    """Share of the query-key pairs that ``window`` admits on the model's token grid (a plan's
    ``window_pair_fraction``, which prices WA-RS in the FLOPs accounting)."""
    layout = token_layout(model)
    return window.resolve(layout).pair_count() / layout.n_tokens**2


def hooks(attend: Attend, layout: TokenLayout, guided: bool) -> AttentionForStep:
    """Per-step attention hooks that describe each call to ``attend`` (an engine or a search)."""
    chunks: tuple[Chunk, ...] = COND_UNCOND if guided else COND_UNCOND[:1]

    def for_step(step: int) -> AttentionHook:
        def hook(q: Tensor, k: Tensor, v: Tensor, layer: int) -> Tensor:
            return attend(q, k, v, CallContext(layer, step, chunks, layout, eval_key=step))
        return hook

    return for_step


@dataclass
class Generation:
    images: Tensor
    stats: Stats
    seconds: float


def generate(
    model: DiT,
    labels: Sequence[int] | Tensor,
    grid: Grid | None = None,
    *,
    steps: int = 20,
    cfg: float = 4.0,
    seed: int = 0,
    window: WindowSpec | None = None,
    backend: str = "auto",
    size: tuple[int, int] | None = None,
    noise: Tensor | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Generation:
    """Images sampled with ``grid`` applied (None: all FULL, i.e. the uncompressed model); ``noise`` and
    ``progress`` as in :func:`~ditfa_core.reference.sampling.sample`."""
    if grid is None:
        grid = Schedule.uniform(Strategy.FULL, steps, model.num_layers).grid
    schedule = Schedule(grid)
    if schedule.num_steps != steps:
        raise ValueError(f"the grid has {schedule.num_steps} steps but {steps} were asked for")
    engine = FastAttention(schedule, window, backend=backend)
    start = time.perf_counter()
    try:
        images = sample(model, labels, steps=steps, cfg=cfg, seed=seed, size=size, noise=noise,
                        progress=progress,
                        attention_for_step=hooks(engine, token_layout(model, size), cfg != 1.0))
    finally:
        engine.close()
    return Generation(images, engine.stats, time.perf_counter() - start)


@dataclass
class SearchOutcome:
    grid: Grid
    images: Tensor
    seconds: float
    generations: float
    forwards: int
    delta: float       # the error budget it was searched under


def calibrate(
    model: DiT,
    labels: Sequence[int] | Tensor,
    *,
    mode: str = "fast",
    delta: float = 0.1,
    steps: int = 20,
    cfg: float = 4.0,
    seed: int = 0,
    window: WindowSpec | None = None,
    backend: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    candidates: Sequence[Strategy] | None = None,
    granularity: str = "layer",
    saving: str = "flops",
) -> SearchOutcome:
    """Search a plan on one calibration batch (paper: a few prompts; here: class labels).

    ``candidates`` restricts the strategies the search may choose besides FULL (e.g. one technique
    alone, for the ablation rows of Table 1; None: the search's own vocabulary). ``granularity``
    "head" searches one strategy per head (DiTFastAttnV2), maximising the ``saving`` it names ("flops",
    deterministic, the default here: kernel timings at the reference DiT's 256 tokens say little; or
    "latency", measured)."""
    extra = {"saving": saving} if granularity == "head" else {}
    search = make_search(mode, steps, model.num_layers, delta, window, backend=backend,
                         candidates=candidates, granularity=granularity, **extra)
    start = time.perf_counter()
    try:
        images = sample(model, labels, steps=steps, cfg=cfg, seed=seed, progress=progress,
                        attention_for_step=hooks(search.attention, token_layout(model), cfg != 1.0),
                        evaluate=search.evaluate)
    finally:
        search.close()
    seconds = time.perf_counter() - start
    return SearchOutcome(search.grid(), images, seconds, search.generations, search.forwards, delta)
