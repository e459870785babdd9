"""Error metrics between an uncompressed output O and a compressed one O'.

``relative_error`` is the plan search's loss, paper appendix A.2, written as the paper states it.
The official code (and xDiT, which copies it) divides by ``max(O, O')`` instead of
``max(|O|, |O'|)``: for negative outputs that denominator is near zero or negative, the ratio
explodes into the clip at 10, and the search rejects strategies it should accept. The tests pin
values where the two formulas differ.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

_CHUNK = 1 << 22
"""Elements per pass: bounds the fp32 temporaries to a few times 16 MiB whatever the tensor size."""
_SMALL = 1 << 16
"""Below this many elements the work is negligible, so compute in fp64 for exact reference values."""


def _check(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.numel() == 0:
        raise ValueError("cannot compare empty tensors")


def _compute_dtype(a: torch.Tensor) -> torch.dtype:
    return torch.float64 if a.dtype == torch.float64 or a.numel() <= _SMALL else torch.float32


def _flat_chunks(
    a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Matching slices of the flattened tensors, copied and cast one chunk at a time: never a full
    fp32 copy, and the callers may work in place without touching their inputs."""
    fa, fb = a.reshape(-1), b.reshape(-1)
    for start in range(0, fa.numel(), _CHUNK):
        end = start + _CHUNK
        yield fa[start:end].to(dtype, copy=True), fb[start:end].to(dtype, copy=True)


def _ratio(a: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """A.2's elementwise term clip(|a - b| / (max(|a|, |b|) + eps), 0, 10), in place on copies a, b."""
    return (a - b).abs_().div_(torch.maximum(a.abs_(), b.abs_()).add_(eps)).clamp_(0.0, 10.0)


@torch.no_grad()
def relative_error(o: torch.Tensor, o_prime: torch.Tensor, eps: float = 1e-6) -> float:
    """Mean relative absolute error, paper A.2: mean_i clip(|O_i - O'_i| / (max(|O_i|, |O'_i|) + eps), 0, 10).

    Computed in fp32 (fp64 for fp64 or small inputs) and accumulated in fp64, chunk by chunk, so
    half-precision model outputs neither round the ratios nor overflow the sum. Note that with the
    absolute values in place the ratio never exceeds 2 (|a - b| <= 2 max(|a|, |b|)), so the clip
    at 10 only matters to the official code's signed formula; it is kept to be A.2 verbatim.
    NaN anywhere yields NaN, which compares false against every threshold (the search rejects it).
    """
    _check(o, o_prime)
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    total = torch.zeros((), dtype=torch.float64, device=o.device)
    for a, b in _flat_chunks(o, o_prime, _compute_dtype(o)):
        total += _ratio(a, b, eps).sum(dtype=torch.float64)
    return float(total) / o.numel()


@torch.no_grad()
def relative_error_per_head(o: torch.Tensor, o_prime: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each head's share of ``relative_error(o, o_prime)`` for (B, H, N, D) outputs: a (H,) float64
    tensor whose sum is the layer's error, since A.2's metric is a mean over elements. The head-wise
    search budgets these shares, so a head-wise row and a layer-wise row are held to the same δ.
    (DiTFastAttnV2 scores heads by MSE / Var instead; its per-head values do not add up to the
    layer's error, and the learnt gain between local and model-output error assumes they do.)"""
    _check(o, o_prime)
    if o.dim() != 4:
        raise ValueError(f"expected (B, H, N, D) tensors, got shape {tuple(o.shape)}")
    heads, dtype = o.shape[1], _compute_dtype(o)
    per = torch.zeros(heads, dtype=torch.float64, device=o.device)
    step = max(1, _CHUNK // o[:, 0].numel())   # heads per pass: bounded temporaries, one sync at the end
    for h in range(0, heads, step):
        a, b = o[:, h:h + step].to(dtype, copy=True), o_prime[:, h:h + step].to(dtype, copy=True)
        per[h:h + step] = _ratio(a, b, eps).sum(dim=(0, 2, 3), dtype=torch.float64)
    return (per / o.numel()).cpu()


@torch.no_grad()
def rel_l1(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L1 distance sum|a - b| / sum|a| of ``b`` from the reference ``a`` (for reports).

    Unlike ``relative_error`` it weighs elements by magnitude, the measure step caches report.
    A zero reference gives 0 when ``b`` is zero too, else infinity.
    """
    _check(a, b)
    num = torch.zeros((), dtype=torch.float64, device=a.device)
    den = torch.zeros((), dtype=torch.float64, device=a.device)
    for x, y in _flat_chunks(a, b, _compute_dtype(a)):
        num += (x - y).abs_().sum(dtype=torch.float64)
        den += x.abs_().sum(dtype=torch.float64)
    num_f, den_f = float(num), float(den)
    if den_f == 0.0:
        return 0.0 if num_f == 0.0 else float("inf")
    return num_f / den_f
