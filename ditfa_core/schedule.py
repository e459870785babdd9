"""A strategy grid laid over one sampling run, with what each step must keep for later steps.

The engine computes the WA-RS residual ``full - window`` only at FULL steps that a later WA-RS
step will read, and keeps a layer's output only when a later AST step may reuse it. Both facts
depend on the grid of *this run* (a plan calibrated at 50 steps is resampled to the run's step
count first), so they are derived here once per run instead of at every attention call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .strategies import Strategy

Grid = tuple[tuple[Strategy, ...], ...]


def residual_needed(column: Sequence[Strategy]) -> tuple[bool, ...]:
    """For each step: does a later WA-RS step read a residual computed at this step?

    True at step s iff some s' > s uses a windowed strategy and no FULL step lies strictly
    between s and s' (that FULL step would refresh the residual instead).
    """
    out = [False] * len(column)
    pending = False  # a windowed step follows before the next FULL
    for s in range(len(column) - 1, -1, -1):
        out[s] = pending
        if column[s] is Strategy.FULL:
            pending = False
        if column[s].uses_window:
            pending = True
    return tuple(out)


def output_needed(column: Sequence[Strategy]) -> tuple[bool, ...]:
    """For each step: may a later AST step reuse the output computed at this step?

    True iff any later step is AST. Keeping the output whenever an AST step lies ahead (rather
    than only when the very next step is AST) tolerates skipped forwards: when another node
    (EasyCache) skips the step in between, AST still finds the last computed output.
    """
    out = [False] * len(column)
    ahead = False
    for s in range(len(column) - 1, -1, -1):
        out[s] = ahead
        ahead = ahead or column[s] is Strategy.AST
    return tuple(out)


@dataclass(frozen=True)
class Schedule:
    """The strategies of one run (steps x layers) and the cache needs they imply."""

    grid: Grid
    keep_everything: bool = False
    """A plan search knows nothing of the steps ahead: keep every residual and output."""
    needs_residual: tuple[tuple[bool, ...], ...] = field(init=False, repr=False)
    needs_output: tuple[tuple[bool, ...], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.grid or not self.grid[0]:
            raise ValueError("a schedule needs at least one step and one layer")
        width = len(self.grid[0])
        if any(len(row) != width for row in self.grid):
            raise ValueError("every step of a schedule must list the same number of layers")
        columns = list(zip(*self.grid, strict=True))
        if self.keep_everything:
            residual = output = [(True,) * len(c) for c in columns]
        else:
            residual = [residual_needed(c) for c in columns]
            output = [output_needed(c) for c in columns]
        object.__setattr__(self, "needs_residual", tuple(zip(*residual, strict=True)))
        object.__setattr__(self, "needs_output", tuple(zip(*output, strict=True)))

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[Strategy | str]]) -> Schedule:
        return cls(tuple(tuple(Strategy.parse(s) for s in row) for row in rows))

    @classmethod
    def uniform(cls, strategy: Strategy, steps: int, layers: int) -> Schedule:
        return cls(tuple((strategy,) * layers for _ in range(steps)))

    @property
    def num_steps(self) -> int:
        return len(self.grid)

    @property
    def num_layers(self) -> int:
        return len(self.grid[0])

    @property
    def is_all_full(self) -> bool:
        return all(s is Strategy.FULL for row in self.grid for s in row)

    def strategy(self, step: int, layer: int) -> Strategy:
        """The strategy at (step, layer); steps past the end reuse the last row, so extra
        evaluations at the very end of a schedule (some samplers add one) stay defined."""
        return self.grid[min(step, self.num_steps - 1)][layer]

    def shares_cfg_at(self, step: int) -> bool:
        """Whether any layer shares attention across CFG branches at ``step`` (ASC, WA-RS+ASC)."""
        return any(s.shares_cfg for s in self.grid[min(step, self.num_steps - 1)])

    def keeps_residual(self, step: int, layer: int) -> bool:
        return self.needs_residual[min(step, self.num_steps - 1)][layer]

    def keeps_output(self, step: int, layer: int) -> bool:
        return self.needs_output[min(step, self.num_steps - 1)][layer]
