"""Paper Algorithm 1: step by step, layer by layer, the most compressive strategy that passes.

At each step the uncompressed output O is computed once; then for each layer i in order, the
candidates are tried from the most to the least compressive (AST, WA-RS + ASC, WA-RS, ASC) with
the choices of layers < i kept, and the first whose output O' has L(O, O') < delta * (i + 1) / L
is taken; FULL when none passes. Step 0 is FULL (nothing is cached yet). Cost: up to 1 + 4L + 1
forwards per step, i.e. about 4L generations (paper A.2).
"""

from __future__ import annotations

import torch

from ..metrics import relative_error
from ..strategies import Strategy
from .base import Forward, PlanSearch, Row


class GreedySearch(PlanSearch):
    mode = "greedy"

    def _search_step(self, step: int, forward: Forward) -> tuple[Row, torch.Tensor | None]:
        reference = self._trial(step, self.full_row, forward)
        row = list(self.full_row)
        for i in range(self.num_layers):
            bound = self.delta * (i + 1) / self.num_layers
            for m in self.candidates:
                row[i] = m
                if relative_error(reference, self._trial(step, tuple(row), forward)) < bound:
                    break
            else:
                row[i] = Strategy.FULL
        return tuple(row), None
