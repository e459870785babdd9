"""Attention kernels for DiTFastAttn: dense attention and exact window attention.

``windowed_attention`` takes one :class:`~ditfa_core.windows.AttentionPattern` for all heads, or one
per head (``None`` = full head). Heads that share a pattern run together on the best backend for
it; full heads go to dense SDPA. Backends, best first:

- ``flash_attn``: flash-attn's FA2 sliding window (CUDA, fp16/bf16, plain bands);
- ``torch_flash``: torch's own FA2 window through ``varlen_attn`` (same limits, no extra install);
- ``flex``: compiled FlexAttention with an analytic BlockMask (any pattern; automatic on CUDA only,
  since compiling on CPU takes seconds per shape and is slower than ``blocked`` there);
- ``banded``: one batched CPU SDPA call over every band tile's key box (CPU bands);
- ``tiled``: tile windows as batched unmasked SDPA over whole key tiles, tokens reordered tile-major
  (CPU ``tile`` patterns);
- ``blocked``: loops of fused SDPA over query tiles and their key boxes (any pattern, any device).

With ``backend="auto"`` the kernel (and its tile size) is measured once per device, dtype, pattern and
head dim and cached (``tuning``); ``DITFA_WINDOW_BACKEND`` overrides it, ``select_backend`` gives the
static first choice used for shapes too small to measure.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..windows import AttentionPattern
from . import banded, blocked, flash, flex, tiled, tuning

logger = logging.getLogger(__name__)

__all__ = ["auto_choice", "available_backends", "candidates", "dense_attention", "select_backend",
           "windowed_attention"]

Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, AttentionPattern, float | None], torch.Tensor]
"""(q, k, v, pattern, scale): ``scale`` multiplies q.k before the softmax; None = 1/sqrt(head_dim)."""


@dataclass(frozen=True)
class _Backend:
    available: Callable[[torch.device, torch.dtype], bool]
    supports: Callable[[AttentionPattern, torch.device, torch.dtype], bool]
    run: Kernel
    automatic_on_cpu: bool = True


_BACKENDS: dict[str, _Backend] = {
    "flash_attn": _Backend(flash.flash_attn_available, flash.flash_attn_supports, flash.flash_attn_attention),
    "torch_flash": _Backend(flash.torch_flash_available, flash.torch_flash_supports,
                            flash.torch_flash_attention),
    "flex": _Backend(flex.available, flex.supports, flex.attention, automatic_on_cpu=False),
    "banded": _Backend(banded.available, banded.supports, banded.attention),
    "tiled": _Backend(tiled.available, tiled.supports, tiled.attention),
    "blocked": _Backend(blocked.available, blocked.supports, blocked.attention),
}

# cuDNN attention matches FA3 on Hopper and is ~2x torch's default (FA2) there (kernels.md §4).
_HOPPER_SDPA_ORDER = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
                      SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    scale: float | None = None) -> torch.Tensor:
    """Full attention of (B, H, N, D) tensors (SDPA; cuDNN first on Hopper); ``scale`` as SDPA's."""
    if q.is_cuda and torch.cuda.get_device_capability(q.device) >= (9, 0):
        with sdpa_kernel(_HOPPER_SDPA_ORDER, set_priority=True):
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


def available_backends(device: torch.device | str, dtype: torch.dtype) -> list[str]:
    """Backends that can run on this device and dtype, best first."""
    device = torch.device(device)
    names = [name for name, b in _BACKENDS.items() if b.available(device, dtype)]
    if device.type == "cpu":
        # Explicit-only backends stay listed (they work), but after the automatic ones.
        names.sort(key=lambda name: not _BACKENDS[name].automatic_on_cpu)
    return names


def select_backend(pattern: AttentionPattern, device: torch.device | str, dtype: torch.dtype) -> str:
    """The backend ``backend="auto"`` uses for this pattern, device and dtype.

    (Full patterns, ``pattern.is_full``, skip the window backends and run dense SDPA.)
    """
    return _select(pattern, torch.device(device), dtype)


@functools.lru_cache(maxsize=256)
def _select(pattern: AttentionPattern, device: torch.device, dtype: torch.dtype) -> str:
    for name in available_backends(device, dtype):
        b = _BACKENDS[name]
        if (device.type != "cpu" or b.automatic_on_cpu) and b.supports(pattern, device, dtype):
            logger.debug("window attention backend for %s on %s/%s: %s", pattern, device, dtype, name)
            return name
    raise ValueError(f"no attention backend supports {pattern} on {device} with {dtype}")


def windowed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       pattern: AttentionPattern | Sequence[AttentionPattern | None], *,
                       backend: str = "auto", scale: float | None = None) -> torch.Tensor:
    """Window attention of (B, H, N, D) tensors.

    pattern: one pattern for every head, or a sequence of H (None = full attention for that head).
    backend: "auto", or a name from ``available_backends`` to force it (ValueError if it cannot run
    a pattern here).
    scale: the softmax scale of q.k, as SDPA's (None = 1/sqrt(head_dim)); hosts pass their own (ComfyUI's
    ``scale`` keyword).
    """
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"expected q, k, v of shape (B, H, N, D), got {q.shape}, {k.shape}, {v.shape}")
    if backend != "auto" and backend not in _BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose 'auto' or one of {list(_BACKENDS)}")
    if backend != "auto" and not _BACKENDS[backend].available(q.device, q.dtype):
        raise ValueError(f"attention backend {backend!r} is not available on {q.device} with {q.dtype}; "
                         f"available: {available_backends(q.device, q.dtype)}")
    n_heads, n = q.shape[1], q.shape[2]
    heads = list(pattern) if isinstance(pattern, Sequence) else [pattern] * n_heads
    if len(heads) != n_heads:
        raise ValueError(f"{len(heads)} per-head patterns for {n_heads} heads")
    groups: dict[AttentionPattern | None, list[int]] = {}
    for head, p in enumerate(heads):
        if p is not None and p.layout.n_tokens != n:
            raise ValueError(f"pattern is for {p.layout.n_tokens} tokens, tensors have {n}")
        groups.setdefault(None if p is None or p.is_full else p, []).append(head)
    if len(groups) == 1:
        return _run_group(q, k, v, next(iter(groups)), backend, scale)
    out = torch.empty_like(q)
    for p, group in groups.items():
        idx = torch.tensor(group, device=q.device)
        res = _run_group(q.index_select(1, idx), k.index_select(1, idx), v.index_select(1, idx), p, backend,
                         scale)
        out.index_copy_(1, idx, res)
    return out


def _run_group(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: AttentionPattern | None,
               backend: str, scale: float | None) -> torch.Tensor:
    """Heads sharing one pattern (None = full attention, which no window kernel beats)."""
    if pattern is None:
        return dense_attention(q, k, v, scale)
    if backend == "auto":
        choice = _auto_choice(q, k, v, pattern)
    elif not _BACKENDS[backend].supports(pattern, q.device, q.dtype):
        raise ValueError(f"attention backend {backend!r} cannot run {pattern} on {q.device} with {q.dtype}")
    else:
        choice = tuning.Choice(backend)
    return _run(choice, q, k, v, pattern, scale)


def _run(choice: tuning.Choice, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
         pattern: AttentionPattern, scale: float | None = None) -> torch.Tensor:
    run = _BACKENDS[choice.backend].run
    with choice.threads_set():
        if choice.tile is None:
            return run(q, k, v, pattern, scale)
        return run(q, k, v, pattern, scale, choice.tile)


def candidates(pattern: AttentionPattern, device: torch.device, dtype: torch.dtype) -> list[tuning.Choice]:
    """Every automatic backend that can run the pattern here, with each tile size worth trying and,
    on a CPU with several threads, each also on one thread."""
    cpu = device.type == "cpu"
    threads = (None, 1) if cpu and torch.get_num_threads() > 1 else (None,)
    out = []
    for name in available_backends(device, dtype):
        b = _BACKENDS[name]
        if (not cpu or b.automatic_on_cpu) and b.supports(pattern, device, dtype):
            tiles = tuning.CPU_TILES.get(name, (None,)) if cpu else (None,)
            if (name == "blocked" and pattern.shape.tiled) or (name == "tiled" and tiled.strided(pattern)):
                tiles = (None,)   # its own tiles / column strips: no size to choose
            out += [tuning.Choice(name, tile, t) for t in threads for tile in tiles]
    return out


def auto_choice(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: AttentionPattern) -> str:
    """What ``backend="auto"`` runs for these tensors, as ``name`` or ``name:tile`` (measures it the
    first time, like a call would)."""
    return "dense" if pattern.is_full else str(_auto_choice(q, k, v, pattern))


def _auto_choice(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 pattern: AttentionPattern) -> tuning.Choice:
    """The forced choice, else the measured one, else the static first choice (small shapes)."""
    forced = tuning.forced()
    if forced is not None:
        if forced.backend not in _BACKENDS:
            raise ValueError(f"DITFA_WINDOW_BACKEND={forced}: unknown backend; unset it or choose one of "
                             f"{list(_BACKENDS)}")
        if _BACKENDS[forced.backend].available(q.device, q.dtype) and \
                _BACKENDS[forced.backend].supports(pattern, q.device, q.dtype):
            return forced
        logger.debug("DITFA_WINDOW_BACKEND=%s cannot run %s here; choosing automatically", forced, pattern)
    options = candidates(pattern, q.device, q.dtype)
    if len(options) > 1 and pattern.layout.n_tokens >= tuning.MIN_TOKENS and tuning.tuning_enabled():
        return tuning.choose(tuning.shape_key(pattern, q), options,
                             lambda choice: _run(choice, q, k, v, pattern), q.device)
    return tuning.Choice(_select(pattern, q.device, q.dtype))
