"""A strategy grid laid over one sampling run, with what each step must keep for later steps.

The engine computes the WA-RS residual ``full - window`` only at FULL steps that a later step
adding the residual will read, and keeps a layer's output only when a later step may reuse it.
Both facts depend on the grid of *this run* (a plan calibrated at 50 steps is resampled to the
run's step count first), so they are derived here once per run instead of at every attention call.

A cell is one strategy for the whole layer, or a tuple of per-head strategies (DiTFastAttnV2's
head-wise plans). Each head of a head-wise layer is its own *lane*: its residual comes from that
head's last FULL step and its reused output from that head's last computed step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .strategies import Strategy

Cell = Strategy | tuple[Strategy, ...]
Grid = tuple[tuple[Cell, ...], ...]
Keep = bool | tuple[bool, ...]
"""A cache need per layer: one flag, or one per head for a head-wise layer."""


def residual_needed(lane: Sequence[Strategy]) -> tuple[bool, ...]:
    """For each step: does a later step adding the residual read one computed at this step?

    True at step s iff some s' > s adds the residual (WA-RS) and no FULL step lies strictly
    between s and s' (that FULL step would refresh the residual instead).
    """
    out = [False] * len(lane)
    pending = False  # a residual-adding step follows before the next FULL
    for s in range(len(lane) - 1, -1, -1):
        out[s] = pending
        if lane[s].is_full:
            pending = False
        if lane[s].adds_residual:
            pending = True
    return tuple(out)


def output_needed(lane: Sequence[Strategy]) -> tuple[bool, ...]:
    """For each step: may a later step reuse the output computed at this step?

    True iff any later step reuses outputs (AST). Keeping the output whenever such a step lies
    ahead (rather than only when the very next step reuses it) tolerates skipped forwards: when
    another node (EasyCache) skips the step in between, AST still finds the last computed output.
    """
    out = [False] * len(lane)
    ahead = False
    for s in range(len(lane) - 1, -1, -1):
        out[s] = ahead
        ahead = ahead or lane[s].reuses_output
    return tuple(out)


def lanes(column: Sequence[Cell]) -> list[list[Strategy]]:
    """One layer's column as lanes: itself when every cell is per layer, else one lane per head
    (a per-layer cell in a head-wise layer applies to every head)."""
    heads = {len(c) for c in column if not isinstance(c, Strategy)}
    if not heads:
        return [list(column)]   # type: ignore[arg-type]
    if len(heads) > 1:
        raise ValueError(f"head-wise cells of one layer list different head counts: {sorted(heads)}")
    h = heads.pop()
    return [[c if isinstance(c, Strategy) else c[i] for c in column] for i in range(h)]


def _needs(column: Sequence[Cell], rule, keep_everything: bool) -> list[Keep]:
    """Per step of one layer: ``rule`` over its lanes, one flag per layer or a tuple per head."""
    per_lane = lanes(column)
    if keep_everything:
        flags = [(True,) * len(column) for _ in per_lane]
    else:
        flags = [rule(lane) for lane in per_lane]
    if len(per_lane) == 1 and all(isinstance(c, Strategy) for c in column):
        return list(flags[0])
    return [tuple(f[s] for f in flags) for s in range(len(column))]


@dataclass(frozen=True)
class Schedule:
    """The strategies of one run (steps x layers, cells per layer or per head) and their cache needs."""

    grid: Grid
    keep_everything: bool = False
    """A plan search knows nothing of the steps ahead: keep every residual and output."""
    needs_residual: tuple[tuple[Keep, ...], ...] = field(init=False, repr=False)
    needs_output: tuple[tuple[Keep, ...], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.grid or not self.grid[0]:
            raise ValueError("a schedule needs at least one step and one layer")
        width = len(self.grid[0])
        if any(len(row) != width for row in self.grid):
            raise ValueError("every step of a schedule must list the same number of layers")
        columns = list(zip(*self.grid, strict=True))
        residual = [_needs(c, residual_needed, self.keep_everything) for c in columns]
        output = [_needs(c, output_needed, self.keep_everything) for c in columns]
        object.__setattr__(self, "needs_residual", tuple(zip(*residual, strict=True)))
        object.__setattr__(self, "needs_output", tuple(zip(*output, strict=True)))

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[Strategy | str | Sequence[Strategy | str]]]) -> Schedule:
        """A schedule from names: a cell is a name, or a list of per-head names."""
        def cell(c):
            return Strategy.parse(c) if isinstance(c, str) else tuple(Strategy.parse(s) for s in c)
        return cls(tuple(tuple(cell(c) for c in row) for row in rows))

    @classmethod
    def uniform(cls, strategy: Strategy, steps: int, layers: int) -> Schedule:
        return cls(tuple((strategy,) * layers for _ in range(steps)))

    @property
    def num_steps(self) -> int:
        return len(self.grid)

    @property
    def num_layers(self) -> int:
        return len(self.grid[0])

    def _row(self, step: int) -> tuple[Cell, ...]:
        """Steps past the end reuse the last row, so extra evaluations at the very end of a schedule
        (some samplers add one) stay defined."""
        return self.grid[min(step, self.num_steps - 1)]

    def _strategies(self, step: int | None = None):
        rows = self.grid if step is None else (self._row(step),)
        for row in rows:
            for c in row:
                yield from ((c,) if isinstance(c, Strategy) else c)

    @property
    def is_all_full(self) -> bool:
        return all(s is Strategy.FULL for s in self._strategies())

    def cell(self, step: int, layer: int) -> Cell:
        """The strategy at (step, layer), or the tuple of per-head strategies."""
        return self._row(step)[layer]

    def strategy(self, step: int, layer: int) -> Strategy:
        """The per-layer strategy at (step, layer); a head-wise cell raises ValueError."""
        c = self.cell(step, layer)
        if not isinstance(c, Strategy):
            raise ValueError(f"step {step}, layer {layer} is head-wise; use cell()")
        return c

    def shares_cfg_at(self, step: int) -> bool:
        """Whether any layer (or head) shares attention across CFG branches at ``step``."""
        return any(s.shares_cfg for s in self._strategies(step))

    def keeps_residual(self, step: int, layer: int) -> Keep:
        return self.needs_residual[min(step, self.num_steps - 1)][layer]

    def keeps_output(self, step: int, layer: int) -> bool:
        """Whether the layer's output (every head) must be kept: some lane reuses it later."""
        keep = self.needs_output[min(step, self.num_steps - 1)][layer]
        return keep if isinstance(keep, bool) else any(keep)
