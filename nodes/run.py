"""The state of one sampling run: created when ComfyUI's sampler starts (OUTER_SAMPLE), dropped in its
``finally``, never stored on a class or in a ModelPatcher that outlives the run.

A ``Run`` knows the model's family and its compressible layers, tags each block's attention calls
through forward pre-hooks (ComfyUI's DiTs report no block index), describes every forward (step, CFG
chunks and the part of the latent they cover, evaluation, image grid), orders the forwards of one
evaluation so that conditional outputs exist before the unconditional forwards that borrow them, and
turns one attention call into the engine's ``CallContext``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..ditfa_core.context import CallContext, Chunk, Role
from ..ditfa_core.engine import DenseFn
from ..ditfa_core.windows import TokenLayout
from .families import Family, Grid
from .steps import chunk_roles, step_for_sigma

log = logging.getLogger(__name__)

OVERRIDE_KEY = "optimized_attention_override"
SETUP_KEY = "ditfa"                 # the node's immutable settings (deep-copied with the patcher)
RUN_KEY = "ditfa_run"               # the live Run, only in the per-run clone of the model options
FORWARD_KEY = "ditfa_forward"       # a ``Forward`` in the per-batch transformer_options
BLOCK_KEY = "ditfa_block"           # [first layer, calls, calls seen] of the block that is running

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, CallContext, DenseFn | None], torch.Tensor]
Override = Callable[..., Any]


def _always(_step: int) -> bool:
    return True


@dataclass(frozen=True)
class RunParts:
    """What a node's setup hands a new run: the attention function, its cleanup, a check of the
    plan against the heads and token layout of the run's first conditional attention call (raises
    PlanError), and whether a step shares attention across CFG branches (then the conditional
    forwards of an evaluation run before the unconditional ones)."""

    attend: Attend
    close: Callable[[], None]
    check: Callable[[int, TokenLayout], None] | None = None
    shares_cfg: Callable[[int], bool] = _always


Conds = list[list[dict[str, Any]] | None]
"""``calc_cond_batch``'s conds: per guider term, its conditioning entries (or None)."""


def _frozen(value: Any) -> Hashable:
    """A hashable copy of a conditioning's ``area`` (tuples, lists, numbers, strings)."""
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value if isinstance(value, (int, float, str, type(None))) else repr(value)


def window_tokens(window: Any) -> Hashable:
    """The frames a ComfyUI context window covers (``transformer_options["context_window"]``)."""
    index_list = getattr(window, "index_list", None)
    if index_list is None:
        return None
    return (getattr(window, "dim", None), tuple(int(i) for i in index_list))


@dataclass(frozen=True)
class Forward:
    """One batched forward of the diffusion model, as the engine needs to see it."""

    step: int
    chunks: tuple[Chunk, ...]
    eval_key: Hashable
    grid: Grid
    n_text: int


class Run:
    """One sampling run: where the attention calls of its forwards go (``attend``) and how they are
    recognised. ``inner`` is the dense kernel chain: the override that was installed before ours (or
    after ours, when another node replaced ours in the slot), else ComfyUI's backend."""

    def __init__(
        self,
        family: Family,
        diffusion_model: torch.nn.Module,
        parts: RunParts,
        sigmas: Sequence[float],
        roles: Mapping[Hashable, Role] | None,
        prev: Override | None,
    ) -> None:
        self.family = family
        self.diffusion_model = diffusion_model
        self.attend = parts.attend
        self.shares_cfg = parts.shares_cfg
        self.sigmas = [float(s) for s in sigmas]
        self.roles = dict(roles) if roles else None
        self.prev = prev
        self.inner = prev
        self.check = parts.check
        self.busy = False           # inside our dense call: a re-entrant call is the dense kernel's
        self.evaluations = 0
        self.areas: dict[Hashable, Hashable] = {}   # cond uuid -> its area, for this evaluation
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._said: set[Hashable] = set()

    # -- lifetime ----------------------------------------------------------------------------

    def open(self) -> None:
        """Tag each compressible block's calls. Hooks live on the shared modules (every clone of the
        patcher sees them), so they are added here and removed in ``close``; they act only on
        forwards of this run."""
        if self.family.object_patch:
            return
        blocks, _ = self.family.layer_bases(self.diffusion_model)
        for block, base, calls in blocks:
            self._handles.append(block.register_forward_pre_hook(self._tagger(base, calls), with_kwargs=True))
            self._handles.append(block.register_forward_hook(self._untag, with_kwargs=True))

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _tagger(self, base: int, calls: int) -> Callable[..., None]:
        def tag(_module: torch.nn.Module, _args: tuple, kwargs: dict[str, Any]) -> None:
            to = kwargs.get("transformer_options")
            if isinstance(to, dict) and to.get(RUN_KEY) is self:
                to[BLOCK_KEY] = [base, calls, 0]
        return tag

    def _untag(self, _module: torch.nn.Module, _args: tuple, kwargs: dict[str, Any], _out: Any) -> None:
        to = kwargs.get("transformer_options")
        if isinstance(to, dict) and to.get(RUN_KEY) is self:
            to.pop(BLOCK_KEY, None)

    # -- per forward and per call ------------------------------------------------------------

    def say_once(self, key: Hashable, msg: str, *args: object) -> None:
        if key not in self._said:
            self._said.add(key)
            log.info("DiTFastAttn: " + msg, *args)

    def step_of(self, sigma: torch.Tensor | None) -> int:
        return step_for_sigma(self.sigmas, float(sigma.flatten()[0])) if sigma is not None else 0

    def role_of(self, index: int, entry: Any) -> Role:
        """The role of one conditioning entry at position ``index`` of ``calc_cond_batch``'s conds."""
        uuid = entry.get("uuid") if isinstance(entry, dict) else None
        return chunk_roles([index], [uuid] if uuid is not None else None, self.roles)[0].role

    def begin_evaluation(self, conds: Conds) -> None:
        """A new model evaluation (one ``calc_cond_batch``): a new pairing key for ASC, and the area
        each conditioning covers (two forwards over different areas must not share caches)."""
        self.evaluations += 1
        self.areas = {e["uuid"]: _frozen(e.get("area")) for cond in conds if cond
                      for e in cond if isinstance(e, dict) and "uuid" in e}

    def lenders_first(self, conds: Conds, sigma: torch.Tensor) -> tuple[Conds, Conds] | None:
        """(lending terms, the others), each as a full-length conds list with None in the other's
        places, when this evaluation has both and its step shares attention across CFG; else None.

        The host batches conditional and unconditional terms when it can, but splits them when memory
        is short (running the unconditional first) or when their text lengths differ (in the guider's
        order; DualCFGGuider lists the negative first). Running the lenders first makes ASC find the
        conditional output whatever the host does."""
        if not self.shares_cfg(self.step_of(sigma)):
            return None
        lend = {i for i, cond in enumerate(conds) if cond
                and any(self.role_of(i, e) is Role.COND for e in cond)}
        borrow = {i for i, cond in enumerate(conds) if cond
                  and any(self.role_of(i, e) is Role.UNCOND for e in cond)}
        if not lend or not borrow or lend & borrow:
            return None
        first = [c if i in lend else None for i, c in enumerate(conds)]
        rest = [None if i in lend else c for i, c in enumerate(conds)]
        return first, rest

    def forward(self, x: torch.Tensor, context: Any, to: dict[str, Any]) -> Forward:
        """Describe the forward about to run on latent batch ``x`` (from ``apply_model``'s inputs).

        Each chunk's ``tokens`` is the part of the latent it covers (context window frames, area), so
        caches are kept per part and ASC pairs only chunks over the same part."""
        step = self.step_of(to.get("sigmas"))
        roles = chunk_roles(to.get("cond_or_uncond") or [0], to.get("uuids"), self.roles)
        window = window_tokens(to.get("context_window"))
        chunks = tuple(Chunk(c.key, c.role, self._tokens(c.key, window)) for c in roles)
        n_text = int(context.shape[1]) if isinstance(context, torch.Tensor) and context.ndim >= 3 else 0
        grid = self.family.grid(self.diffusion_model, tuple(x.shape))
        return Forward(step, chunks, self.evaluations, grid, n_text)

    def _tokens(self, key: Hashable, window: Hashable) -> Hashable:
        area = self.areas.get(key)
        return None if area is None and window is None else (area, window)

    @torch.compiler.disable
    def attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layer: int,
        fwd: Forward,
        dense: DenseFn,
    ) -> torch.Tensor | None:
        """Attention of (B, H, N, D) tensors through the engine; None when the call's tokens do not
        match the family's layout (the caller computes it untouched).

        Never traced by torch.compile (like ``attention_override``): the engine's choices depend on the
        step, its caches and counters change every call, and guards on them would recompile the model
        until dynamo's recompile limit; the attention kernels run eagerly between compiled graphs."""
        layout = self.family.layout(q.shape[2], fwd.grid, fwd.n_text)
        if layout is None:
            self.say_once(("layout", q.shape[2], fwd.grid), "%s: a call of %d tokens does not fit image grid "
                          "%s; such calls stay dense", self.family.name, q.shape[2], fwd.grid)
            return None
        if self.check is not None and any(c.role is Role.COND for c in fwd.chunks):
            check, self.check = self.check, None
            check(q.shape[1], layout)
        ctx = CallContext(layer, fwd.step, fwd.chunks, layout, fwd.eval_key)
        return self.attend(q, k, v, ctx, dense)
