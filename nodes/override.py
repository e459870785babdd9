"""ComfyUI's attention override, translated to the engine: layouts in, layouts out, and the chain.

ComfyUI has one override slot (``transformer_options["optimized_attention_override"]``) and calls it as
``override(func, *args, **kwargs)`` for every attention call of the DiTs that pass transformer_options.
Cross-attention (query length != key length), masked calls, calls outside a compressible block and calls
outside a DiTFastAttn run go to the dense kernel untouched. The dense kernel is the override that was in
the slot before ours (chained, called as ``prev(func, ...)``), else ``func``, ComfyUI's chosen backend.
"""

from __future__ import annotations

from typing import Any

import torch

from .run import BLOCK_KEY, FORWARD_KEY, RUN_KEY, SETUP_KEY, Override, Run

_LAYOUT_KWARGS = ("heads", "mask", "skip_reshape", "skip_output_reshape")


def call_dense(override: Override | None, func: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
    return override(func, *args, **kwargs) if override is not None else func(*args, **kwargs)


def to_bhnd(x: torch.Tensor, heads: int, bhnd: bool) -> torch.Tensor:
    """(B, L, H*D) -> (B, H, L, D) as a view, so that converting back restores the very same tensor.

    The backends reshape their input as ``(B, -1, heads, D)``, and some call sites rely on it (SD3
    passes v as (B, L, H, D)), so this does the same."""
    return x if bhnd else x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


def from_bhnd(x: torch.Tensor, bhnd: bool) -> torch.Tensor:
    return x if bhnd else x.transpose(1, 2).flatten(2)


@torch.compiler.disable
def attention_override(func: Any, *args: Any, **kwargs: Any) -> Any:
    """The function installed in the override slot; a module-level function, so that ModelPatcher
    clones (which deep-copy model options) keep it by identity. Excluded from torch.compile: see
    ``Run.attention`` (its per-call bookkeeping, the block's call counter, is mutable state too)."""
    to = kwargs.get("transformer_options")
    run: Run | None = to.get(RUN_KEY) if isinstance(to, dict) else None
    if run is None:
        setup = to.get(SETUP_KEY) if isinstance(to, dict) else None
        return call_dense(getattr(setup, "prev", None), func, args, kwargs)
    if run.busy:
        # A later override we wrapped as our dense kernel chained back to us: pass on down the chain.
        return call_dense(run.prev, func, args, kwargs)
    return _compress(run, to, func, args, kwargs)


def _compress(run: Run, to: dict[str, Any], func: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
    q, k, v = args[:3]
    mask = args[4] if len(args) > 4 else kwargs.get("mask")
    skip_in = bool(kwargs.get("skip_reshape", False))
    skip_out = bool(kwargs.get("skip_output_reshape", False))
    fwd = to.get(FORWARD_KEY)
    block = to.get(BLOCK_KEY)
    seq = 2 if skip_in else 1
    if fwd is None or block is None or mask is not None or q.shape[seq] != k.shape[seq]:
        return call_dense(run.inner, func, args, kwargs)
    base, calls, seen = block
    block[2] = seen + 1
    if seen >= calls:
        run.say_once(("calls", base), "%s: block of layer %d made more attention calls than the %d expected; "
                     "the extra ones stay dense", run.family.name, base, calls)
        return call_dense(run.inner, func, args, kwargs)
    heads = args[3] if len(args) > 3 else kwargs["heads"]
    qh, kh, vh = (to_bhnd(t, heads, skip_in) for t in (q, k, v))
    rest = {key: val for key, val in kwargs.items() if key not in _LAYOUT_KWARGS}

    def dense(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        run.busy = True
        try:
            if a is qh and b is kh and c is vh:   # the whole call: exactly what ComfyUI would have run
                return to_bhnd(call_dense(run.inner, func, args, kwargs), heads, skip_out)
            out = call_dense(run.inner, func, (a, b, c, heads), {**rest, "skip_reshape": True})
            return to_bhnd(out, heads, False)
        finally:
            run.busy = False

    out = run.attention(qh, kh, vh, base + seen, fwd, dense)
    if out is None:
        return call_dense(run.inner, func, args, kwargs)
    return from_bhnd(out, skip_out)
