"""A plan drawn as a heatmap (steps x layers coloured by strategy), as in paper Fig. 5.

People read plans this way: which layers stay full, where sharing across steps or CFG takes
over. A head-wise plan (DiTFastAttnV2) draws each layer as a band of head rows (head 0 on top),
bands parted by a thin white line. Colours and labels are the strategy registry's; the front end
(web/) reads the same ones from its generated vocabulary, so a plan looks the same in the README,
on the command line's PNG and inside a node.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

from .plan import Plan
from .plan.io import write_atomic
from .strategies import Strategy

COLOURS: dict[Strategy, tuple[int, int, int]] = {s: s.colour for s in Strategy}
"""Each strategy's cell colour (RGB), in vocabulary order: the registry's ``StrategySpec.colour``."""
LABELS: dict[Strategy, str] = {s: s.label for s in Strategy}
"""Each strategy's legend words: the registry's ``StrategySpec.label``."""
COST_UNIT = "model evaluations per sampling step"
"""The one name of a search's cost (the plan file's ``calibration.generations``): forwards / steps."""


def window_text(plan: Plan) -> str:
    """The calibration window in words, with what ``window_pair_fraction`` means beside its value:
    e.g. "window band 0.125 of the tokens; admits 12.1% of query-key pairs" ("" when neither is known)."""
    parts = []
    w = plan.calibration.window if plan.calibration is not None else None
    if w is not None:
        parts.append(f"{w.kind} radius {w.radius}" if w.radius else f"{w.kind} {w.fraction:g} of the tokens")
    if plan.cost.window_pair_fraction is not None:
        parts.append(f"admits {100 * plan.cost.window_pair_fraction:.1f}% of query-key pairs")
    return "window " + "; ".join(parts) if parts else ""


def caption(plan: Plan) -> list[str]:
    """The lines printed above the heatmap (and by the command line after calibrating)."""
    lines = [f"{plan.model.family}: {plan.steps} steps x {plan.num_layers} layers, "
             f"attention FLOPs {100 * plan.cost.attn_flops_fraction:.1f}% of full"]
    c = plan.calibration
    if c is not None:
        lines.append(f"search {c.search}, delta {c.delta:g}, {c.sampler}/{c.scheduler}, cfg {c.cfg:g}, "
                     f"{c.generations:.2f} {COST_UNIT}")
    window = window_text(plan)
    if window:
        lines.append(window)
    if plan.is_headwise:
        lines.append(f"head-wise: each layer is a band of {plan.model.num_heads} head rows, head 0 on top")
    return lines


def shares(plan: Plan) -> dict[Strategy, float]:
    """Share of each strategy over all cells (a head-wise cell counts 1/heads per head), as the web view."""
    counts = dict.fromkeys(Strategy, 0.0)
    for row in plan.grid:
        for cell in row:
            heads = cell if isinstance(cell, tuple) else (cell,)
            for strategy in heads:
                counts[strategy] += 1.0 / len(heads)
    total = plan.steps * plan.num_layers
    return {s: n / total for s, n in counts.items()}


HEAD_ROWS_PX = 1440
"""Height the head rows of a head-wise plan aim at (1 to 6 px a row): Flux's 57 layers x 24 heads
draw at 1 px a row, SD3's 24 x 24 at 2 px."""
MAX_HEAD_ROWS = 4096
"""Most head rows drawn in all; beyond it each band shows evenly sampled heads (the image stays bounded)."""
LAYER_GAP = 2
"""px of white between two layer bands of a head-wise plan."""


@dataclass(frozen=True)
class Layout:
    """Where :func:`render_png` draws the grid, in image pixels.

    Step ``s`` is column ``left + s * col`` (``col - 1`` px wide, a 1 px gap); layer ``l`` is the band
    ``top + l * band``, holding ``rows`` rows of ``row_px`` px then a gap of ``band - rows * row_px``.
    A layer-wise plan has one row per band; a head-wise one a row per drawn head.
    """

    left: int
    top: int
    col: int
    band: int
    rows: int
    row_px: int
    heads: int

    @classmethod
    def of(cls, plan: Plan, top: int, cell: int | None = None) -> Layout:
        """The layout of ``plan`` below ``top`` px of caption; ``cell``: px a step (layer-wise, a layer)."""
        steps, layers, heads = plan.steps, plan.num_layers, plan.model.num_heads
        if not plan.is_headwise:
            cell = cell or max(6, min(24, 720 // max(steps, layers)))
            return cls(58, top, cell, cell, 1, cell - 1, 1)
        rows = min(heads, max(1, MAX_HEAD_ROWS // layers))
        row_px = max(1, min(6, HEAD_ROWS_PX // (layers * rows)))
        col = cell or max(6, min(24, 720 // steps))
        return cls(58, top, col, rows * row_px + LAYER_GAP, rows, row_px, heads)

    def head_of_row(self, row: int) -> int:
        """The head drawn in row ``row`` of a band (all of them unless there are more than ``rows``)."""
        return row * self.heads // self.rows

    def box(self, step: int, layer: int, head: int = 0) -> tuple[int, int, int, int]:
        """The pixels (x0, y0, x1, y1, inclusive) of a cell, or of one head's row in a head-wise cell;
        a head not drawn (sampled out) maps to the row showing the nearest drawn head before it."""
        row = min(self.rows - 1, ((head + 1) * self.rows - 1) // self.heads)   # max r: head_of_row(r) <= head
        x0, y0 = self.left + step * self.col, self.top + layer * self.band + row * self.row_px
        return x0, y0, x0 + self.col - 2, y0 + self.row_px - 1


def render_png(plan: Plan, path: str | os.PathLike[str], cell: int | None = None) -> None:
    """Write the plan's heatmap: x = step (left: noisiest), y = layer (top: first layer; a head-wise plan:
    a band of head rows per layer), axis titles, and a legend with each strategy present and its share
    of the cells. Placement is :class:`Layout`'s. Written atomically (``write_atomic``), so an
    interrupted run never leaves half a PNG. Needs Pillow (ComfyUI ships it; the bare engine does not)."""
    try:
        from PIL import Image, ImageDraw
    except ImportError as e:
        raise RuntimeError("drawing a plan needs Pillow: pip install pillow") from e
    lines = caption(plan)
    share = {s: f for s, f in shares(plan).items() if f > 0}
    at = Layout.of(plan, 16 + 14 * len(lines), cell)
    grid_w, grid_h = plan.steps * at.col, plan.num_layers * at.band
    width = max(at.left + grid_w + 16, 8 + 7 * max(map(len, lines)), 440)
    height = at.top + grid_h + 36 + 18 * len(share) + 8
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((8, 6 + 14 * i), line, fill="black")
    _draw_cells(draw, plan, at)
    _draw_axes(draw, plan, at)
    y = at.top + grid_h + 36
    for strategy, fraction in share.items():
        draw.rectangle([8, y, 20, y + 12], fill=COLOURS[strategy], outline="black")
        percent = f"{100 * fraction:.0f}%" if fraction >= 0.005 else "<1%"
        draw.text((26, y), f"{LABELS[strategy]} {percent}", fill="black")
        y += 18
    write_atomic(path, lambda f: img.save(f, format="PNG"))


def _draw_cells(draw, plan: Plan, at: Layout) -> None:
    """Each cell as one rectangle, or per head-wise cell one per run of equal strategies down its rows."""
    for s, row in enumerate(plan.grid):
        for layer, value in enumerate(row):
            x0, y0, x1, _ = at.box(s, layer)
            drawn = [value] * at.rows if isinstance(value, Strategy) else \
                [value[at.head_of_row(r)] for r in range(at.rows)]
            r = 0
            for strategy, run in itertools.groupby(drawn):
                n = len(list(run))
                top = y0 + r * at.row_px
                draw.rectangle([x0, top, x1, top + n * at.row_px - 1], fill=COLOURS[strategy])
                r += n


def _draw_axes(draw, plan: Plan, at: Layout) -> None:
    """Layer labels (L0, L1, ...), step numbers and axis titles, spaced so labels never overlap."""
    steps, layers = plan.steps, plan.num_layers
    grid_h = layers * at.band
    every_layer = max(1, -(-30 // at.band)) if at.rows == 1 else max(1, -(-12 // at.band))
    every_step = max(1, -(-30 // at.col))
    for layer in range(0, layers, every_layer):
        draw.text((22, at.top + layer * at.band), f"L{layer}", fill="black")
    for s in range(0, steps, every_step):
        draw.text((at.left + s * at.col, at.top + grid_h + 2), str(s), fill="black")
    draw.text((at.left, at.top + grid_h + 16), "sampling step (left: noisiest) ->", fill="black")
    for i, ch in enumerate("layer"):   # vertical axis title, one letter per line
        draw.text((6, at.top + i * 11), ch, fill="black")
