"""What the engine must know about one attention call, in the engine's own words.

A host (ComfyUI, the reference DiT's sampler) describes each call with a ``CallContext``: which
layer, which step of the run, which rows of the batch belong to which CFG branch, and where the
image tokens sit. The engine never looks at host objects, only at this.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable
from dataclasses import dataclass

from .windows import TokenLayout


class Role(str, enum.Enum):
    """A chunk's part in classifier-free guidance.

    COND chunks are computed under ASC and lend their output; UNCOND chunks (the negative prompt,
    PerpNeg's empty prompt) borrow it instead of computing; OTHER chunks are further conditional
    prompts (DualCFGGuider's middle one), computed like COND but never lent: only an unconditional
    branch may take another prompt's attention.
    """

    COND = "cond"
    UNCOND = "uncond"
    OTHER = "other"


@dataclass(frozen=True)
class Chunk:
    """One equal slice of the batch rows: ``key`` identifies it for the whole run (ComfyUI's
    cond uuid, or a branch name); ``tokens`` names the part of the latent its rows cover (a context
    window's frames, a conditioning area; None for the whole latent). Caches are kept per
    ``slot`` = (key, tokens), and a chunk borrows only from a lender over the same tokens, so a
    forward over one part of the latent never reads another part's tensors."""

    key: Hashable
    role: Role
    tokens: Hashable = None

    @property
    def slot(self) -> tuple[Hashable, Hashable]:
        return (self.key, self.tokens)


COND_UNCOND: tuple[Chunk, ...] = (Chunk("cond", Role.COND), Chunk("uncond", Role.UNCOND))
"""The reference sampler's layout: conditional rows first, unconditional rows second."""


@dataclass(frozen=True)
class CallContext:
    """One attention call.

    layer     index of the compressible attention layer (0-based, the plan's column)
    step      index of the sampling step within this run (the schedule's row)
    chunks    the batch is ``len(chunks)`` equal slices of rows, in this order
    layout    where the image tokens are in the sequence (for windows and CFG sharing)
    eval_key  identity of this model evaluation; a conditional output kept for ASC is shared only
              with unconditional calls of the same evaluation (separate forwards, either order)
    scale     the softmax scale of q.k the host asked for (ComfyUI's ``scale`` keyword); None is
              1/sqrt(head_dim). Window attention uses it, and so does the engine's own dense kernel.
    """

    layer: int
    step: int
    chunks: tuple[Chunk, ...]
    layout: TokenLayout
    eval_key: Hashable = None
    scale: float | None = None

    def __post_init__(self) -> None:
        if self.layer < 0 or self.step < 0:
            raise ValueError(f"layer and step must be >= 0, got layer={self.layer}, step={self.step}")
        if not self.chunks:
            raise ValueError("a call context needs at least one chunk")
