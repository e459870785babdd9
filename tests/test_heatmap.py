"""The heatmap PNG (ditfa_core/heatmap.py): colours and labels are the strategy registry's; a head-wise
plan draws one row per head inside each layer's band (pixel colours checked at chosen (step, layer, head)
cells of Flux- and SD3-sized plans), bands parted by white, the image bounded; a layer-wise plan draws
as before; the legend lists the strategies present, in vocabulary order."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from ditfa_core import heatmap
from ditfa_core.plan import Cost, ModelInfo, Plan
from ditfa_core.strategies import Strategy

Image = pytest.importorskip("PIL.Image")
WHITE = (255, 255, 255)
LATER = [Strategy.FULL, Strategy.AST, Strategy.ASC, Strategy.ARROW, Strategy.ARROW_ASC]


def _plan(steps: int, layers: int, heads: int, headwise: bool, seed: int = 0) -> Plan:
    """Step 0 all FULL; later steps random over ``LATER``: per head when ``headwise`` (every fifth layer
    still a layer-wise cell, as a head-wise plan may mix them)."""
    rng = random.Random(seed)
    grid = [(Strategy.FULL,) * layers]
    for _ in range(1, steps):
        grid.append(tuple(tuple(rng.choice(LATER) for _ in range(heads)) if headwise and layer % 5
                          else rng.choice(LATER) for layer in range(layers)))
    grid = tuple(grid)
    return Plan(ModelInfo("flux", layers, heads, 64, 8, None), grid, Cost.estimate(grid, 0.25), None)


def _strategy(plan: Plan, step: int, layer: int, head: int) -> Strategy:
    cell = plan.grid[step][layer]
    return cell if isinstance(cell, Strategy) else cell[head]


def _render(plan: Plan, tmp_path: Path) -> tuple[object, heatmap.Layout]:
    heatmap.render_png(plan, tmp_path / "plan.png")
    layout = heatmap.Layout.of(plan, 16 + 14 * len(heatmap.caption(plan)))
    return Image.open(tmp_path / "plan.png").convert("RGB"), layout


def test_colours_and_labels_are_the_registrys() -> None:
    assert list(heatmap.COLOURS) == list(Strategy) == list(heatmap.LABELS)
    assert all(heatmap.COLOURS[s] == s.spec.colour and heatmap.LABELS[s] == s.spec.label for s in Strategy)
    assert len(set(heatmap.COLOURS.values())) == len(Strategy) and WHITE not in heatmap.COLOURS.values()


@pytest.mark.parametrize(("steps", "layers", "heads"), [(28, 57, 24), (28, 24, 24), (20, 30, 48)])
def test_head_rows_inside_each_layer_band(tmp_path: Path, steps: int, layers: int, heads: int) -> None:
    """Flux (57 layers x 24 heads), SD3 (24 x 24), and 48 heads: every head drawn, at least 1 px tall and
    5 px wide, in order inside its layer's band, a white line between bands; the colour at the centre of
    400 random (step, layer, head) cells is that head's strategy."""
    plan = _plan(steps, layers, heads, headwise=True)
    img, at = _render(plan, tmp_path)
    assert at.rows == heads and at.row_px >= 1 and at.col >= 6
    assert any(f"{heads} head rows" in line for line in heatmap.caption(plan))
    rng = random.Random(1)
    for _ in range(400):
        s, layer, h = rng.randrange(steps), rng.randrange(layers), rng.randrange(heads)
        x0, y0, x1, y1 = at.box(s, layer, h)
        assert img.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)) == heatmap.COLOURS[_strategy(plan, s, layer, h)]
        assert img.getpixel((x1 + 1, y0)) == WHITE   # the gap between steps
    for layer in range(layers):
        boxes = [at.box(3, layer, h) for h in range(heads)]
        assert all(b[1] == a[3] + 1 for a, b in itertools.pairwise(boxes))   # stacked, head 0 on top
        if layer + 1 < layers:
            gap = range(boxes[-1][3] + 1, at.box(3, layer + 1, 0)[1])
            assert len(gap) == heatmap.LAYER_GAP and all(img.getpixel((boxes[0][0], y)) == WHITE for y in gap)
    width, height = img.size
    assert at.box(steps - 1, layers - 1, heads - 1)[3] < height and at.box(steps - 1, 0, 0)[2] < width
    assert width <= 800 and height <= 3200, img.size


def test_more_head_rows_than_the_cap_are_sampled(tmp_path: Path) -> None:
    """100 layers x 100 heads: 40 evenly sampled heads per band keep the image under 5,000 px."""
    plan = _plan(3, 100, 100, headwise=True)
    img, at = _render(plan, tmp_path)
    assert at.rows * plan.num_layers <= heatmap.MAX_HEAD_ROWS and img.size[1] < 5000
    for layer in (1, 57, 99):
        for row in (0, 13, at.rows - 1):
            head = at.head_of_row(row)
            x0, y0, _, _ = at.box(2, layer, head)
            assert img.getpixel((x0 + 2, y0)) == heatmap.COLOURS[_strategy(plan, 2, layer, head)]


def test_a_layer_wise_plan_draws_as_before(tmp_path: Path) -> None:
    """One square cell per (step, layer) of ``max(6, min(24, 720 // max(steps, layers)))`` px, a 1 px gap."""
    plan = _plan(20, 28, 16, headwise=False)
    img, at = _render(plan, tmp_path)
    cell = 720 // 28
    assert (at.col, at.band, at.rows) == (min(24, cell), min(24, cell), 1)
    top = 16 + 14 * len(heatmap.caption(plan))
    for s, layer in [(0, 0), (5, 3), (19, 27), (11, 14)]:
        x, y = 58 + s * at.col, top + layer * at.col
        colour = heatmap.COLOURS[plan.grid[s][layer]]
        assert img.getpixel((x, y)) == img.getpixel((x + at.col - 2, y + at.col - 2)) == colour
        assert img.getpixel((x + at.col - 1, y)) == img.getpixel((x, y + at.col - 1)) == WHITE


def test_the_legend_lists_the_strategies_present_in_vocabulary_order(tmp_path: Path) -> None:
    plan = _plan(6, 4, 8, headwise=True)
    img, at = _render(plan, tmp_path)
    present = [s for s, share in heatmap.shares(plan).items() if share > 0]
    assert present == [s for s in Strategy if s in {*LATER}] and Strategy.WA_RS not in present
    legend_top = at.top + plan.num_layers * at.band + 36
    assert img.size[1] == legend_top + 18 * len(present) + 8
    assert [img.getpixel((14, legend_top + 18 * i + 6)) for i in range(len(present))] == \
        [heatmap.COLOURS[s] for s in present]
