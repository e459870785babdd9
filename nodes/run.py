"""The state of one sampling run: created when ComfyUI's sampler starts (OUTER_SAMPLE), dropped in its
``finally``, never stored on a class or in a ModelPatcher that outlives the run.

A ``Run`` knows the model's family and its compressible layers, finds which block an attention call
belongs to, describes every forward (step, CFG chunks and the part of the latent they cover, evaluation,
image grid), orders the forwards of one evaluation so that conditional outputs exist before the
unconditional forwards that borrow them, and turns one attention call into the engine's ``CallContext``.

Block of a call: ComfyUI 0.33+ DiTs put ``block_type``, ``block_index`` and ``total_blocks`` in
transformer_options before each block; where they are present they are used. ComfyUI 0.3.64's DiTs report
nothing, so forward pre-hooks on the blocks tag the calls; the hooks of a block list are removed as soon as
the host's keys are seen for it.

Threads: ComfyUI 0.33+ may sample on several devices at once, running chunks of the batch on model clones
from a pool of persistent worker threads (one per device) that all see this Run. Each thread gets its own
``Lane``: its own engine (caches, statistics) and its own re-entrancy flag, so no engine state is shared
across threads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..ditfa_core.context import CallContext, Chunk, Role
from ..ditfa_core.engine import DenseFn
from ..ditfa_core.windows import TokenLayout
from .families import Family, Grid, UnsupportedModel
from .steps import chunk_roles, step_for_sigma

log = logging.getLogger(__name__)

OVERRIDE_KEY = "optimized_attention_override"
SETUP_KEY = "ditfa"                 # the node's immutable settings (deep-copied with the patcher)
RUN_KEY = "ditfa_run"               # the live Run, only in the per-run clone of the model options
FORWARD_KEY = "ditfa_forward"       # a ``Forward`` in the per-batch transformer_options
BLOCK_KEY = "ditfa_block"           # [first layer, calls, calls seen, host key] of the running block
HOST_BLOCK_KEYS = ("block_type", "block_index", "total_blocks")   # ComfyUI 0.33+ DiTs set these

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


LaneFactory = Callable[[], RunParts]


class Lane:
    """What one thread of a run may mutate: its engine (``attend`` and its ``close``) and ``busy``."""

    def __init__(self, attend: Attend | None, close: Callable[[], None]) -> None:
        self.attend = attend        # None: this thread computes densely (no engine could be made for it)
        self.close = close
        self.busy = False           # inside our dense call: a re-entrant call is the dense kernel's


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
    n_after: int = 0    # tokens appended after the image (Wan ``context_latents``, Z-Image padding)


class Run:
    """One sampling run: where the attention calls of its forwards go (``attend``) and how they are
    recognised. ``inner`` is the dense kernel chain: the override that was installed before ours (or
    after ours, when another node replaced ours in the slot), else ComfyUI's backend.

    ``parts.attend`` serves the thread that created the run; ``new_lane`` makes the engine of any other
    thread that calls attention during the run (None: such threads compute densely, logged once)."""

    def __init__(
        self,
        family: Family,
        diffusion_model: torch.nn.Module,
        parts: RunParts,
        sigmas: Sequence[float],
        roles: Mapping[Hashable, Role] | None,
        prev: Override | None,
        new_lane: LaneFactory | None = None,
    ) -> None:
        self.family = family
        self.diffusion_model = diffusion_model
        self.shares_cfg = parts.shares_cfg
        self.sigmas = [float(s) for s in sigmas]
        self.roles = dict(roles) if roles else None
        self.prev = prev
        self.inner = prev
        self.check = parts.check
        self.evaluations = 0
        self.areas: dict[Hashable, Hashable] = {}   # cond uuid -> its area, for this evaluation
        self._new_lane = new_lane
        self._lock = threading.Lock()
        self._lanes: dict[int, Lane] = {threading.get_ident(): Lane(parts.attend, lambda: None)}
        self._handles: dict[str, list[torch.utils.hooks.RemovableHandle]] = {}
        self._said: set[Hashable] = set()
        self._bases: dict[tuple[str, int], tuple[int, int]] = {}   # (list, index) -> (first layer, calls)

    # -- lifetime ----------------------------------------------------------------------------

    def open(self) -> None:
        """Tag each compressible block's calls where the host does not. Hooks live on the shared modules
        (every clone of the patcher sees them), so they are added here and removed in ``close`` (or when
        the host's own block keys show up); they act only on forwards of this run."""
        bases, _ = self.family.layer_bases(self.diffusion_model)
        blocks = self.family.blocks(self.diffusion_model)
        self._bases = {(path, i): (base, calls) for (path, i, _), (_, base, calls) in
                       zip(blocks, bases, strict=True)}
        if self.family.object_patch:
            return
        for path, i, block in blocks:
            base, calls = self._bases[(path, i)]
            self._handles.setdefault(path, []).extend((
                block.register_forward_pre_hook(self._tagger(path, base, calls), with_kwargs=True),
                block.register_forward_hook(self._untag, with_kwargs=True)))

    def close(self) -> None:
        """End of the run: hooks removed, every lane's engine closed (caches freed)."""
        for handles in self._handles.values():
            for handle in handles:
                handle.remove()
        self._handles.clear()
        with self._lock:
            lanes = list(self._lanes.values())
        for lane in lanes:
            lane.close()

    def lane(self) -> Lane:
        """The calling thread's lane, made on its first call (a worker thread of multi-device sampling)."""
        me = threading.get_ident()
        lane = self._lanes.get(me)
        if lane is not None:
            return lane
        with self._lock:
            if self._new_lane is None:
                lane = Lane(None, lambda: None)
                self.say_once("thread", "%s: attention from a second thread (multi-device sampling) during "
                              "calibration is computed densely", self.family.name)
            else:
                parts = self._new_lane()
                lane = Lane(parts.attend, parts.close)
                self.say_once("thread", "%s: a second thread (multi-device sampling) runs its own "
                              "DiTFastAttn state", self.family.name)
            self._lanes[me] = lane
        return lane

    def block(self, to: dict[str, Any]) -> list[Any] | None:
        """[first layer, calls, calls seen, host key] of the block this call belongs to, or None (outside
        every compressible block). The host's block keys win over the pre-hooks' tag."""
        btype, index, total = (to.get(key) for key in HOST_BLOCK_KEYS)
        if index is None:
            return to.get(BLOCK_KEY)
        path = self.family.block_list(btype)
        if path is None:
            return to.get(BLOCK_KEY)
        host_key = (btype, index)
        tag = to.get(BLOCK_KEY)
        if tag is not None and tag[3] == host_key:
            return tag
        found = self._bases.get((path, int(index)))
        if found is None or (total is not None and int(total) != self._list_length(path)):
            raise UnsupportedModel(f"DiTFastAttn: {self.family.name}: the host reports block {index} of "
                                   f"{total} in {btype!r} blocks, which does not match the model's {path} "
                                   f"({self._list_length(path)} blocks)")
        if self._handles.get(path):
            for handle in self._handles.pop(path):
                handle.remove()
            self.say_once(("host keys", path), "%s: using the host's block index for %s", self.family.name,
                          path)
        tag = to[BLOCK_KEY] = [*found, 0, host_key]
        return tag

    def _list_length(self, path: str) -> int:
        return sum(1 for p, _ in self._bases if p == path)

    def _tagger(self, path: str, base: int, calls: int) -> Callable[..., None]:
        def tag(_module: torch.nn.Module, _args: tuple, kwargs: dict[str, Any]) -> None:
            to = kwargs.get("transformer_options")
            if isinstance(to, dict) and to.get(RUN_KEY) is self:
                to[BLOCK_KEY] = [base, calls, 0, None]
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

    def forward(self, x: torch.Tensor, context: Any, to: dict[str, Any],
                conds: dict[str, Any] | None = None) -> Forward:
        """Describe the forward about to run on latent batch ``x`` (from ``apply_model``'s inputs; ``conds``
        are its extra conditions, e.g. Wan's ``context_latents``).

        Each chunk's ``tokens`` is the part of the latent it covers (context window frames, area), so
        caches are kept per part and ASC pairs only chunks over the same part."""
        step = self.step_of(to.get("sigmas"))
        roles = chunk_roles(to.get("cond_or_uncond") or [0], to.get("uuids"), self.roles)
        window = window_tokens(to.get("context_window"))
        chunks = tuple(Chunk(c.key, c.role, self._tokens(c.key, window)) for c in roles)
        n_text = int(context.shape[1]) if isinstance(context, torch.Tensor) and context.ndim >= 3 else 0
        grid = self.family.grid(self.diffusion_model, tuple(x.shape))
        n_after = self.family.appended(self.diffusion_model, grid, conds or {})
        return Forward(step, chunks, self.evaluations, grid, n_text, n_after)

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
        scale: float | None = None,
    ) -> torch.Tensor | None:
        """Attention of (B, H, N, D) tensors through the engine (``scale``: the host's softmax scale);
        None when the call's tokens do not match the family's layout (the caller computes it untouched).

        Never traced by torch.compile (like ``attention_override``): the engine's choices depend on the
        step, its caches and counters change every call, and guards on them would recompile the model
        until dynamo's recompile limit; the attention kernels run eagerly between compiled graphs."""
        layout = self.family.layout(q.shape[2], fwd.grid, fwd.n_text, fwd.n_after)
        if layout is None:
            self.say_once(("layout", q.shape[2], fwd.grid), "%s: a call of %d tokens does not fit image grid "
                          "%s; such calls stay dense", self.family.name, q.shape[2], fwd.grid)
            return None
        if self.check is not None and any(c.role is Role.COND for c in fwd.chunks):
            check, self.check = self.check, None
            check(q.shape[1], layout)
        attend = self.lane().attend
        if attend is None:
            return None
        ctx = CallContext(layer, fwd.step, fwd.chunks, layout, fwd.eval_key, scale)
        return attend(q, k, v, ctx, dense)
