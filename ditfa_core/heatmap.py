"""A plan drawn as a heatmap (steps x layers coloured by strategy), as in paper Fig. 5.

People read plans this way: which layers stay full, where sharing across steps or CFG takes
over. The same colours are used by the ComfyUI front-end extension (web/), so a plan looks the
same in the README, on the command line's PNG and inside a node.
"""

from __future__ import annotations

import os

from .plan import Plan
from .plan.io import write_atomic
from .strategies import Strategy

COLOURS: dict[Strategy, tuple[int, int, int]] = {
    Strategy.FULL: (222, 222, 222),
    Strategy.AST: (55, 126, 184),
    Strategy.WA_RS: (255, 127, 0),
    Strategy.ASC: (77, 175, 74),
    Strategy.WA_RS_ASC: (152, 78, 163),
}
COST_UNIT = "model evaluations per sampling step"
"""The one name of a search's cost (the plan file's ``calibration.generations``): forwards / steps."""
LABELS: dict[Strategy, str] = {
    Strategy.FULL: "FULL",
    Strategy.AST: "AST (share across steps)",
    Strategy.WA_RS: "WA-RS (window + residual)",
    Strategy.ASC: "ASC (share across CFG)",
    Strategy.WA_RS_ASC: "WA-RS + ASC",
}


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


def render_png(plan: Plan, path: str | os.PathLike[str], cell: int | None = None) -> None:
    """Write the plan's heatmap: x = step (left: noisiest), y = layer (top: first layer), axis titles,
    and a legend with each strategy's share of the cells. Written atomically (``write_atomic``), so an
    interrupted run never leaves half a PNG. Needs Pillow (ComfyUI ships it; the bare engine does not)."""
    try:
        from PIL import Image, ImageDraw
    except ImportError as e:
        raise RuntimeError("drawing a plan needs Pillow: pip install pillow") from e
    lines = caption(plan)
    steps, layers = plan.steps, plan.num_layers
    cell = cell or max(6, min(24, 720 // max(steps, layers)))
    left, top = 58, 16 + 14 * len(lines)
    grid_w, grid_h = steps * cell, layers * cell
    width = max(left + grid_w + 16, 8 + 7 * max(map(len, lines)), 440)
    height = top + grid_h + 36 + 18 * len(COLOURS) + 8
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((8, 6 + 14 * i), line, fill="black")
    _draw_cells(draw, plan, left, top, cell)
    every = max(1, -(-30 // cell))   # label every k-th row/column so labels never overlap
    for layer in range(0, layers, every):
        draw.text((22, top + layer * cell), f"L{layer}", fill="black")
    for s in range(0, steps, every):
        draw.text((left + s * cell, top + grid_h + 2), str(s), fill="black")
    draw.text((left, top + grid_h + 16), "sampling step (left: noisiest) ->", fill="black")
    for i, ch in enumerate("layer"):   # vertical axis title, one letter per line
        draw.text((6, top + i * 11), ch, fill="black")
    y = top + grid_h + 36
    share = shares(plan)
    for strategy, colour in COLOURS.items():
        draw.rectangle([8, y, 20, y + 12], fill=colour, outline="black")
        draw.text((26, y), f"{LABELS[strategy]} {100 * share[strategy]:.0f}%", fill="black")
        y += 18
    write_atomic(path, lambda f: img.save(f, format="PNG"))


def _draw_cells(draw, plan: Plan, left: int, top: int, cell: int) -> None:
    for s, row in enumerate(plan.grid):
        for layer, value in enumerate(row):
            heads = value if isinstance(value, tuple) else (value,)
            x0, y0 = left + s * cell, top + layer * cell
            for h, strategy in enumerate(heads):   # a head-wise cell: one stripe per head
                hx0 = x0 + (cell * h) // len(heads)
                hx1 = x0 + (cell * (h + 1)) // len(heads)
                hx1 = hx1 - 2 if h == len(heads) - 1 else hx1 - 1   # a gap between cells
                draw.rectangle([hx0, y0, max(hx0, hx1), y0 + cell - 2], fill=COLOURS[strategy])
