"""The state of one sampling run: created when ComfyUI's sampler starts (OUTER_SAMPLE), dropped in its
``finally``, never stored on a class or in a ModelPatcher that outlives the run.

A ``Run`` knows the model's family and its compressible layers, tags each block's attention calls
through forward pre-hooks (ComfyUI's DiTs report no block index), describes every forward (step, CFG
chunks, evaluation, image grid) and turns one attention call into the engine's ``CallContext``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..ditfa_core.context import CallContext, Chunk
from ..ditfa_core.engine import DenseFn
from ..ditfa_core.plan import PlanError
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
        attend: Attend,
        sigmas: Sequence[float],
        positive: Collection[Hashable] | None,
        prev: Override | None,
        expected_heads: int | None = None,
    ) -> None:
        self.family = family
        self.diffusion_model = diffusion_model
        self.attend = attend
        self.sigmas = [float(s) for s in sigmas]
        self.positive = frozenset(positive) if positive else None
        self.prev = prev
        self.inner = prev
        self.expected_heads = expected_heads
        self.heads: int | None = None
        self.busy = False           # inside our dense call: a re-entrant call is the dense kernel's
        self.evaluations = 0
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

    def forward(self, x: torch.Tensor, context: Any, to: dict[str, Any]) -> Forward:
        """Describe the forward about to run on latent batch ``x`` (from ``apply_model``'s inputs)."""
        sigma = to.get("sigmas")
        step = step_for_sigma(self.sigmas, float(sigma.flatten()[0])) if sigma is not None else 0
        chunks = chunk_roles(to.get("cond_or_uncond") or [0], to.get("uuids"), self.positive)
        n_text = int(context.shape[1]) if isinstance(context, torch.Tensor) and context.ndim >= 3 else 0
        grid = self.family.grid(self.diffusion_model, tuple(x.shape))
        return Forward(step, chunks, self.evaluations, grid, n_text)

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
        match the family's layout (the caller computes it untouched)."""
        layout = self.family.layout(q.shape[2], fwd.grid, fwd.n_text)
        if layout is None:
            self.say_once(("layout", q.shape[2], fwd.grid), "%s: a call of %d tokens does not fit image grid "
                          "%s; such calls stay dense", self.family.name, q.shape[2], fwd.grid)
            return None
        if self.heads is None:
            self.heads = q.shape[1]
            if self.expected_heads is not None and self.heads != self.expected_heads:
                raise PlanError(f"plan does not fit the model: heads: plan has {self.expected_heads}, "
                                f"model has {self.heads}")
        ctx = CallContext(layer, fwd.step, fwd.chunks, layout, fwd.eval_key)
        return self.attend(q, k, v, ctx, dense)
