"""A plan drawn as a heatmap (steps x layers coloured by strategy), as in paper Fig. 5.

People read plans this way: which layers stay full, where sharing across steps or CFG takes
over. The same colours are used by the ComfyUI front-end extension (web/), so a plan looks the
same in the README, on the command line's PNG and inside a node.
"""

from __future__ import annotations

import os

from .plan import Plan
from .strategies import Strategy

COLOURS: dict[Strategy, tuple[int, int, int]] = {
    Strategy.FULL: (222, 222, 222),
    Strategy.AST: (55, 126, 184),
    Strategy.WA_RS: (255, 127, 0),
    Strategy.ASC: (77, 175, 74),
    Strategy.WA_RS_ASC: (152, 78, 163),
}
LABELS: dict[Strategy, str] = {
    Strategy.FULL: "FULL",
    Strategy.AST: "AST (share across steps)",
    Strategy.WA_RS: "WA-RS (window + residual)",
    Strategy.ASC: "ASC (share across CFG)",
    Strategy.WA_RS_ASC: "WA-RS + ASC",
}


def _caption(plan: Plan) -> list[str]:
    lines = [f"{plan.model.family}: {plan.steps} steps x {plan.num_layers} layers, "
             f"attention FLOPs {100 * plan.cost.attn_flops_fraction:.1f}% of full"]
    c = plan.calibration
    if c is not None:
        lines.append(f"search {c.search}, delta {c.delta:g}, {c.sampler}/{c.scheduler}, cfg {c.cfg:g}, "
                     f"window {c.window.kind} {c.window.radius or f'{c.window.fraction:g}'}, "
                     f"{c.generations:.2f} generations")
    return lines


def render_png(plan: Plan, path: str | os.PathLike[str], cell: int | None = None) -> None:
    """Write the plan's heatmap: x = step (left: noisiest), y = layer (top: first layer)."""
    try:
        from PIL import Image, ImageDraw
    except ImportError as e:  # Pillow ships with ComfyUI; the bare engine does not need it.
        raise RuntimeError("drawing a plan needs Pillow: pip install pillow") from e
    steps, layers = plan.steps, plan.num_layers
    cell = cell or max(6, min(24, 720 // max(steps, layers)))
    left, top, legend_h = 44, 16 + 14 * len(_caption(plan)), 18 * len(COLOURS) + 24
    width = max(left + steps * cell + 16, 440)
    height = top + layers * cell + legend_h
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(_caption(plan)):
        draw.text((8, 6 + 14 * i), line, fill="black")
    for s, row in enumerate(plan.grid):
        for layer, value in enumerate(row):
            heads = value if isinstance(value, tuple) else (value,)
            x0, y0 = left + s * cell, top + layer * cell
            for h, strategy in enumerate(heads):   # a head-wise cell: one stripe per head
                hx0 = x0 + (cell * h) // len(heads)
                hx1 = x0 + (cell * (h + 1)) // len(heads)
                hx1 = hx1 - 2 if h == len(heads) - 1 else hx1 - 1   # a gap between cells
                draw.rectangle([hx0, y0, max(hx0, hx1), y0 + cell - 2], fill=COLOURS[strategy])
    every = max(1, -(-30 // cell))   # label every k-th row/column so labels never overlap
    for layer in range(0, layers, every):
        draw.text((6, top + layer * cell), f"L{layer}", fill="black")
    for s in range(0, steps, every):
        draw.text((left + s * cell, top + layers * cell + 2), str(s), fill="black")
    y = top + layers * cell + 20
    for strategy, colour in COLOURS.items():
        draw.rectangle([8, y, 20, y + 12], fill=colour, outline="black")
        draw.text((26, y), LABELS[strategy], fill="black")
        y += 18
    img.save(path)
