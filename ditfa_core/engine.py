"""The DiTFastAttn engine: one attention call in, the plan's strategy applied, one output out.

Semantics (paper §3.2-3.4), per layer and per CFG chunk:

FULL       dense attention. When a later WA-RS step reads it (see ``Schedule``), also the window
           attention W and the residual R = O - W.
WA_RS      window attention + the residual of the layer's most recent FULL step.
AST        the layer's output of its last computed step.
ASC        conditional chunks computed dense; unconditional chunks receive the conditional output
           over the same tokens, from the same batch or from a separate conditional call of the
           same evaluation (the host adapter runs lenders first); other chunks are computed.
WA_RS_ASC  conditional chunks as WA_RS, the unconditional ones receive their output.

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
from .schedule import Schedule
from .state import RunState
from .strategies import Strategy
from .windows import AttentionPattern, TokenLayout, WindowSpec

log = logging.getLogger(__name__)

DenseFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

DENSE, WINDOW, REUSE, SHARE = "dense", "window", "reuse", "share"


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

    @property
    def flops_fraction(self) -> float:
        return self.flops / self.full_flops if self.full_flops else 1.0


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
        """End of the run: free every cache and log what the run saved."""
        s = self.stats
        if s.calls:
            log.info(
                "DiTFastAttn: %d attention calls, %.1f%% of full attention FLOPs, %d fallbacks, %.1f MiB "
                "cached",
                s.calls, 100 * s.flops_fraction, s.fallbacks, self.state.nbytes / 2**20,
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
        self.stats.calls += 1
        self.stats.full_flops += pair_flops(q.shape[0], q.shape[1], q.shape[2] * k.shape[2], q.shape[-1])
        if ctx.layer >= self.schedule.num_layers:
            self._say_once(("layer", ctx.layer), "layer %d is beyond the plan's %d layers; computed in full",
                           ctx.layer, self.schedule.num_layers)
            return self._dense(dense, q, k, v)
        strategy = self.schedule.strategy(ctx.step, ctx.layer)
        keep_res = self.schedule.keeps_residual(ctx.step, ctx.layer)
        keep_out = self.schedule.keeps_output(ctx.step, ctx.layer)
        if strategy is Strategy.FULL and not keep_res and not keep_out:
            self.stats.chunks[DENSE] += len(ctx.chunks)
            return self._dense(dense, q, k, v)
        rows = cfg.chunk_slices(q.shape[0], ctx.chunks)
        if rows is None:
            self._say_once(("rows", q.shape[0], len(ctx.chunks)),
                           "a batch of %d rows does not split into %d chunks; computed in full",
                           q.shape[0], len(ctx.chunks))
            self.stats.fallbacks += 1
            return self._dense(dense, q, k, v)
        return self._apply(strategy, keep_res, keep_out, q, k, v, ctx, rows, dense)

    def _apply(
        self,
        strategy: Strategy,
        keep_res: bool,
        keep_out: bool,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        ctx: CallContext,
        rows: list[slice],
        dense: DenseFn,
    ) -> torch.Tensor:
        st, layer, step, layout = self.state, ctx.layer, ctx.step, ctx.layout
        n = len(ctx.chunks)
        ops: list[str] = [DENSE] * n
        cached: dict[int, torch.Tensor] = {}   # chunk -> reused output or residual

        for i, (chunk, r) in enumerate(zip(ctx.chunks, rows, strict=True)):
            qi = q[r]
            if strategy is Strategy.AST:
                o = st.output(layer, chunk.slot, qi, layout, step)
                if o is not None:
                    ops[i], cached[i] = REUSE, o
                else:
                    self._fallback(strategy, "no output of an earlier step")
            elif strategy.shares_cfg and chunk.role is Role.UNCOND:
                ops[i] = SHARE
            elif strategy.uses_window:
                res = st.residual(layer, chunk.slot, qi, layout, step)
                if res is not None:
                    ops[i], cached[i] = WINDOW, res
                else:
                    self._fallback(strategy, "no residual of an earlier FULL step")

        results: dict[int, torch.Tensor] = {}
        whole: torch.Tensor | None = None   # one computed tensor covering every chunk in order
        for op in (DENSE, WINDOW):
            idx = [i for i in range(n) if ops[i] == op]
            if not idx:
                continue
            sel = self._rows(rows, idx, n)
            qs, ks, vs = self._take(q, sel), self._take(k, sel), self._take(v, sel)
            if op == DENSE:
                o = self._dense(dense, qs, ks, vs)
                refresh = [j for j, i in enumerate(idx) if keep_res and (
                    strategy is Strategy.FULL
                    or st.residual(layer, ctx.chunks[i].slot, q[rows[i]], layout, step) is None)]
                if refresh:
                    self._refresh_residual(o, qs, ks, vs, refresh, idx, ctx)
            else:
                res = cached[idx[0]] if len(idx) == 1 else torch.cat([cached[i] for i in idx])
                o = self._window(qs, ks, vs, ctx) + res
            self.stats.chunks[op] += len(idx)
            if len(idx) == n:
                whole = o
            b = q.shape[0] // n
            for j, i in enumerate(idx):
                results[i] = o[j * b:(j + 1) * b]
        for i in range(n):
            if ops[i] == REUSE:
                results[i] = cached[i]
                self.stats.chunks[REUSE] += 1
        for i in range(n):
            if ops[i] == SHARE:
                src = cfg.lender(ctx.chunks, i)
                results[i] = self._share(i, src, results, q[rows[i]], k[rows[i]], v[rows[i]], ctx, dense)

        if whole is not None:
            out = whole
        elif n == 1:
            out = results[0]
        else:
            out = torch.empty_like(q)
            for i, r in enumerate(rows):
                out[r] = results[i]
        if keep_out:
            for i, chunk in enumerate(ctx.chunks):
                st.put_output(layer, chunk.slot, out[rows[i]] if n > 1 else out, layout, step)
        if strategy.shares_cfg and cfg.lends_only(ctx.chunks):
            # No borrower in this call: its unconditional partner comes in a separate forward.
            for i, chunk in enumerate(ctx.chunks):
                if chunk.role is Role.COND:
                    st.put_partner(layer, chunk.tokens, results[i], layout, ctx.eval_key)
        return out

    def _share(
        self,
        i: int,
        src: int | None,
        results: dict[int, torch.Tensor],
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        ctx: CallContext,
        dense: DenseFn,
    ) -> torch.Tensor:
        """Output of non-conditional chunk ``i`` under ASC: the conditional output of this batch
        or of this evaluation's separate conditional call; dense when neither exists."""
        if src is not None:
            self.stats.chunks[SHARE] += 1
            return results[src]
        partner = self.state.partner(ctx.layer, ctx.chunks[i].tokens, ctx.eval_key, q)
        if partner is not None and partner.tensor.shape[0] == q.shape[0] and cfg.can_share(
            partner.layout, ctx.layout
        ):
            self.stats.chunks[SHARE] += 1
            if partner.layout != ctx.layout:
                glob = ctx.layout.n_global
                self.stats.flops += pair_flops(q.shape[0], q.shape[1], glob * k.shape[2], q.shape[-1])
            return cfg.share(partner.tensor, partner.layout, q, k, v, ctx.layout, dense)
        self._fallback(Strategy.ASC, "the unconditional branch came before (or without) its conditional one")
        self.stats.chunks[DENSE] += 1
        return self._dense(dense, q, k, v)

    def _refresh_residual(
        self,
        o: torch.Tensor,
        qs: torch.Tensor,
        ks: torch.Tensor,
        vs: torch.Tensor,
        which: list[int],
        idx: list[int],
        ctx: CallContext,
    ) -> None:
        """Store R = O - W for the chunks at positions ``which`` of the computed group ``idx``."""
        b = qs.shape[0] // len(idx)
        sel = [slice(j * b, (j + 1) * b) for j in which]
        if len(which) == len(idx):
            w = self._window(qs, ks, vs, ctx)
            parts = [w[s] for s in sel]
        else:
            parts = [self._window(qs[s], ks[s], vs[s], ctx) for s in sel]
        for j, s, w in zip(which, sel, parts, strict=True):
            slot = ctx.chunks[idx[j]].slot
            self.state.put_residual(ctx.layer, slot, o[s] - w, ctx.layout, ctx.step)
            self.stats.residual_refreshes += 1

    def _fallback(self, strategy: Strategy, why: str) -> None:
        self.stats.fallbacks += 1
        self._say_once(("fallback", strategy, why), "%s fell back to full attention: %s", strategy.value, why)

    @staticmethod
    def _rows(rows: list[slice], idx: list[int], n: int) -> slice | list[slice]:
        """One slice when the chunks ``idx`` are contiguous (no copy needed), else the list."""
        if idx == list(range(idx[0], idx[-1] + 1)):
            return slice(rows[idx[0]].start, rows[idx[-1]].stop)
        return [rows[i] for i in idx]

    @staticmethod
    def _take(x: torch.Tensor, sel: slice | list[slice]) -> torch.Tensor:
        return x[sel] if isinstance(sel, slice) else torch.cat([x[s] for s in sel])
