"""FlashAttention-2 sliding windows (CUDA, fp16/bf16): the fastest exact 1-D band on GPUs.

Two sources of the same kernel: the ``flash_attn`` package (``flash_attn_func(window_size=(r, r))``)
and torch's own FA2 build through ``torch.nn.attention.varlen.varlen_attn(window_size=...)``. Both
only express ``|i - j| <= r`` over the whole sequence, so they take pure bands without global tokens.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect

import torch

from ..windows import AttentionPattern

_DTYPES = (torch.float16, torch.bfloat16)
_MAX_HEAD_DIM = 256


def _plain_band(pattern: AttentionPattern) -> bool:
    """A window over the whole sequence in token order, which is all a flash window can express."""
    return pattern.kind == "band" and pattern.layout.n_global == 0


def _cuda_half(device: torch.device, dtype: torch.dtype) -> bool:
    return device.type == "cuda" and dtype in _DTYPES and torch.cuda.is_available()


@functools.cache
def _has_flash_attn() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def flash_attn_available(device: torch.device, dtype: torch.dtype) -> bool:
    """flash-attn is installed and the tensors are CUDA fp16/bf16."""
    return _cuda_half(device, dtype) and _has_flash_attn()


def flash_attn_supports(pattern: AttentionPattern, device: torch.device, dtype: torch.dtype) -> bool:
    """Plain bands on CUDA fp16/bf16 with flash-attn installed."""
    return flash_attn_available(device, dtype) and _plain_band(pattern)


def flash_attn_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         pattern: AttentionPattern, scale: float | None = None) -> torch.Tensor:
    """Band attention of (B, H, N, D) tensors via flash_attn_func, whose layout is (B, N, H, D)."""
    from flash_attn import flash_attn_func

    r = pattern.radius[2]
    if q.shape[-1] > _MAX_HEAD_DIM:
        raise ValueError(f"flash-attn takes head_dim <= {_MAX_HEAD_DIM}, got {q.shape[-1]}")
    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), window_size=(r, r),
                          softmax_scale=scale)
    return out.transpose(1, 2)


@functools.cache
def _has_torch_varlen_window() -> bool:
    """torch >= 2.10 ships FA2 with windows as varlen_attn(window_size=...); older builds do not."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return False
    return "window_size" in inspect.signature(varlen_attn).parameters


def torch_flash_available(device: torch.device, dtype: torch.dtype) -> bool:
    """torch's FA2 varlen kernel: CUDA sm80+, fp16/bf16."""
    if not (_cuda_half(device, dtype) and _has_torch_varlen_window()):
        return False
    return torch.cuda.get_device_capability(device) >= (8, 0)


def torch_flash_supports(pattern: AttentionPattern, device: torch.device, dtype: torch.dtype) -> bool:
    """Plain bands on CUDA sm80+ fp16/bf16."""
    return torch_flash_available(device, dtype) and _plain_band(pattern)


def torch_flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          pattern: AttentionPattern, scale: float | None = None) -> torch.Tensor:
    """Band attention via varlen_attn: the batch is packed as B sequences of N tokens each."""
    from torch.nn.attention.varlen import varlen_attn

    b, h, n, d = q.shape
    if d > _MAX_HEAD_DIM:
        raise ValueError(f"torch flash attention takes head_dim <= {_MAX_HEAD_DIM}, got {d}")
    r = pattern.radius[2]
    cu_seq = torch.arange(0, (b + 1) * n, n, dtype=torch.int32, device=q.device)

    def pack(x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).reshape(b * n, h, d)

    out = varlen_attn(pack(q), pack(k), pack(v), cu_seq, cu_seq, n, n, window_size=(r, r),
                      scale=scale)
    return out.reshape(b, n, h, d).transpose(1, 2)
