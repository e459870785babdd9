"""The state of one sampling run: created when ComfyUI's sampler starts (OUTER_SAMPLE), dropped in its
``finally``, never stored on a class or in a ModelPatcher that outlives the run.

A ``Run`` knows the model's family and its compressible layers, finds which block an attention call
belongs to, describes every forward (step, CFG chunks, evaluation, image grid) and turns one attention
call into the engine's ``CallContext``.

Block of a call: ComfyUI 0.33+ DiTs put ``block_type``, ``block_index`` and ``total_blocks`` in
transformer_options before each block; where they are present they are used. ComfyUI 0.3.64's DiTs report
nothing, so forward pre-hooks on the blocks tag the calls; the hooks of a block list are removed as soon as
the host's keys are seen for it.

Threads: ComfyUI 0.33+ may sample on several devices at once, running chunks of the batch on model clones
from a pool of persistent worker threads (one per device) that all see this Run. Each thread gets its own
``Lane``: its own engine (caches, statistics) and its own re-entrancy flag, so nothing mutable is shared
across threads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..ditfa_core.context import CallContext, Chunk
from ..ditfa_core.engine import DenseFn
from ..ditfa_core.plan import PlanError
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
LaneFactory = Callable[[], tuple[Attend, Callable[[], None]]]


class Lane:
    """What one thread of a run may mutate: its engine (``attend`` and its ``close``) and ``busy``."""

    def __init__(self, attend: Attend | None, close: Callable[[], None]) -> None:
        self.attend = attend        # None: this thread computes densely (no engine could be made for it)
        self.close = close
        self.busy = False           # inside our dense call: a re-entrant call is the dense kernel's


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

    ``attend`` serves the thread that created the run; ``new_lane`` makes the engine of any other thread
    that calls attention during the run (None: such threads compute densely, logged once)."""

    def __init__(
        self,
        family: Family,
        diffusion_model: torch.nn.Module,
        attend: Attend,
        sigmas: Sequence[float],
        positive: Collection[Hashable] | None,
        prev: Override | None,
        expected_heads: int | None = None,
        new_lane: LaneFactory | None = None,
    ) -> None:
        self.family = family
        self.diffusion_model = diffusion_model
        self.sigmas = [float(s) for s in sigmas]
        self.positive = frozenset(positive) if positive else None
        self.prev = prev
        self.inner = prev
        self.expected_heads = expected_heads
        self.heads: int | None = None
        self.evaluations = 0
        self._new_lane = new_lane
        self._lock = threading.Lock()
        self._lanes: dict[int, Lane] = {threading.get_ident(): Lane(attend, lambda: None)}
        self._handles: dict[str, list[torch.utils.hooks.RemovableHandle]] = {}
        self._said: set[Hashable] = set()
        bases, _ = family.layer_bases(diffusion_model)
        self._bases = {(path, i): (base, calls) for (path, i, _), (_, base, calls) in
                       zip(family.blocks(diffusion_model), bases, strict=True)}

    # -- lifetime ----------------------------------------------------------------------------

    def open(self) -> None:
        """Tag each compressible block's calls where the host does not. Hooks live on the shared modules
        (every clone of the patcher sees them), so they are added here and removed in ``close`` (or when
        the host's own block keys show up); they act only on forwards of this run."""
        if self.family.object_patch:
            return
        for path, i, block in self.family.blocks(self.diffusion_model):
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
                attend, close = self._new_lane()
                lane = Lane(attend, close)
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

    def forward(self, x: torch.Tensor, context: Any, to: dict[str, Any], conds: dict[str, Any]) -> Forward:
        """Describe the forward about to run on latent batch ``x`` (from ``apply_model``'s inputs; ``conds``
        are its extra conditions, e.g. Wan's ``context_latents``)."""
        sigma = to.get("sigmas")
        step = step_for_sigma(self.sigmas, float(sigma.flatten()[0])) if sigma is not None else 0
        chunks = chunk_roles(to.get("cond_or_uncond") or [0], to.get("uuids"), self.positive)
        n_text = int(context.shape[1]) if isinstance(context, torch.Tensor) and context.ndim >= 3 else 0
        grid = self.family.grid(self.diffusion_model, tuple(x.shape))
        n_after = self.family.appended(self.diffusion_model, grid, conds)
        return Forward(step, chunks, self.evaluations, grid, n_text, n_after)

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
        None when the call's tokens do not match the family's layout (the caller computes it untouched)."""
        layout = self.family.layout(q.shape[2], fwd.grid, fwd.n_text, fwd.n_after)
        if layout is None:
            self.say_once(("layout", q.shape[2], fwd.grid), "%s: a call of %d tokens does not fit image grid "
                          "%s; such calls stay dense", self.family.name, q.shape[2], fwd.grid)
            return None
        if self.heads is None:
            self.heads = q.shape[1]
            if self.expected_heads is not None and self.heads != self.expected_heads:
                raise PlanError(f"plan does not fit the model: heads: plan has {self.expected_heads}, "
                                f"model has {self.heads}")
        attend = self.lane().attend
        if attend is None:
            return None
        ctx = CallContext(layer, fwd.step, fwd.chunks, layout, fwd.eval_key, scale)
        return attend(q, k, v, ctx, dense)
