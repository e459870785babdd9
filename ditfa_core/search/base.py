"""What both plan searches share: the plan under construction and the engine that runs it.

A search does not own the sampling loop. The host (the reference DiT's sampler, or ComfyUI's
through a model wrapper) calls ``evaluate(step, forward)`` for every model evaluation, where
``forward()`` runs the model once with its attention routed to ``search.attention``. The search
may run ``forward`` several times at the same input (trials), restores the caches after each
trial it rejects, and returns the output the sampler should use. The sampler thus follows the
compressed trajectory, as in paper Algorithm 1.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from ..context import CallContext
from ..engine import DenseFn, FastAttention
from ..kernels import dense_attention
from ..schedule import Grid, Schedule
from ..strategies import GREEDY_ORDER, Strategy
from ..windows import WindowSpec

log = logging.getLogger(__name__)

Row = tuple[Strategy, ...]
Forward = Callable[[], torch.Tensor]


class PlanSearch:
    """Base of the searches: decided rows, the engine, and the count of forwards run."""

    mode = "base"
    granularity = "layer"
    vocabulary: tuple[Strategy, ...] = GREEDY_ORDER
    """The candidates this search may try, in the order it tries them."""

    def __init__(
        self,
        num_steps: int,
        num_layers: int,
        delta: float,
        window: WindowSpec | None = None,
        *,
        backend: str = "auto",
        cache_device: torch.device | str | None = None,
        dense: DenseFn = dense_attention,
        candidates: Sequence[Strategy] | None = None,
    ) -> None:
        if num_steps < 1 or num_layers < 1:
            raise ValueError(f"a search needs steps and layers >= 1, got {num_steps} and {num_layers}")
        if not delta >= 0:
            raise ValueError(f"delta must be a number >= 0, got {delta}")
        candidates = self.vocabulary if candidates is None else tuple(candidates)
        unknown = [m for m in candidates if m not in self.vocabulary]
        if unknown or not candidates:
            known = [m.value for m in self.vocabulary]
            raise ValueError(f"candidates must be a non-empty subset of {known}, "
                             f"got {[Strategy.parse(m).value for m in candidates]}")
        # In the search's own order (Algorithm 1: most to least compressive), whatever order was given.
        self.candidates = tuple(m for m in self.vocabulary if m in candidates)
        self.num_steps, self.num_layers, self.delta = num_steps, num_layers, float(delta)
        self.full_row: Row = (Strategy.FULL,) * num_layers
        self.rows: list[Row | None] = [None] * num_steps
        self.engine = FastAttention(self._schedule(0, self.full_row), window, backend=backend,
                                    cache_device=cache_device, dense=dense)
        self.forwards = 0       # model forwards run by the search
        self.evaluations = 0    # model evaluations the sampler asked for (one uncompressed generation)

    # -- what the host calls -----------------------------------------------------------------

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: CallContext,
                  dense: DenseFn | None = None) -> torch.Tensor:
        return self.engine(q, k, v, ctx, dense)

    def evaluate(self, step: int, forward: Forward) -> torch.Tensor:
        """The model output for evaluation ``step``, choosing that step's row on its first visit."""
        self.evaluations += 1
        step = min(step, self.num_steps - 1)
        row = self.rows[step]
        if row is None:
            if step == 0:
                row, out = self.full_row, None   # nothing is cached before the first step
            else:
                row, out = self._search_step(step, forward)
            self.rows[step] = row
            if out is not None:
                return out
        self._use(step, row)
        return self._run(forward)

    def grid(self) -> Grid:
        """The plan found so far; steps never evaluated (a sampler that stopped early) stay FULL."""
        return tuple(r if r is not None else self.full_row for r in self.rows)

    @property
    def generations(self) -> float:
        """Search cost in model evaluations per sampling step (forwards / evaluations; a plain generation
        is 1). Stored in plans as ``calibration.generations``."""
        return self.forwards / self.evaluations if self.evaluations else 0.0

    def close(self) -> None:
        self.engine.close()

    # -- for subclasses ----------------------------------------------------------------------

    def _search_step(self, step: int, forward: Forward) -> tuple[Row, torch.Tensor | None]:
        """Choose the row of ``step``; may return the committed output of its last trial."""
        raise NotImplementedError

    def _schedule(self, step: int, row: Row) -> Schedule:
        grid = [r if r is not None else self.full_row for r in self.rows]
        grid[step] = row
        # The steps ahead are unknown while searching: keep every residual and output.
        return Schedule(tuple(grid), keep_everything=True)

    def _use(self, step: int, row: Row) -> None:
        self.engine.schedule = self._schedule(step, row)

    def _run(self, forward: Forward) -> torch.Tensor:
        self.forwards += 1
        return forward()

    def _trial(self, step: int, row: Row, forward: Forward) -> torch.Tensor:
        """One forward with ``row`` at ``step`` that leaves the caches as they were."""
        snap = self.engine.state.snapshot()
        self._use(step, row)
        try:
            return self._run(forward)
        finally:
            self.engine.state.restore(snap)
