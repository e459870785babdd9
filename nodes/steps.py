"""Which step of the plan a model evaluation belongs to, and which CFG branch each batch chunk is.

Pure functions of plain values (no ComfyUI import), so they are unit-tested without a host.

Steps: ComfyUI gives every forward the sigma it is evaluated at and the schedule of this sampler call
(``sample_sigmas``, steps + 1 entries, already cut for denoise < 1 and split schedules). The step is the
sigma bracket ``max{j : sigmas[j] >= sigma}``: exact for Euler-like samplers and for the midpoints of
2S/DPM-2 (which lie inside the bracket), and one step early for Heun's correction (evaluated at exactly
the next step's sigma), which then uses the next row of the plan; no sampler maps past the last row.

Chunks: ``cond_or_uncond`` indexes the conds list a guider handed to ``calc_cond_batch``, and its meaning
depends on the guider (CFGGuider: 0 = positive; DualCFGGuider: 0 = negative). The cond ``uuids`` do not:
a chunk is conditional exactly when its uuid belongs to the guider's "positive" conditioning.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Sequence

from ..ditfa_core.context import Chunk, Role

_REL_TOL = 1e-5


def step_for_sigma(sigmas: Sequence[float], sigma: float) -> int:
    """The step index of an evaluation at ``sigma`` in a run over ``sigmas`` (len = steps + 1).

    Clipped to [0, steps - 1]: a sigma above the first (``s_churn`` raises it) is step 0, the final
    sigma (0, never evaluated by a real sampler) the last step.
    """
    steps = max(1, len(sigmas) - 1)
    step = 0
    for j, s in enumerate(sigmas[:steps]):
        if s >= sigma - _REL_TOL * max(abs(sigma), 1e-12):
            step = j
        else:
            break
    return step


def chunk_roles(
    cond_or_uncond: Sequence[int],
    uuids: Sequence[Hashable] | None,
    positive: Collection[Hashable] | None,
) -> tuple[Chunk, ...]:
    """One ``Chunk`` per entry of ``cond_or_uncond``, keyed by its cond uuid.

    ``positive`` is the set of uuids of the guider's positive conditioning. Without it (a guider that
    names no "positive"), index 0 is taken as conditional, which is CFGGuider's and PerpNeg's order.
    Without uuids the chunk is keyed by its index, which is stable for standard guiders.
    """
    keys: Sequence[Hashable] = uuids if uuids is not None and len(uuids) == len(cond_or_uncond) \
        else [f"cond_or_uncond:{c}" for c in cond_or_uncond]
    chunks = []
    for index, key in zip(cond_or_uncond, keys, strict=True):
        cond = key in positive if positive else index == 0
        chunks.append(Chunk(key, Role.COND if cond else Role.UNCOND))
    return tuple(chunks)
