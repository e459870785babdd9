"""Head-wise search (DiTFastAttnV2): per (step, layer, head), the candidate that saves the most under δ.

The fast search's frame (``fast.py``), one strategy per head instead of per layer:

1. probe: one uncompressed forward per step; at every layer, each candidate's output is predicted
   from the probe (``StrategySpec.predict``) and its error against the full output is split by head
   (``metrics.relative_error_per_head``: the shares add up to the layer's A.2 error).
2. choose: one multiple-choice knapsack per step over every (layer, head): at most one candidate per
   head (FULL, saving nothing, always allowed), predicted model-output error gain * sum(e) <= δ,
   maximising the attention cost saved (``search/knapsack.py``, exact).
3. trial: as the fast search: one forward with the chosen row, accepted when its real output error
   is <= δ, else one retry with a stricter gain, else FULL. At most 3 generations.

The saving of a candidate is what it removes from a dense head of the layer's real shape: measured
(``saving="latency"``: the window kernel timed against the dense one on the device, dtype and shape of
the call, ``search/latency.py``) or counted (``saving="flops"``: the record's ``cost`` at the layer's
window and CFG split; deterministic, and what the CPU reference DiT uses, whose 256-token calls are too
small for kernel timings to mean much). Either way the knapsack maximises work removed, not the number
of compressed heads (the official code's latency table never matched its candidates' names, so every
option saved the same: reference/peers.md §4).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..context import CallContext, Role
from ..metrics import relative_error_per_head
from ..strategies import HEADWISE_CANDIDATES, Strategy
from .base import Row
from .fast import INFEASIBLE, FastSearch
from .knapsack import multiple_choice_knapsack
from .latency import AttentionShape, window_cost_ratio

SAVINGS = ("latency", "flops")


class HeadwiseSearch(FastSearch):
    mode = "fast"
    granularity = "head"
    vocabulary = HEADWISE_CANDIDATES

    def __init__(self, *args, saving: str = "latency", **kwargs) -> None:
        if saving not in SAVINGS:
            raise ValueError(f"saving must be one of {SAVINGS}, got {saving!r}")
        super().__init__(*args, **kwargs)
        self.saving = saving
        self._head_err: dict[tuple[int, Strategy], torch.Tensor] = {}   # (layer, m) -> (H,) error sums
        self._weight: dict[int, float] = {}                              # layer -> elements probed
        self._shape: dict[int, tuple[int, float, float]] = {}            # layer -> (heads, pairs, cond)
        self._call: dict[int, tuple[AttentionShape, object]] = {}         # layer -> (shape, pattern)
        self._chunks: dict[int, list[int]] = {}                          # layer -> [borrowers, chunks]

    def _search_step(self, step: int, forward):
        self._head_err.clear()
        self._weight.clear()
        self._chunks.clear()
        return super()._search_step(step, forward)

    # -- probe -------------------------------------------------------------------------------

    def _observe(self, q: torch.Tensor, k: torch.Tensor, ctx: CallContext) -> None:
        pattern = self.engine.pattern(ctx.layout)
        pairs = pattern.pair_count() / (q.shape[2] * k.shape[2])
        # The share CFG sharing computes, over every call of this evaluation at this layer: a separate
        # unconditional call borrows as much as the unconditional half of one batch.
        seen = self._chunks.setdefault(ctx.layer, [0, 0])
        seen[0] += sum(c.role is Role.UNCOND for c in ctx.chunks)
        seen[1] += len(ctx.chunks)
        cond = max(1 - seen[0] / seen[1], 1 / seen[1])
        self._shape[ctx.layer] = (q.shape[1], min(pairs, 1.0), cond)
        b, h, n, d = q.shape
        self._call[ctx.layer] = (AttentionShape(b, h, n, d, q.dtype, str(q.device)), pattern)

    def _record(self, layer: int, m: Strategy, ref: torch.Tensor, cand: torch.Tensor | None) -> None:
        """Per head, this call's error of ``m`` weighted by the call's size (inf when it cannot run)."""
        heads = ref.shape[1]
        err = (torch.full((heads,), math.inf, dtype=torch.float64) if cand is None
               else relative_error_per_head(ref, cand) * ref.numel())
        key = (layer, m)
        self._head_err[key] = self._head_err[key] + err if key in self._head_err else err
        if m is self.candidates[0]:
            self._weight[layer] = self._weight.get(layer, 0) + ref.numel()

    # -- choose ------------------------------------------------------------------------------

    def _errors(self, layer: int, heads: int) -> np.ndarray:
        """(heads, 1 + candidates) local errors at ``layer``; column 0 is FULL (no error)."""
        cols = [np.zeros(heads)]
        for m in self.candidates:
            e = self._head_err.get((layer, m))
            if e is None or e.shape[0] != heads or self._pointless(m):
                cols.append(np.full(heads, INFEASIBLE))
            else:
                cols.append((e / self._weight[layer]).numpy())
        return np.stack(cols, axis=1)

    def _savings(self, layer: int, heads: int) -> np.ndarray:
        """(heads, 1 + candidates) attention time (or FLOPs) saved per head, as a fraction of a dense head."""
        _, pairs, cond = self._shape[layer]
        window = pairs if self.saving == "flops" else window_cost_ratio(*self._call[layer])
        row = [0.0] + [1.0 - m.cost(window, cond) for m in self.candidates]   # the record prices it
        return np.tile(np.asarray(row), (heads, 1))

    def _choose(self, gain: float) -> tuple[Row, float]:
        """The row maximising the saving under gain * sum(errors) <= δ, and its summed local error."""
        layers = [i for i in range(self.num_layers) if i in self._shape and i in self._weight]
        if not layers:
            return self.full_row, 0.0
        errors = [self._errors(i, self._shape[i][0]) for i in layers]
        savings = [self._savings(i, self._shape[i][0]) for i in layers]
        e, s = np.concatenate(errors), np.concatenate(savings)
        choice = multiple_choice_knapsack(np.where(np.isinf(e), e, gain * e), s, self.delta)
        options = (Strategy.FULL, *self.candidates)
        row = list(self.full_row)
        raw, start = 0.0, 0
        for i, err in zip(layers, errors, strict=True):
            picks = choice[start:start + err.shape[0]]
            start += err.shape[0]
            raw += float(err[np.arange(err.shape[0]), picks].sum())
            cell = tuple(options[c] for c in picks)
            row[i] = cell[0] if len(set(cell)) == 1 else cell
        return tuple(row), raw
