"""A small, self-contained DiT (Peebles & Xie, 2023) used as the reference model of the pack.

No real diffusion-transformer weights can be downloaded where this pack is developed and tested, so the
compression plans are validated on a DiT we train ourselves (class-conditional MNIST digits). The
architecture follows DiT closely (patchify, 2-D sin-cos positions, adaLN-Zero blocks, unpatchify) so
that what holds for it -- attention redundancy across steps, layers and CFG branches -- is meaningful
for the large models the ComfyUI nodes target. The ``xl`` preset reproduces the DiT-XL/2 geometry so
speed can be measured at full size with random weights.

Every block routes its attention through an optional hook ``attention(q, k, v, layer_index)`` taking
and returning (B, H, N, D) tensors; that is the single seam through which DiTFastAttn plans are applied.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

AttentionHook = Callable[[Tensor, Tensor, Tensor, int], Tensor]
"""``attention(q, k, v, layer_index) -> out``, all (B, H, N, D); replaces SDPA in block ``layer_index``."""


@dataclass(frozen=True)
class DiTConfig:
    """Geometry of a DiT. Frozen so a config can key caches and be compared in tests."""

    image_size: int = 32
    in_channels: int = 1
    patch_size: int = 2
    hidden_size: int = 128
    depth: int = 8
    num_heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int = 10
    stem_channels: int = 0
    """Width of a two-layer 3x3 convolutional stem before patchify (0: none, plain DiT). A stem gives the
    tiny reference model local detail for little compute; it changes neither the attention nor the token
    count, so everything DiTFastAttn does is unaffected by it."""
    zero_init: bool = True
    """adaLN-Zero initialisation (for training). Random-weight presets turn it off: with zero gates every
    block is the identity, the attention output never reaches the result, and any test comparing a
    compressed attention against full attention would pass vacuously."""

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def null_class(self) -> int:
        """Label index of the unconditional ("null") class used for classifier-free guidance."""
        return self.num_classes

    @classmethod
    def preset(cls, name: str) -> DiTConfig:
        """Named geometries: ``mnist`` (the trained reference), ``tiny`` (unit tests), ``xl`` (DiT-XL/2)."""
        try:
            return PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown DiT preset {name!r}; choose one of {sorted(PRESETS)}") from None


PRESETS: dict[str, DiTConfig] = {
    "mnist": DiTConfig(hidden_size=64, depth=6, num_heads=2, stem_channels=32),
    "tiny": DiTConfig(image_size=16, hidden_size=32, depth=2, num_heads=2, zero_init=False),
    "xl": DiTConfig(
        image_size=32, in_channels=4, hidden_size=1152, depth=28, num_heads=16, num_classes=1000,
        zero_init=False,
    ),
}


def sincos_1d(dim: int, positions: Tensor) -> Tensor:
    """Classic transformer sin/cos embedding of ``positions`` (float64 for exactness), shape (len, dim)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(dim: int, h: int, w: int) -> Tensor:
    """DiT's fixed 2-D position embedding for an h x w grid in row-major token order, shape (h*w, dim).

    Computed rather than stored so one set of weights runs at any resolution (the ``xl`` preset is used
    at many image sizes) and the weight files stay small.
    """
    rows = torch.arange(h).repeat_interleave(w)
    cols = torch.arange(w).repeat(h)
    return torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of t followed by an MLP. t in [0, 1] is scaled by 1000 so the frequencies
    span the same range as DiT's integer timesteps."""

    def __init__(self, hidden_size: int, frequency_size: int = 256) -> None:
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t: Tensor) -> Tensor:
        half = self.frequency_size // 2
        exponents = torch.arange(half, device=t.device, dtype=torch.float32) / half
        freqs = torch.exp(-math.log(10000.0) * exponents)
        args = (t.float() * 1000.0)[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class Attention(nn.Module):
    """Multi-head self-attention whose core (softmax(QK^T)V) can be replaced by a hook."""

    def __init__(self, hidden_size: int, num_heads: int, layer_index: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.layer_index = layer_index
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: Tensor, attention: AttentionHook | None) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        if attention is None:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = attention(q, k, v, self.layer_index)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning (shift, scale and gate from the t+y embedding)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, layer_index: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, layer_index)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        mlp_hidden = int(hidden_size * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, mlp_hidden),
            nn.GELU(approximate="tanh"),
            nn.Linear(mlp_hidden, hidden_size),
        )
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: Tensor, c: Tensor, attention: AttentionHook | None) -> Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, 1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), attention)
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """Class-conditional DiT predicting the flow-matching velocity v = eps - x0.

    ``forward(x, t, y, attention=None)``: x (B, C, H, W) with H, W multiples of the patch size, t (B,) or a
    scalar in [0, 1] (1 = pure noise), y (B,) class indices where ``config.null_class`` means
    unconditional.
    """

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        if config.hidden_size % config.num_heads or config.head_dim % 4:
            raise ValueError(f"hidden_size {config.hidden_size} must split into heads of a multiple of 4")
        self.config = config
        p, dim = config.patch_size, config.hidden_size
        stem = config.stem_channels
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_channels, stem, 3, padding=1), nn.SiLU(),
            nn.Conv2d(stem, stem, 3, padding=1), nn.SiLU(),
        ) if stem else nn.Identity()
        self.x_embedder = nn.Conv2d(stem or config.in_channels, dim, kernel_size=p, stride=p)
        self.t_embedder = TimestepEmbedder(dim)
        self.y_embedder = nn.Embedding(config.num_classes + 1, dim)
        self.blocks = nn.ModuleList(
            DiTBlock(dim, config.num_heads, config.mlp_ratio, i) for i in range(config.depth)
        )
        self.final_layer = FinalLayer(dim, p, config.in_channels)
        self._pos_cache: dict[tuple[int, int, torch.device, torch.dtype], Tensor] = {}
        self._init_weights()

    @property
    def num_layers(self) -> int:
        return self.config.depth

    @property
    def num_heads(self) -> int:
        return self.config.num_heads

    def grid(self, x: Tensor) -> tuple[int, int, int]:
        """(t, h, w) token grid for input x, as ``TokenLayout.grid`` expects (t = 1 for images)."""
        p = self.config.patch_size
        return (1, x.shape[-2] // p, x.shape[-1] // p)

    def _init_weights(self) -> None:
        """DiT initialisation; with ``zero_init`` the adaLN gates and output start at zero (adaLN-Zero)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        w = self.x_embedder.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        nn.init.normal_(self.y_embedder.weight, std=0.02)
        for layer in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        if not self.config.zero_init:
            return
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def pos_embed(self, h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Cached (1, h*w, dim) position embedding for an h x w token grid."""
        key = (h, w, device, dtype)
        if key not in self._pos_cache:
            emb = sincos_2d(self.config.hidden_size, h, w)
            self._pos_cache[key] = emb.to(device=device, dtype=dtype).unsqueeze(0)
        return self._pos_cache[key]

    def forward(
        self, x: Tensor, t: Tensor | float, y: Tensor, attention: AttentionHook | None = None
    ) -> Tensor:
        b, _, height, width = x.shape
        p = self.config.patch_size
        if height % p or width % p:
            raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {p}")
        h, w = height // p, width // p
        tokens = self.x_embedder(self.stem(x)).flatten(2).transpose(1, 2)
        tokens = tokens + self.pos_embed(h, w, tokens.device, tokens.dtype)
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(b)
        c = self.t_embedder(t) + self.y_embedder(y)
        for block in self.blocks:
            tokens = block(tokens, c, attention)
        out = self.final_layer(tokens, c)
        out = out.reshape(b, h, w, p, p, self.config.in_channels)
        return torch.einsum("nhwpqc->nchpwq", out).reshape(b, self.config.in_channels, h * p, w * p)
