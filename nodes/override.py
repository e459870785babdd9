"""ComfyUI's attention override, translated to the engine: layouts in, layouts out, and the chain.

ComfyUI has one override slot (``transformer_options["optimized_attention_override"]``) and calls it as
``override(func, *args, **kwargs)`` for every attention call of the DiTs that pass transformer_options.
Cross-attention (query length != key length), calls with a mask that hides some key, calls outside a
compressible block and calls outside a DiTFastAttn run go to the dense kernel untouched. The dense kernel
is the override that was in the slot before ours (chained, called as ``prev(func, ...)``), else ``func``,
ComfyUI's chosen backend.

ComfyUI 0.33+ call conventions (its ``attention.py``): ``scale`` (the softmax scale) is honoured by every
strategy; ``enable_gqa`` (k/v with fewer heads than q) is executed exactly by repeating each k/v head over
its group of query heads, as SDPA's ``enable_gqa`` does; every other keyword (``low_precision_attention``,
``attn_precision``...) is passed on to the dense kernel. q/k/v arrive unwrapped: ComfyUI takes them out of
their ``AttentionTensorContainer`` before calling an override without ``container_function``.
"""

from __future__ import annotations

from typing import Any

import torch

from .run import FORWARD_KEY, RUN_KEY, SETUP_KEY, Override, Run

_LAYOUT_KWARGS = ("heads", "mask", "skip_reshape", "skip_output_reshape", "enable_gqa")
MASK_KEY = "ditfa_mask"   # (mask, keeps every key) of the forward's last masked call: one check per mask


def call_dense(override: Override | None, func: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
    return override(func, *args, **kwargs) if override is not None else func(*args, **kwargs)


def to_bhnd(x: torch.Tensor, heads: int, bhnd: bool) -> torch.Tensor:
    """(B, L, H*D) -> (B, H, L, D) as a view, so that converting back restores the very same tensor.

    The backends reshape their input as ``(B, -1, heads, D)``, and some call sites rely on it (SD3
    passes v as (B, L, H, D)), so this does the same."""
    return x if bhnd else x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


def from_bhnd(x: torch.Tensor, bhnd: bool) -> torch.Tensor:
    return x if bhnd else x.transpose(1, 2).flatten(2)


def keeps_every_key(mask: torch.Tensor) -> bool:
    """Whether an attention mask hides nothing: a bool mask all True, or an additive float mask all zero
    (ComfyUI's two conventions). Lumina 2 / Z-Image pass such masks when no prompt is padded; the call is
    then the unmasked one. Other dtypes count as masking."""
    if mask.dtype == torch.bool:
        return bool(mask.all())
    if mask.is_floating_point():
        return not bool(mask.any())
    return False


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
    if run.lane().busy:
        # A later override we wrapped as our dense kernel chained back to us: pass on down the chain.
        return call_dense(run.prev, func, args, kwargs)
    return _compress(run, to, func, args, kwargs)


def _unmasked(to: dict[str, Any], mask: torch.Tensor | None) -> bool:
    if mask is None:
        return True
    seen = to.get(MASK_KEY)
    if seen is None or seen[0] is not mask:
        seen = to[MASK_KEY] = (mask, keeps_every_key(mask))
    return seen[1]


def _heads(x: torch.Tensor, dim_head: int, bhnd: bool) -> int:
    return x.shape[1] if bhnd else x.shape[-1] // dim_head


def _compress(run: Run, to: dict[str, Any], func: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
    q, k, v = args[:3]
    mask = args[4] if len(args) > 4 else kwargs.get("mask")
    skip_in = bool(kwargs.get("skip_reshape", False))
    skip_out = bool(kwargs.get("skip_output_reshape", False))
    fwd = to.get(FORWARD_KEY)
    seq = 2 if skip_in else 1
    if fwd is None or q.shape[seq] != k.shape[seq] or not _unmasked(to, mask):
        return call_dense(run.inner, func, args, kwargs)
    block = run.block(to)
    if block is None:
        return call_dense(run.inner, func, args, kwargs)
    base, calls, seen = block[:3]
    block[2] = seen + 1
    if seen >= calls:
        run.say_once(("calls", base), "%s: block of layer %d made more attention calls than the %d expected; "
                     "the extra ones stay dense", run.family.name, base, calls)
        return call_dense(run.inner, func, args, kwargs)
    heads = args[3] if len(args) > 3 else kwargs["heads"]
    qh = to_bhnd(q, heads, skip_in)
    dim_head = qh.shape[-1]
    kv_heads = _heads(k, dim_head, skip_in)
    kh, vh = to_bhnd(k, kv_heads, skip_in), to_bhnd(v, kv_heads, skip_in)
    if kv_heads != heads:
        if not kwargs.get("enable_gqa", False) or heads % kv_heads:
            return call_dense(run.inner, func, args, kwargs)
        run.say_once("gqa", "%s: k/v have %d heads for %d query heads (GQA); each k/v head is repeated over "
                     "its query heads, which is exact", run.family.name, kv_heads, heads)
        kh, vh = (t.repeat_interleave(heads // kv_heads, dim=1) for t in (kh, vh))
    rest = {key: val for key, val in kwargs.items() if key not in _LAYOUT_KWARGS}
    lane = run.lane()

    def dense(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        lane.busy = True
        try:
            if a is qh and b is kh and c is vh:   # the whole call: exactly what ComfyUI would have run
                return to_bhnd(call_dense(run.inner, func, args, kwargs), heads, skip_out)
            # A part of the call: some rows (CFG) or some heads (a head-wise plan's group).
            out = call_dense(run.inner, func, (a, b, c, a.shape[1]), {**rest, "skip_reshape": True})
            return to_bhnd(out, a.shape[1], False)
        finally:
            lane.busy = False

    out = run.attention(qh, kh, vh, base + seen, fwd, dense, kwargs.get("scale"))
    if out is None:
        return call_dense(run.inner, func, args, kwargs)
    return from_bhnd(out, skip_out)
