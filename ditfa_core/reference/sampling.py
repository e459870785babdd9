"""Euler sampler for the flow-matching reference DiT, with classifier-free guidance.

DiTFastAttn's plans are indexed by (step, layer) and some strategies share attention between the
conditional and unconditional CFG branches, so the sampler exposes exactly those two things: a
per-step attention hook and a fixed batch layout (chunk 0 = conditional, chunk 1 = unconditional).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import Tensor

from .model import AttentionHook, DiT

AttentionForStep = Callable[[int], AttentionHook | None]
Progress = Callable[[int, int], None]
Evaluate = Callable[[int, Callable[[], Tensor]], Tensor]


def timesteps(steps: int) -> Tensor:
    """Uniform schedule from t = 1 (noise) to t = 0 (data), steps + 1 points (float64 for exact dt)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)


def initial_noise(count: int, channels: int, size: tuple[int, int], seed: int) -> Tensor:
    """(count, channels, H, W) float32 standard normal drawn on the CPU from ``seed`` (device-independent)."""
    return torch.randn((count, channels, *size), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def sample(
    model: DiT,
    labels: Tensor | Sequence[int],
    *,
    steps: int = 20,
    cfg: float = 4.0,
    seed: int = 0,
    attention_for_step: AttentionForStep | None = None,
    progress: Progress | None = None,
    size: tuple[int, int] | None = None,
    evaluate: Evaluate | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    """Generate one image per label, returned as (b, C, H, W) float32 in [-1, 1] on the model's device.

    The model predicts v = eps - x0 and x_t = (1 - t) x0 + t eps, so Euler integration of dx/dt = v from
    t = 1 to 0 maps noise to data. With ``cfg != 1`` each forward runs x_in = cat([x, x]) with
    y_in = cat([labels, null]) and combines v = v_u + cfg (v_c - v_u); with ``cfg == 1`` only the
    conditional half is run (b rows), as guidance would cancel out anyway.

    ``attention_for_step(i)`` supplies the attention hook of step i (0 = the noisiest step) or None for
    SDPA. ``progress(i + 1, steps)`` is called after each step. The initial noise is drawn on the CPU
    from ``torch.Generator().manual_seed(seed)``, so results do not depend on the device's RNG. ``size``
    (H, W) overrides ``model.config.image_size``, e.g. to time the ``xl`` preset at other resolutions.
    ``evaluate(i, forward)`` wraps each model evaluation: a plan search runs ``forward()`` as often as
    it needs at the same input and returns the output the sampler should use. ``noise`` (b, C, H, W), if
    given, replaces the seeded initial noise: a caller drawing many images in batches draws all the
    noise once, so an image does not depend on the batch it lands in.
    """
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    y = torch.as_tensor(labels, dtype=torch.long).reshape(-1).to(device)
    b = y.shape[0]
    height, width = size or (model.config.image_size, model.config.image_size)
    shape = (b, model.config.in_channels, height, width)
    if noise is None:
        noise = initial_noise(b, shape[1], (height, width), seed)
    elif tuple(noise.shape) != shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {shape}")
    x = noise.to(device=device, dtype=torch.float32)
    guided = cfg != 1.0
    y_in = torch.cat([y, torch.full_like(y, model.config.null_class)]) if guided else y
    ts = timesteps(steps)
    for i in range(steps):
        attention = attention_for_step(i) if attention_for_step is not None else None
        x_in = torch.cat([x, x]) if guided else x
        t_in = torch.full((x_in.shape[0],), float(ts[i]), device=device)
        forward = partial(model, x_in.to(dtype), t_in, y_in, attention=attention)
        v = (evaluate(i, forward) if evaluate is not None else forward()).float()
        if guided:
            v_cond, v_uncond = v.chunk(2)
            v = v_uncond + cfg * (v_cond - v_uncond)
        x = x + float(ts[i + 1] - ts[i]) * v
        if progress is not None:
            progress(i + 1, steps)
    return x.clamp(-1.0, 1.0)
