"""Which step of the plan a model evaluation belongs to, and which CFG branch each batch chunk is.

Pure functions of plain values (no ComfyUI import), so they are unit-tested without a host.

Steps: ComfyUI gives every forward the sigma it is evaluated at and the schedule of this sampler call
(``sample_sigmas``, steps + 1 entries, already cut for denoise < 1 and split schedules). The step is the
sigma bracket ``max{j : sigmas[j] >= sigma}``: exact for Euler-like samplers and for the midpoints of
2S/DPM-2 (which lie inside the bracket), and one step early for Heun's correction (evaluated at exactly
the next step's sigma), which then uses the next row of the plan; no sampler maps past the last row.

Chunks: ``cond_or_uncond`` indexes the conds list a guider handed to ``calc_cond_batch``, and its meaning
depends on the guider (CFGGuider: 0 = positive; DualCFGGuider: 0 = negative). The cond ``uuids`` do not:
a chunk's role comes from the name under which the guider holds its conditioning (``cond_roles``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

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


def cond_roles(conds: Mapping[str, Any]) -> dict[Hashable, Role]:
    """uuid -> role for a guider's named conditioning (``guider.conds``).

    "positive" lends its attention under ASC (COND). Names that denote an unconditional term
    ("negative", PerpNeg's "empty_negative_prompt", anything with "uncond") borrow it (UNCOND).
    Every other name (DualCFGGuider's "middle", a custom guider's extra prompt) is a prompt of its
    own: computed, neither lending nor borrowing (OTHER), the safe reading of an unknown term.
    """
    roles: dict[Hashable, Role] = {}
    for name, entries in conds.items():
        low = str(name).lower()
        role = Role.COND if low == "positive" else \
            Role.UNCOND if "negative" in low or "uncond" in low else Role.OTHER
        for entry in entries or []:
            if isinstance(entry, dict) and "uuid" in entry:
                roles[entry["uuid"]] = role
    return roles


def chunk_roles(
    cond_or_uncond: Sequence[int],
    uuids: Sequence[Hashable] | None,
    roles: Mapping[Hashable, Role] | None,
) -> tuple[Chunk, ...]:
    """One ``Chunk`` per entry of ``cond_or_uncond``, keyed by its cond uuid.

    ``roles`` maps the guider's cond uuids to their roles (``cond_roles``); a uuid it does not know is
    OTHER (computed). Without it (a guider that names no conditioning), index 0 is taken as
    conditional and the rest as unconditional, which is CFGGuider's and PerpNeg's order. Without
    uuids the chunk is keyed by its index, which is stable for standard guiders.
    """
    keys: Sequence[Hashable] = uuids if uuids is not None and len(uuids) == len(cond_or_uncond) \
        else [f"cond_or_uncond:{c}" for c in cond_or_uncond]
    chunks = []
    for index, key in zip(cond_or_uncond, keys, strict=True):
        fallback = Role.COND if index == 0 else Role.UNCOND
        role = roles.get(key, Role.OTHER) if roles else fallback
        chunks.append(Chunk(key, role))
    return tuple(chunks)
