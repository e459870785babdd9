"""The DiTFastAttn engine: one attention call in, the plan's strategy applied, one output out.

Semantics (DiTFastAttn §3.2-3.4, DiTFastAttnV2 §3), per layer, or per head in a head-wise plan, and
per CFG chunk; each strategy's rules live in its record (``ditfa_core.strategies``):

FULL       dense attention. When a later WA-RS step reads it (see ``Schedule``), also the window
           attention W and the residual R = O - W.
WA_RS      window attention + the residual of the layer's (head's) most recent FULL step.
ARROW      window attention alone (V2's arrow attention without residual).
AST        the layer's (head's) output of its last computed step.
ASC        conditional chunks computed dense; unconditional chunks receive the conditional output
           over the same tokens, from the same batch or from a separate conditional call of the
           same evaluation (the host adapter runs lenders first); other chunks are computed.
WA_RS_ASC, ARROW_ASC  the conditional chunks as WA_RS / ARROW, the unconditional ones receive it.

A head-wise cell groups the heads by strategy and runs one kernel call per group (all windowed
heads share the plan's one window, so they go in one call), so the FLOPs a plan saves are real.

Whatever a strategy needs but cannot find (the first step, a skipped step, a new shape, an
unconditional call that came before its conditional partner) falls back to dense attention for
that chunk, is logged once, and never uses a stale tensor. A plan of FULL steps only calls the
dense function directly, so its output is bit-identical to the unpatched model.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import torch

from . import cfg
from .context import CallContext, Role
from .flops import pair_flops
from .kernels import dense_attention, windowed_attention
from .schedule import Cell, Keep, Schedule
from .state import RunState
from .strategies import Op, Strategy
from .windows import AttentionPattern, TokenLayout, WindowSpec

log = logging.getLogger(__name__)

DenseFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

DENSE, WINDOW, REUSE, SHARE = Op.DENSE.value, Op.WINDOW.value, Op.REUSE.value, Op.SHARE.value
HeadSel = slice | list[int]
"""Heads of a group, along dim 1: a slice (every head, or a contiguous run: no copy) or indices."""


@dataclass
class Stats:
    """What the engine did during a run: attention FLOPs spent vs the uncompressed model's, and
    how many chunk-calls took each path. Tests use it to prove the promised work was skipped."""

    calls: int = 0
    flops: float = 0.0
    full_flops: float = 0.0
    chunks: dict[str, int] = field(default_factory=lambda: {DENSE: 0, WINDOW: 0, REUSE: 0, SHARE: 0})
    residual_refreshes: int = 0
    fallbacks: int = 0
    peak_cache_bytes: int = 0
    """Most bytes the caches held at a step boundary (measured when a call of a new step arrives and at
    the end); one call's temporaries (a layer's window output while its residual is refreshed) come on top."""

    @property
    def flops_fraction(self) -> float:
        return self.flops / self.full_flops if self.full_flops else 1.0


@dataclass
class _Group:
    """Heads of one call that run the same strategy, and what each chunk of rows does for them."""

    strategy: Strategy
    heads: list[int] | None            # None: every head (a per-layer cell)
    refresh: list[int] | None          # positions in ``heads`` whose residual a FULL step refreshes
    ops: list[Op] = field(default_factory=list)
    cached: dict[int, torch.Tensor] = field(default_factory=dict)   # chunk -> reused output / residual
    results: dict[int, torch.Tensor] = field(default_factory=dict)  # chunk -> (b, h, N, D) output

    @property
    def sel(self) -> HeadSel:
        h = self.heads
        if h is None:
            return slice(None)
        return slice(h[0], h[-1] + 1) if h == list(range(h[0], h[-1] + 1)) else h


def _groups(cell: Cell, keep_res: Keep) -> list[_Group]:
    """A cell as head groups: one group for a per-layer cell, one per distinct strategy otherwise (and
    a per-layer cell of a head-wise layer whose heads keep their residual at different steps)."""
    if isinstance(cell, Strategy):
        if isinstance(keep_res, bool) or len(set(keep_res)) == 1:
            keep = keep_res if isinstance(keep_res, bool) else keep_res[0]
            return [_Group(cell, None, None if keep else [])]
        cell = (cell,) * len(keep_res)
    keeps = keep_res if isinstance(keep_res, tuple) else (keep_res,) * len(cell)
    by: dict[Strategy, list[int]] = {}
    for h, s in enumerate(cell):
        by.setdefault(s, []).append(h)
    return [_Group(s, hs, [j for j, h in enumerate(hs) if keeps[h]]) for s, hs in by.items()]


def _take(x: torch.Tensor, rows: slice | list[slice], heads: HeadSel) -> torch.Tensor:
    t = x[rows] if isinstance(rows, slice) else torch.cat([x[r] for r in rows])
    return t if heads == slice(None) else t[:, heads]


class FastAttention:
    """Applies a ``Schedule`` to attention calls; holds the run's caches in ``state``.

    One instance serves one sampling run: create it when the run starts, call ``close()`` in a
    ``finally`` when it ends. ``dense`` is the host's dense attention (ComfyUI's chosen backend);
    it takes ``scale=`` when calls carry one (``CallContext.scale``). A call may pass its own,
    already bound to the call's scale, e.g. to chain to another node's attention override.
    """

    def __init__(
        self,
        schedule: Schedule,
        window: WindowSpec | None = None,
        *,
        backend: str = "auto",
        cache_device: torch.device | str | None = None,
        dense: DenseFn = dense_attention,
    ) -> None:
        self.schedule = schedule
        self.window = window or WindowSpec()
        self.backend = backend
        self.dense = dense
        self.state = RunState(cache_device)
        self.stats = Stats()
        self._patterns: dict[TokenLayout, AttentionPattern] = {}
        self._said: set[Hashable] = set()
        self._step = -1

    # -- helpers -----------------------------------------------------------------------------

    def _say_once(self, key: Hashable, msg: str, *args: object) -> None:
        if key not in self._said:
            self._said.add(key)
            log.info("DiTFastAttn: " + msg, *args)

    def pattern(self, layout: TokenLayout) -> AttentionPattern:
        p = self._patterns.get(layout)
        if p is None:
            p = self._patterns[layout] = self.window.resolve(layout)
        return p

    def _window(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: CallContext) -> torch.Tensor:
        p = self.pattern(ctx.layout)
        self.stats.flops += pair_flops(q.shape[0], q.shape[1], p.pair_count(), q.shape[-1])
        return windowed_attention(q, k, v, p, backend=self.backend, scale=ctx.scale)

    def _dense(self, dense: DenseFn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        self.stats.flops += pair_flops(q.shape[0], q.shape[1], q.shape[2] * k.shape[2], q.shape[-1])
        return dense(q, k, v)

    def close(self) -> None:
        """End of the run: free every cache and log what the run saved and held."""
        s = self.stats
        s.peak_cache_bytes = max(s.peak_cache_bytes, self.state.nbytes)
        if s.calls:
            log.info(
                "DiTFastAttn: %d attention calls, %.1f%% of full attention FLOPs, %d fallbacks, caches held "
                "at most %.1f MiB between steps (plus one layer's temporaries during a call)",
                s.calls, 100 * s.flops_fraction, s.fallbacks, s.peak_cache_bytes / 2**20,
            )
        self.state.clear()

    # -- the call ----------------------------------------------------------------------------

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        ctx: CallContext,
        dense: DenseFn | None = None,
    ) -> torch.Tensor:
        """Attention of (B, H, N, D) ``q, k, v`` for the call ``ctx`` describes."""
        if dense is None:
            dense = self.dense if ctx.scale is None else functools.partial(self.dense, scale=ctx.scale)
        if ctx.step != self._step:
            self._step = ctx.step
            self.stats.peak_cache_bytes = max(self.stats.peak_cache_bytes, self.state.nbytes)
        self.stats.calls += 1
        self.stats.full_flops += pair_flops(q.shape[0], q.shape[1], q.shape[2] * k.shape[2], q.shape[-1])
        if ctx.layer >= self.schedule.num_layers:
            self._say_once(("layer", ctx.layer), "layer %d is beyond the plan's %d layers; computed in full",
                           ctx.layer, self.schedule.num_layers)
            return self._dense(dense, q, k, v)
        cell = self.schedule.cell(ctx.step, ctx.layer)
        keep_res = self.schedule.keeps_residual(ctx.step, ctx.layer)
        keep_out = self.schedule.keeps_output(ctx.step, ctx.layer)
        keeps_any = any(keep_res) if isinstance(keep_res, tuple) else keep_res
        if cell is Strategy.FULL and not keeps_any and not keep_out:
            self.stats.chunks[DENSE] += len(ctx.chunks)
            return self._dense(dense, q, k, v)
        rows = cfg.chunk_slices(q.shape[0], ctx.chunks)
        why = None
        if rows is None:
            why = f"a batch of {q.shape[0]} rows does not split into {len(ctx.chunks)} chunks"
        elif not isinstance(cell, Strategy) and len(cell) != q.shape[1]:
            why = f"the plan's head-wise cell lists {len(cell)} heads, the call has {q.shape[1]}"
        if why is not None:
            self._say_once(("shape", why), "%s; computed in full", why)
            self.stats.fallbacks += 1
            return self._dense(dense, q, k, v)
        return self._apply(cell, keep_res, keep_out, q, k, v, ctx, rows, dense)

    def _apply(
        self, cell: Cell, keep_res: Keep, keep_out: bool, q: torch.Tensor, k: torch.Tensor,
        v: torch.Tensor, ctx: CallContext, rows: list[slice], dense: DenseFn,
    ) -> torch.Tensor:
        """Decide each head group's op per chunk, compute, borrow, assemble, keep what is needed."""
        groups = _groups(cell, keep_res)
        for g in groups:
            self._decide(g, q, ctx, rows)
        computed = [self._compute(g, q, k, v, ctx, rows, dense) for g in groups]
        for g in groups:
            self._borrow(g, q, k, v, ctx, rows, dense)
        if len(groups) == 1 and computed[0] is not None:   # one tensor covers every chunk and head
            out = computed[0]
        elif len(groups) == 1 and len(rows) == 1:
            out = groups[0].results[0]
        else:
            out = torch.empty_like(q)
            for g in groups:
                for i, r in enumerate(rows):
                    out[r, g.sel] = g.results[i]
        self._keep(groups, keep_out, out, ctx, rows)
        return out

    def _decide(self, g: _Group, q: torch.Tensor, ctx: CallContext, rows: list[slice]) -> None:
        """Each chunk's op under ``g.strategy``, with the cached tensor it reads; dense when missing."""
        st, s = self.state, g.strategy
        for i, (chunk, r) in enumerate(zip(ctx.chunks, rows, strict=True)):
            op = s.op(chunk.role is Role.UNCOND)
            if op is Op.REUSE:
                o = st.output(ctx.layer, chunk.slot, q[r], ctx.layout, ctx.step)
                if o is None:
                    op = self._fallback(s, "no output of an earlier step")
                else:
                    g.cached[i] = o if g.heads is None else o[:, g.heads]
            elif op is Op.WINDOW and s.adds_residual:
                res = st.residual(ctx.layer, chunk.slot, q[r], ctx.layout, ctx.step, g.heads)
                if res is None:
                    op = self._fallback(s, "no residual of an earlier FULL step")
                else:
                    g.cached[i] = res
            g.ops.append(op)

    def _compute(
        self, g: _Group, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: CallContext,
        rows: list[slice], dense: DenseFn,
    ) -> torch.Tensor | None:
        """Run the group's DENSE chunks in one kernel call and its WINDOW chunks in another; returns
        the computed tensor when it covers every chunk and head (so the caller need not copy)."""
        n, whole = len(rows), None
        for op in (Op.DENSE, Op.WINDOW):
            idx = [i for i in range(n) if g.ops[i] is op]
            if not idx:
                continue
            sel = self._rows(rows, idx, n)
            qs, ks, vs = (_take(x, sel, g.sel) for x in (q, k, v))
            if op is Op.DENSE:
                o = self._dense(dense, qs, ks, vs)
                self._refresh_residual(g, o, qs, ks, vs, idx, q, ctx, rows)
            else:
                o = self._window(qs, ks, vs, ctx)
                if g.strategy.adds_residual:
                    o = o + (g.cached[idx[0]] if len(idx) == 1 else torch.cat([g.cached[i] for i in idx]))
            self.stats.chunks[op.value] += len(idx)
            if len(idx) == n and g.heads is None:
                whole = o
            b = q.shape[0] // n
            for j, i in enumerate(idx):
                g.results[i] = o[j * b:(j + 1) * b]
        return whole

    def _borrow(
        self, g: _Group, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: CallContext,
        rows: list[slice], dense: DenseFn,
    ) -> None:
        """The group's REUSE chunks take their cached output, its SHARE chunks their lender's."""
        for i, op in enumerate(g.ops):
            if op is Op.REUSE:
                g.results[i] = g.cached[i]
                self.stats.chunks[REUSE] += 1
            elif op is Op.SHARE:
                q_i, k_i, v_i = (_take(x, rows[i], g.sel) for x in (q, k, v))
                g.results[i] = self._share(g, i, q_i, k_i, v_i, ctx, dense)

    def _keep(self, groups: list[_Group], keep_out: bool, out: torch.Tensor, ctx: CallContext,
              rows: list[slice]) -> None:
        """Keep the output for later reuse, and the conditional rows for a separate unconditional call."""
        n = len(rows)
        if keep_out:
            for i, chunk in enumerate(ctx.chunks):
                o = out[rows[i]] if n > 1 else out
                self.state.put_output(ctx.layer, chunk.slot, o, ctx.layout, ctx.step)
        if any(g.strategy.shares_cfg for g in groups) and cfg.lends_only(ctx.chunks):
            # No borrower in this call: its unconditional partner comes in a separate forward.
            for i, chunk in enumerate(ctx.chunks):
                if chunk.role is Role.COND:
                    self.state.put_partner(ctx.layer, chunk.tokens, out[rows[i]], ctx.layout, ctx.eval_key)

    def _share(
        self, g: _Group, i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: CallContext,
        dense: DenseFn,
    ) -> torch.Tensor:
        """Output of non-conditional chunk ``i`` under CFG sharing: the conditional output of this
        batch or of this evaluation's separate conditional call; dense when neither exists."""
        src = cfg.lender(ctx.chunks, i)
        if src is not None:
            self.stats.chunks[SHARE] += 1
            return g.results[src]
        partner = self.state.partner(ctx.layer, ctx.chunks[i].tokens, ctx.eval_key, q)
        if partner is not None and partner.tensor.shape[0] == q.shape[0] and cfg.can_share(
            partner.layout, ctx.layout
        ):
            self.stats.chunks[SHARE] += 1
            if partner.layout != ctx.layout:
                glob = ctx.layout.n_global
                self.stats.flops += pair_flops(q.shape[0], q.shape[1], glob * k.shape[2], q.shape[-1])
            lent = partner.tensor if g.heads is None else partner.tensor[:, g.sel]
            return cfg.share(lent, partner.layout, q, k, v, ctx.layout, dense)
        self._fallback(g.strategy, "the unconditional branch came before (or without) its conditional one")
        self.stats.chunks[DENSE] += 1
        return self._dense(dense, q, k, v)

    def _refresh_residual(
        self, g: _Group, o: torch.Tensor, qs: torch.Tensor, ks: torch.Tensor, vs: torch.Tensor,
        idx: list[int], q: torch.Tensor, ctx: CallContext, rows: list[slice],
    ) -> None:
        """Store R = O - W for the dense chunks ``idx`` of group ``g`` whose residual a later step
        reads: at a FULL step, or where the heads to refresh have none (a fallback: a skipped step, a
        new shape). Only those heads are looked up: another head of the group lacking a residual (an
        ARROW lane) must not make a non-FULL step overwrite the residual of its last FULL step."""
        if g.refresh == []:
            return
        st, b = self.state, qs.shape[0] // len(idx)
        heads = None if g.heads is None else [g.heads[p] for p in (g.refresh or range(len(g.heads)))]
        which = [j for j, i in enumerate(idx) if g.strategy.is_full or st.residual(
            ctx.layer, ctx.chunks[i].slot, q[rows[i]], ctx.layout, ctx.step, heads) is None]
        if not which:
            return
        pos = g.refresh if g.refresh is not None and len(g.refresh) < o.shape[1] else slice(None)
        sel = [slice(j * b, (j + 1) * b) for j in which]
        if len(which) == len(idx):
            w = self._window(qs[:, pos], ks[:, pos], vs[:, pos], ctx)
            parts = [w[s] for s in sel]
        else:
            parts = [self._window(qs[s][:, pos], ks[s][:, pos], vs[s][:, pos], ctx) for s in sel]
        for j, s, w in zip(which, sel, parts, strict=True):
            i = idx[j]
            st.put_residual(ctx.layer, ctx.chunks[i].slot, o[s][:, pos] - w, ctx.layout, ctx.step, heads,
                            like=q[rows[i]])
            self.stats.residual_refreshes += 1

    def _fallback(self, strategy: Strategy, why: str) -> Op:
        self.stats.fallbacks += 1
        self._say_once(("fallback", strategy, why), "%s fell back to full attention: %s", strategy.value, why)
        return Op.DENSE

    @staticmethod
    def _rows(rows: list[slice], idx: list[int], n: int) -> slice | list[slice]:
        """One slice when the chunks ``idx`` are contiguous (no copy needed), else the list."""
        if idx == list(range(idx[0], idx[-1] + 1)):
            return slice(rows[idx[0]].start, rows[idx[-1]].stop)
        return [rows[i] for i in idx]
