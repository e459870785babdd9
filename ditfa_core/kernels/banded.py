"""Banded SDPA: an exact 1-D band as ONE batched SDPA call over every interior query tile.

A band ``|i - j| <= r`` over a query tile [a, a+T) reaches the keys [a-r, a+T+r). For every tile away
from the image's ends these boxes are equally shaped, overlapping windows of the key sequence, so they
are strided views of it, (B*H, tiles, T+2r, D), with no copy; one call of the CPU flash kernel attends
all of them under one shared additive (T, T+2r) mask. Global tokens (text, registers) are a second
call that every image query makes, merged with the first through both calls' log-sum-exp (exact, as
FlashAttention's split-KV). The first and last r image queries (whose windows are clipped) and the
global queries run as masked boxes, as in ``blocked``.

Why, against ``blocked`` (a loop of one masked SDPA per tile of 128): the work per query is 2r+T keys
for a band of 2r+1 and T is free (small tiles no longer cost a call each; ``select`` measures T), the
mask is the float one the kernel adds (``blocked``'s bool masks are converted per call), and one
parallel region replaces dozens, which matters when other processes load the cores. CPU only: it
needs the CPU flash kernel's log-sum-exp output.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ..windows import AttentionPattern, band

DEFAULT_TILE = 64
# Below this radius the band is too narrow for its own call to pay (blocked handles it).
MIN_RADIUS = 8


def available(device: torch.device, dtype: torch.dtype) -> bool:
    """CPU only: it needs the CPU flash kernel's log-sum-exp output."""
    return device.type == "cpu" and dtype in (torch.float32, torch.bfloat16, torch.float16)


def supports(pattern: AttentionPattern, device: torch.device, dtype: torch.dtype) -> bool:
    """Bands wide enough for the split, with at least one interior tile."""
    r, n_img = pattern.radius[2], pattern.layout.n_image
    return available(device, dtype) and pattern.kind == "band" and r >= MIN_RADIUS and n_img > 2 * r


def sdpa_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, log-sum-exp in float32) of the CPU flash kernel; ``mask`` is additive, q's dtype."""
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, attn_mask=mask,
                                                                          scale=scale)
    return out, lse.float()


def _windows(x: torch.Tensor, first: int, n_tiles: int, tile: int, length: int) -> torch.Tensor:
    """(B*H, n_tiles, length, D) windows of a contiguous (B, H, N, D) tensor: window t starts at
    ``first + t * tile`` (windows overlap when length > tile; a view, no copy)."""
    b, h, n, d = x.shape
    return x.as_strided((b * h, n_tiles, length, d), (n * d, tile * d, d, 1),
                        x.storage_offset() + first * d)


@functools.lru_cache(maxsize=64)
def _box_mask(tile: int, radius: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(tile, tile + 2 radius) additive mask of a band inside one tile's key box."""
    # Query i of the tile sits at position i + radius of its box.
    lo, hi = band.window(torch.arange(tile)[:, None] + radius, tile + 2 * radius, radius, 1)
    j = torch.arange(tile + 2 * radius)[None, :]
    return torch.zeros(tile, tile + 2 * radius, dtype=dtype).masked_fill((j < lo) | (j > hi),
                                                                         float("-inf")).to(device)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: AttentionPattern,
              scale: float | None = None, tile: int = DEFAULT_TILE) -> torch.Tensor:
    """Band attention of (B, H, N, D) tensors (any layout; the image part is made contiguous once);
    ``scale`` as SDPA's."""
    if not supports(pattern, q.device, q.dtype):
        raise ValueError(f"banded attention cannot run {pattern} on {q.device} with {q.dtype}")
    layout = pattern.layout
    b, h, n, d = q.shape
    start, end, r = layout.image_start, layout.image_end, pattern.radius[2]
    n_img = end - start
    t = max(1, min(tile, n_img - 2 * r))
    n_tiles = (n_img - 2 * r) // t
    first, last = r, r + n_tiles * t              # the interior queries, image-local
    qi, ki, vi = (x[:, :, start:end].contiguous() for x in (q, k, v))
    box = (first - r, n_tiles, t, t + 2 * r)
    parts = [sdpa_lse(_windows(qi, first, n_tiles, t, t), _windows(ki, *box), _windows(vi, *box),
                       _box_mask(t, r, q.dtype, q.device), scale)]
    if layout.n_global:
        g = torch.cat([torch.arange(0, start), torch.arange(end, n)]).to(q.device)
        kg, vg = (x.index_select(2, g).reshape(b * h, 1, -1, d) for x in (k, v))
        o, lse = sdpa_lse(qi[:, :, first:last].reshape(b * h, 1, -1, d), kg, vg, scale=scale)
        parts.append((o.view(b * h, n_tiles, t, d), lse.view(b * h, n_tiles, t)))
    out = torch.empty_like(q)
    out[:, :, start + first:start + last] = merge(parts).view(b, h, last - first, d)
    _borders(q, k, v, pattern, out, first, last, scale)
    return out


def merge(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Softmax over the union of the parts' keys, from each part's output and log-sum-exp."""
    if len(parts) == 1:
        return parts[0][0]
    total = torch.logsumexp(torch.stack([lse for _, lse in parts]), dim=0)
    out = torch.zeros_like(parts[0][0], dtype=torch.float32)
    for o, lse in parts:
        out.addcmul_(o.float(), (lse - total).exp().unsqueeze(-1))
    return out.to(parts[0][0].dtype)


def _borders(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: AttentionPattern,
             out: torch.Tensor, first: int, last: int, scale: float | None) -> None:
    """The clipped windows at both ends of the image and the global queries, as masked boxes."""
    layout = pattern.layout
    n, start, end = layout.n_tokens, layout.image_start, layout.image_end
    g = torch.cat([torch.arange(0, start), torch.arange(end, n)])
    for lo, hi in ((0, first), (last, end - start)):
        if hi <= lo:
            continue
        q_idx = torch.arange(start + lo, start + hi)
        (_, _, box_lo), (_, _, box_hi) = pattern.key_box((0, 0, lo), (1, 1, hi))
        kv_idx = torch.cat([g, torch.arange(start + box_lo, start + box_hi)])
        mask = pattern.visible(q_idx[:, None], kv_idx[None, :]).to(q.device)
        kv = kv_idx.to(q.device)
        out[:, :, start + lo:start + hi] = F.scaled_dot_product_attention(
            q[:, :, start + lo:start + hi], k.index_select(2, kv), v.index_select(2, kv), attn_mask=mask,
            scale=scale)
    if g.numel():
        gd = g.to(q.device)
        out.index_copy_(2, gd, F.scaled_dot_product_attention(q.index_select(2, gd), k, v, scale=scale))
