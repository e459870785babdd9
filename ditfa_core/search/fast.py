"""Our fast search: every candidate scored from one probe forward per step, then one trial.

Algorithm 1 reruns the whole model for every (layer, candidate): about 4L generations. Yet the
uncompressed forward of a step already holds what each candidate would change at each layer: its
full attention output O, the caches the engine would read (the last computed output for AST, the
residual of the most recent FULL step for WA-RS, the conditional rows for ASC), and, for one
window pass more (a fraction of attention), the window output W. So per step:

1. probe: one uncompressed forward; at every layer, the local error e(l, m) = L(O, O_m) of every
   candidate m, with the paper's metric; the probe also leaves the caches a FULL step would.
2. choose: per layer in order, the most compressive m whose predicted model-output error keeps
   the running sum under delta * (i + 1) / L, prediction = gain * e(l, m) (as in Algorithm 1's
   per-layer bound).
3. trial: one forward with the chosen row; its real output error E against the probe's output is
   measured. E <= delta: taken, and gain learns E / sum(e). Else the gain is corrected, the row
   re-chosen and tried once more; if that fails too, the step stays FULL (its caches are the
   probe's), so no step ever exceeds delta.

At most three forwards per step, usually two: at most 3 generations, one step 0 FULL forward less.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, replace

import torch

from .. import cfg
from ..context import CallContext, Role
from ..engine import DenseFn
from ..kernels import windowed_attention
from ..metrics import relative_error
from ..strategies import Candidates, Strategy
from ..windows import TokenLayout
from .base import Forward, PlanSearch, Row

INFEASIBLE = math.inf
INITIAL_GAIN = 0.25
"""The gain before any trial has measured it. Attention errors shrink on their way to the model
output, so the gain is usually well below 1; starting optimistic makes the first trial measure the
real ratio (a miss costs the one retry a step already allows), where a cautious start could choose
all-FULL rows, run no trial, and never learn anything at small deltas."""


@dataclass
class _Partner:
    """A separate conditional call's candidates, for scoring CFG sharing on its unconditional call."""

    eval_key: Hashable
    candidates: Candidates
    layout: TokenLayout


class FastSearch(PlanSearch):
    mode = "fast"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gain: float | None = None   # model-output error per unit of summed local error, learnt
        self._probing = False
        self._err: dict[tuple[int, Strategy], list[float]] = {}   # (layer, m) -> [error sum, elements]
        self._partners: dict[tuple[int, Hashable], _Partner] = {}   # (layer, tokens) ->
        self._saw_uncond = False

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: CallContext,
                  dense: DenseFn | None = None) -> torch.Tensor:
        if not self._probing:
            return super().attention(q, k, v, ctx, dense)
        return self._probe(q, k, v, ctx, dense or self.engine.dense)

    # -- 1. probe ----------------------------------------------------------------------------

    def _record(self, layer: int, m: Strategy, ref: torch.Tensor, cand: torch.Tensor | None) -> None:
        """Add one call's local error of candidate ``m`` at ``layer`` (inf when it cannot run)."""
        acc = self._err.setdefault((layer, m), [0.0, 0])
        if cand is None:
            acc[0] = INFEASIBLE
        else:
            acc[0] += relative_error(ref, cand) * ref.numel()
        acc[1] += ref.numel()

    def _probe(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: CallContext,
               dense: DenseFn) -> torch.Tensor:
        """Full attention, the local error of every candidate (its record's ``predict``), and the
        caches of a FULL step."""
        o = dense(q, k, v)
        rows = cfg.chunk_slices(q.shape[0], ctx.chunks)
        layer, step, layout, st = ctx.layer, ctx.step, ctx.layout, self.engine.state
        if rows is None or layer >= self.num_layers:
            return o
        chunks = ctx.chunks
        w = windowed_attention(q, k, v, self.engine.pattern(layout), backend=self.engine.backend,
                               scale=ctx.scale)
        self._observe(q, k, ctx)
        slots = [(c.slot, q[r]) for c, r in zip(chunks, rows, strict=True)]
        last = [st.output(layer, slot, x, layout, step) for slot, x in slots]
        res = [st.residual(layer, slot, x, layout, step) for slot, x in slots]
        c = Candidates(
            o, w, torch.cat(res) if all(x is not None for x in res) else None,
            torch.cat(last) if all(x is not None for x in last) else None,
        )
        c = replace(c, share=self._sharer(c, q, k, v, ctx, rows, dense))
        if any(ch.role is Role.UNCOND for ch in chunks):
            self._saw_uncond = True
        if cfg.lends_only(chunks):
            # Separate conditional call: its partner comes later in this evaluation.
            for ch, r in zip(chunks, rows, strict=True):
                if ch.role is Role.COND:
                    part = Candidates(o[r], w[r], c.residual[r] if c.residual is not None else None)
                    self._partners[(layer, ch.tokens)] = _Partner(ctx.eval_key, part, layout)
        for m in self.candidates:
            self._record(layer, m, o, m.predict(c))
        for ch, r in zip(chunks, rows, strict=True):   # what a FULL step leaves behind
            st.put_output(layer, ch.slot, o[r], layout, step)
            st.put_residual(layer, ch.slot, o[r] - w[r], layout, step)
        return o

    def _observe(self, q: torch.Tensor, k: torch.Tensor, ctx: CallContext) -> None:
        """Hook for searches that need the calls' shapes (the head-wise search)."""

    def _sharer(
        self, c: Candidates, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: CallContext,
        rows: list[slice], dense: DenseFn,
    ):
        """``Candidates.share`` for this call: each unconditional chunk takes ``f`` of its lender's
        rows (same batch) or of its separate conditional call's kept candidates (same evaluation and
        tokens); None when some unconditional chunk has neither, so the candidate cannot be scored."""
        layer = ctx.layer

        def share(f):
            x = f(c)
            if x is None:
                return None
            out = x.clone()
            for i, ch in enumerate(ctx.chunks):
                if ch.role is not Role.UNCOND:
                    continue
                r, src = rows[i], cfg.lender(ctx.chunks, i)
                if src is not None:
                    out[r] = x[rows[src]]
                    continue
                p = self._partners.get((layer, ch.tokens))
                lent = f(p.candidates) if p is not None else None
                if (lent is None or p.eval_key != ctx.eval_key or not cfg.can_share(p.layout, ctx.layout)
                        or lent.shape[0] != out[r].shape[0]):
                    return None
                out[r] = cfg.share(lent, p.layout, q[r], k[r], v[r], ctx.layout, dense)
            return out

        return share

    # -- 2. choose ---------------------------------------------------------------------------

    def _pointless(self, m: Strategy) -> bool:
        """Sharing CFG rows when the probe saw no unconditional branch (cfg 1) would save nothing."""
        return m.shares_cfg and not self._saw_uncond

    def _local(self, layer: int, m: Strategy) -> float:
        if self._pointless(m):
            return INFEASIBLE
        total, count = self._err.get((layer, m), (INFEASIBLE, 0))
        return total / count if count else INFEASIBLE

    def _choose(self, gain: float) -> tuple[Row, float]:
        """The row under the per-layer bounds, and the sum of its local errors."""
        row: list[Strategy] = []
        predicted = raw = 0.0
        for i in range(self.num_layers):
            bound = self.delta * (i + 1) / self.num_layers
            pick = Strategy.FULL
            for m in self.candidates:
                e = self._local(i, m)
                if predicted + gain * e < bound:
                    pick, predicted, raw = m, predicted + gain * e, raw + e
                    break
            row.append(pick)
        return tuple(row), raw

    # -- 3. trial ----------------------------------------------------------------------------

    def _search_step(self, step: int, forward: Forward) -> tuple[Row, torch.Tensor | None]:
        st = self.engine.state
        before = st.snapshot()
        self._err.clear()
        self._partners.clear()
        self._saw_uncond = False
        self._use(step, self.full_row)
        self._probing = True
        try:
            reference = self._run(forward)
        finally:
            self._probing = False
        after_probe = st.snapshot()

        gain = self.gain if self.gain is not None else INITIAL_GAIN
        for _attempt in range(2):
            row, raw = self._choose(gain)
            if row == self.full_row:
                break
            st.restore(before)
            self._use(step, row)
            out = self._run(forward)
            err = relative_error(reference, out)
            ratio = err / raw if raw > 0 else 0.0
            if err <= self.delta:
                if raw > 0:
                    self.gain = ratio if self.gain is None else max(1e-3, 0.5 * (self.gain + ratio))
                return row, out
            gain = max(gain, ratio) * 1.5   # the prediction was optimistic: be stricter once
            self.gain = gain
        st.restore(after_probe)
        return self.full_row, reference
