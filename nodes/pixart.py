"""PixArt-α/Σ: their attention never reaches ComfyUI's override (``PixArtMS.forward`` drops
transformer_options and the blocks call the module-global ``optimized_attention``), so each block's
self-attention ``forward`` is replaced through a ModelPatcher object patch, verified on 0.3.64.

The patch recomputes ``AttentionKVCompress.forward`` step by step with the same modules, so that a
FULL call is bit-identical; it hands the attention itself to the run. It reads the run from the
transformer_options of the running forward (``CURRENT_OPTIONS``, set by the APPLY_MODEL wrapper).
Calls it cannot describe (KV compression, a mask, no DiTFastAttn run, another object patch already on
the block) run the original forward.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from .families import Family
from .run import FORWARD_KEY, RUN_KEY

_KEY = "diffusion_model.blocks.{}.attn.forward"


def install(patcher: Any, family: Family) -> None:
    blocks, _ = family.layer_bases(patcher.model.diffusion_model)
    for i, (block, layer, _calls) in enumerate(blocks):
        key = _KEY.format(i)
        prev = patcher.object_patches.get(key)
        if isinstance(prev, functools.partial) and prev.func is self_attention:
            prev = prev.args[2]   # ours from an earlier DiTFastAttn node: keep what it wrapped
        patcher.add_object_patch(key, functools.partial(self_attention, block.attn, layer, prev))


def self_attention(module: torch.nn.Module, layer: int, prev: Any, x: torch.Tensor, mask: Any = None,
                   HW: Any = None, block_id: Any = None) -> torch.Tensor:
    import comfy.ldm.pixart.blocks as pixart_blocks

    from .wrappers import CURRENT_OPTIONS

    to = CURRENT_OPTIONS.get()
    run = to.get(RUN_KEY) if to is not None else None
    fwd = to.get(FORWARD_KEY) if to is not None else None
    compressible = prev is None and mask is None and getattr(module, "sr_ratio", 1) == 1
    if run is None or fwd is None or not compressible:
        original = prev if prev is not None else functools.partial(type(module).forward, module)
        return original(x, mask=mask, HW=HW, block_id=block_id)
    attn = pixart_blocks.optimized_attention
    b, n, c = x.shape
    heads = module.num_heads
    q, k, v = module.qkv(x).reshape(b, n, 3, c).unbind(2)
    q, k = module.q_norm(q), module.k_norm(k)
    q, k, v = (t.reshape(b, n, heads, c // heads).transpose(1, 2) for t in (q, k, v))

    def dense(qq: torch.Tensor, kk: torch.Tensor, vv: torch.Tensor) -> torch.Tensor:
        out = attn(qq, kk, vv, heads, mask=None, skip_reshape=True)
        return out.unflatten(-1, (heads, -1)).transpose(1, 2)

    out = run.attention(q, k, v, layer, fwd, dense)
    y = attn(q, k, v, heads, mask=None, skip_reshape=True) if out is None else out.transpose(1, 2).flatten(2)
    return module.proj(y.view(b, n, c))
