"""Steps: which plan row a run's step uses, the grid of a run at another step count, and the cells whose
history (an earlier output, an earlier FULL step) a plan lacks.

A plan made at S steps runs at any T steps by position along the schedule. Mapping rows alone is not
enough: a WA-RS cell adds the residual of its layer's last FULL step, and a run that skipped that FULL
row would add a residual from another step; such cells run FULL instead (``_remap_lane``).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..strategies import Strategy
from .fields import Cell, Grid

Gap = tuple[int, int, int | None, str]
"""A cell that cannot run as written: (step, layer, head or None for a per-layer cell, why)."""



def check_step(step: int, total_steps: int) -> None:
    """Raise ``ValueError`` unless ``total_steps >= 1`` and ``0 <= step < total_steps`` (ints)."""
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be an integer >= 1, got {total_steps!r}")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < total_steps:
        raise ValueError(f"step must be an integer in [0, {total_steps}), got {step!r}")


def plan_row(step: int, total_steps: int, plan_steps: int) -> int:
    """The row of a ``plan_steps``-row plan for ``step`` of a ``total_steps`` run: position along the
    schedule, ``min(S - 1, floor(step * S / total_steps))``; step 0 always maps to row 0."""
    check_step(step, total_steps)
    return min(plan_steps - 1, step * plan_steps // total_steps)


def resample(grid: Grid, num_heads: int, total_steps: int) -> Grid:
    """The grid of a ``total_steps`` run: row ``plan_row(s, ...)`` for each step s, except that a WA-RS
    cell whose residual source the run skipped runs FULL (per head for head-wise cells). A head-wise
    cell whose heads all end up alike on a per-layer row collapses back to one strategy."""
    check_step(0, total_steps)
    rows = [plan_row(s, total_steps, len(grid)) for s in range(total_steps)]
    columns = []
    for layer in range(len(grid[0])):
        cells = [row[layer] for row in grid]
        if all(isinstance(c, Strategy) for c in cells):
            columns.append(_remap_lane(cells, rows))
            continue
        lanes = [_remap_lane([c if isinstance(c, Strategy) else c[h] for c in cells], rows)
                 for h in range(num_heads)]
        column = []
        for s, r in enumerate(rows):
            cell = tuple(lane[s] for lane in lanes)
            column.append(cell[0] if isinstance(cells[r], Strategy) and len(set(cell)) == 1 else cell)
        columns.append(column)
    return tuple(tuple(column[s] for column in columns) for s in range(total_steps))


def _remap_lane(column: Sequence[Strategy], rows: Sequence[int]) -> list[Strategy]:
    """One layer's (or head's) strategies for a run whose step s uses plan row ``rows[s]``.

    A WA-RS cell at row r adds the residual of the FULL step its plan row refers to: the last FULL
    row f before r. The engine adds the residual of the most recent FULL step of the run, so the
    cell keeps WA-RS only when that step stood for f (it ran row f, or it was a WA-RS cell with the
    same source f made FULL); otherwise it runs FULL, which stands for f from then on.
    """
    source: list[int | None] = []
    last = None
    for r, strategy in enumerate(column):
        source.append(last)
        if strategy.is_full:
            last = r
    out, ran = [], None   # the plan row the run's most recent FULL step stands for
    for r in rows:
        strategy = column[r]
        if strategy.adds_residual and ran != source[r]:
            out.append(Strategy.FULL)
            ran = source[r]
            continue
        if strategy.is_full:
            ran = r
        out.append(strategy)
    return out


def history_gaps(grid: Sequence[Sequence[Cell]], heads: int) -> list[Gap]:
    """Cells that cannot run as written, in column order.

    AST reuses the layer's output of an earlier step, so it cannot open a plan. WA-RS adds the
    residual of the layer's most recent FULL step, so it needs a FULL step before it (per head for
    head-wise cells). A plan with such cells is refused.
    """
    found: list[Gap] = []
    for layer in range(len(grid[0])):
        has_full = [False] * heads
        all_full = False
        for step, row in enumerate(grid):
            cell = row[layer]
            if isinstance(cell, Strategy):
                why = cell.gap(step, all_full)
                if why:
                    found.append((step, layer, None, why))
                if cell.is_full:
                    has_full, all_full = [True] * heads, True
                continue
            for head, strategy in enumerate(cell):
                why = strategy.gap(step, has_full[head])
                if why:
                    found.append((step, layer, head, why))
                has_full[head] = has_full[head] or strategy.is_full
            all_full = all(has_full)
    return found
