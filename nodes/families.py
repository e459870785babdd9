"""Which DiT a ComfyUI model is, which of its attention calls DiTFastAttn may compress, and where the
image tokens sit in each call.

ComfyUI's DiTs report no token layout to the attention override, and before 0.33 no block index either,
so the adapter recovers both per family from facts measured on ComfyUI 0.3.64 and 0.33 (the host memos):
the block lists that run self/joint attention (the host's ``block_type``/``block_index`` keys name them
where present, a forward pre-hook on each block tags the call elsewhere), and the order of text, image and
extra tokens in the joint sequence. A family whose layout was not verified is refused with a message
naming it and the reason, never patched on a guess: a wrong layout would silently window the text tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..ditfa_core.windows import TokenLayout

Grid = tuple[int, int, int]


class UnsupportedModel(ValueError):
    """The model is not a DiT this pack knows how to patch; the message names what it is."""


# -- where the image span starts in a call of L tokens --------------------------------------------------
# Each takes (n_tokens, n_image, n_text, n_after) and returns the image start, or None when the call does
# not fit. ``n_after`` counts tokens the forward appends after the image (``Family.appended``).


def _text_first(n: int, n_img: int, n_txt: int, n_after: int) -> int | None:
    """[txt, img, refs...]: Flux, Flux 2, Chroma, Qwen-Image (reference latents follow the image)."""
    return n_txt if n_txt + n_img <= n else None


def _image_last(n: int, n_img: int, n_txt: int, n_after: int) -> int | None:
    """[registers/txt/refs..., img, appended...]: SD3, AuraFlow, Wan (reference frames are prepended; Wan
    0.33+ appends in-context ``context_latents`` after the image), Lumina 2 / Z-Image (the image is padded
    up to a whole multiple with pad tokens after it)."""
    start = n - n_img - n_after
    return start if start >= 0 else None


def _image_first(n: int, n_img: int, n_txt: int, n_after: int) -> int | None:
    """[img, txt]: HiDream, Mochi."""
    return 0 if n >= n_img else None


def _image_then_text(n: int, n_img: int, n_txt: int, n_after: int) -> int | None:
    """[ref?, img, txt]: HunyuanVideo (the text follows the image)."""
    start = n - n_txt - n_img
    return start if start >= 0 else None


def _image_only(n: int, n_img: int, n_txt: int, n_after: int) -> int | None:
    """Self-attention over image tokens only: LTX-Video, Cosmos, PixArt."""
    return 0 if n == n_img else None


def _none_after(_dm: torch.nn.Module, _grid: Grid, _conds: dict[str, Any]) -> int:
    return 0


def _wan_after(dm: torch.nn.Module, _grid: Grid, conds: dict[str, Any]) -> int:
    """Tokens Wan (ComfyUI 0.33+) appends after the image: each in-context latent of ``context_latents``,
    patch-embedded by a stride-``patch_size`` convolution (floor division, no padding)."""
    latents = conds.get("context_latents") or ()
    pt, ph, pw = _patch(dm)
    return sum(math.prod((s[2] // pt, s[3] // ph, s[4] // pw)) for s in (tuple(lat.shape) for lat in latents))


def _lumina_after(dm: torch.nn.Module, grid: Grid, _conds: dict[str, Any]) -> int:
    """Pad tokens Z-Image (``pad_tokens_multiple``) puts after the image tokens; none for Lumina 2."""
    multiple = getattr(dm, "pad_tokens_multiple", None)
    return (-math.prod(grid)) % multiple if multiple else 0


def _one(_block: torch.nn.Module) -> int:
    return 1


def _sd3_calls(block: torch.nn.Module) -> int:
    """SD3.5's ``x_block_self_attn`` blocks run a second, image-only attention after the joint one."""
    return 2 if getattr(getattr(block, "x_block", None), "x_block_self_attn", False) else 1


def _patch(dm: torch.nn.Module) -> tuple[int, int, int]:
    """The (t, h, w) patch size, from whichever attribute the family's network uses."""
    if hasattr(dm, "patch_spatial"):  # Cosmos
        return (int(dm.patch_temporal), int(dm.patch_spatial), int(dm.patch_spatial))
    patchifier = getattr(dm, "patchifier", None)  # LTX-Video
    p: Any = patchifier.patch_size if patchifier is not None else dm.patch_size
    if isinstance(p, int):
        return (1, p, p)
    p = tuple(int(s) for s in p)
    return p if len(p) == 3 else (1, *p)


@dataclass(frozen=True)
class Family:
    """How to patch one DiT family.

    ``block_lists``  paths under ``diffusion_model`` of the ModuleLists whose blocks run compressible
                     attention, in execution order (text-only refiners are left out: they stay dense)
    ``calls``        number of compressible (query length == key length) calls per block
    ``image_start``  the image span's start in a call, from (tokens, image tokens, text tokens, appended)
    ``object_patch`` attention never reaches the override (PixArt): patch the blocks' ``attn.forward``
    ``host_types``   the ``block_type`` ComfyUI 0.33+ reports for each of ``block_lists`` ("" where it
                     reports only ``block_index``); empty where the host reports none (pre-hooks then)
    ``appended``     tokens a forward appends after the image, from (diffusion model, grid, extra conds)
    """

    name: str
    block_lists: tuple[str, ...]
    image_start: Callable[[int, int, int, int], int | None]
    calls: Callable[[torch.nn.Module], int] = _one
    object_patch: bool = False
    host_types: tuple[str, ...] = ()
    appended: Callable[[torch.nn.Module, Grid, dict[str, Any]], int] = _none_after

    def block_list(self, block_type: str | None) -> str | None:
        """The block list the host's ``block_type`` names, or None when this family does not map it."""
        key = block_type or ""
        return self.block_lists[self.host_types.index(key)] if key in self.host_types else None

    def blocks(self, dm: torch.nn.Module) -> list[tuple[str, int, torch.nn.Module]]:
        """Every (list path, index, block) that runs compressible attention, in execution order."""
        out = []
        for path in self.block_lists:
            blocks = dm
            for part in path.split("."):
                blocks = getattr(blocks, part)
            out += [(path, i, block) for i, block in enumerate(blocks)]
        return out

    def layer_bases(self, dm: torch.nn.Module) -> tuple[list[tuple[torch.nn.Module, int, int]], int]:
        """Per block (block, first layer index, calls), and the number of compressible layers (the
        plan's columns)."""
        out, n = [], 0
        for _path, _i, block in self.blocks(dm):
            calls = self.calls(block)
            out.append((block, n, calls))
            n += calls
        return out, n

    def heads(self, dm: torch.nn.Module) -> int | None:
        """Attention heads of the first compressible block: the first integer attribute named like a
        head count on it or its submodules (every supported family has one); None if none is found."""
        blocks = self.blocks(dm)
        if not blocks:
            return None
        for module in blocks[0][2].modules():
            for name in ("num_heads", "heads", "n_heads", "num_attention_heads"):
                value = getattr(module, name, None)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    return value
        return None

    def grid(self, dm: torch.nn.Module, latent_shape: Sequence[int]) -> Grid:
        """The image token grid (t, h, w) of a latent: each axis padded up to a whole patch, as every
        family's ``pad_to_patch_size`` does."""
        pt, ph, pw = _patch(dm)
        if len(latent_shape) == 5:
            t, h, w = latent_shape[2:]
        elif len(latent_shape) == 4:
            t, h, w = 1, *latent_shape[2:]
        else:
            raise UnsupportedModel(f"{self.name}: unexpected latent shape {tuple(latent_shape)}")
        return (math.ceil(t / pt), math.ceil(h / ph), math.ceil(w / pw))

    def layout(self, n_tokens: int, grid: Grid, n_text: int, n_after: int = 0) -> TokenLayout | None:
        """The token layout of a call of ``n_tokens``, or None when it does not match the family's
        measured order (the caller then computes it densely rather than guessing)."""
        start = self.image_start(n_tokens, math.prod(grid), n_text, n_after)
        if start is None:
            return None
        return TokenLayout(n_tokens, start, grid)


_FLUX = ("double_blocks", "single_blocks")

_DS = ("double", "single")

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("flux", _FLUX, _text_first, host_types=_DS),
    Family("flux2", _FLUX, _text_first, host_types=_DS),
    Family("chroma", _FLUX, _text_first, host_types=_DS),
    Family("sd3", ("joint_blocks",), _image_last, _sd3_calls),
    Family("aura_flow", ("double_layers", "single_layers"), _image_last),
    Family("qwen_image", ("transformer_blocks",), _text_first, host_types=("double",)),
    Family("hunyuan_video", _FLUX, _image_then_text, host_types=_DS),
    Family("hidream", ("double_stream_blocks", "single_stream_blocks"), _image_first),
    Family("mochi", ("blocks",), _image_first),
    Family("wan", ("blocks",), _image_last, host_types=("double",), appended=_wan_after),
    Family("lumina2", ("layers",), _image_last, host_types=("double",), appended=_lumina_after),
    Family("ltxv", ("transformer_blocks",), _image_only),
    Family("cosmos_predict2", ("blocks",), _image_only, host_types=("",)),
    Family("pixart", ("blocks",), _image_only, object_patch=True),
)}

# model_base class name -> family. Exact class names: a subclass (Wan VACE/S2V/Animate, Chroma Radiance,
# HunyuanVideo I2V / 1.5, HunyuanImage) adds token streams or attention paths; each is listed in _REFUSED
# with what was not verified until a tiny model of its host class shows its layout.
_BY_CLASS: dict[str, str] = {
    "Flux": "flux",
    "Flux2": "flux2",                 # ComfyUI 0.33+: Flux 2 / Klein, the Flux network with Flux 2 params
    "Chroma": "chroma",
    "SD3": "sd3",
    "AuraFlow": "aura_flow",
    "QwenImage": "qwen_image",        # also Qwen-Image Edit 2509/2511
    "HunyuanVideo": "hunyuan_video",
    "HiDream": "hidream",
    "GenmoMochi": "mochi",
    "WAN21": "wan",
    "WAN22": "wan",
    "Lumina2": "lumina2",             # also Z-Image (ComfyUI builds Z-Image as a Lumina2 model)
    "LTXV": "ltxv",
    "CosmosPredict2": "cosmos_predict2",
    "PixArt": "pixart",
}

_NOT_VERIFIED = ("was not verified on a tiny model of the host class, so the image span of its calls is "
                 "unknown")

_REFUSED: dict[str, str] = {
    "ChromaRadiance": "its pixel-space patching (no img_in, NeRF head) " + _NOT_VERIFIED,
    "HunyuanDiT": "its attention never reaches ComfyUI's attention override",
    "HunyuanVideo15": "HunyuanVideo 1.5's token order (ByT5 glyph and vision tokens around the image) "
                      + _NOT_VERIFIED,
    "HunyuanVideoI2V": "its image-conditioning tokens " + _NOT_VERIFIED,
    "HunyuanVideoSkyreelsI2V": "its image-conditioning tokens " + _NOT_VERIFIED,
    "WAN22_S2V": "Wan 2.2 S2V appends reference and motion-frame tokens after the video and injects audio "
                 "with its own attention calls; that layout " + _NOT_VERIFIED,
    "WAN21_HuMo": "HuMo appends reference tokens and adds audio attention; that layout " + _NOT_VERIFIED,
    "WAN22_Animate": "its face-adapter attention path " + _NOT_VERIFIED,
    "WAN_Animate2": "Wan Animate 2's pose/face token streams " + _NOT_VERIFIED,
    "WAN21_Vace": "its VACE blocks add attention calls over the control video, and their block index "
                  + _NOT_VERIFIED,
    "WAN21_Camera": "its camera-control path " + _NOT_VERIFIED,
    "WAN21_CausalAR": "causal autoregressive Wan attends with a causal mask over frame chunks; windows and "
                      "step caches assume bidirectional attention",
    "ZImagePixelSpace": "Z-Image's pixel-space patching " + _NOT_VERIFIED,
    "LTXAV": "LTX-2 runs separate audio and video token streams with audio-video cross-attention; the audio "
             "stream's grid " + _NOT_VERIFIED,
    "Kandinsky5": "Kandinsky 5's visual blocks " + _NOT_VERIFIED,
    "Kandinsky5Image": "Kandinsky 5's visual blocks " + _NOT_VERIFIED,
    "HunyuanImage21": "its image tokens and refiner " + _NOT_VERIFIED,
    "CosmosVideo": "Cosmos 1's output layout was not verified (Cosmos Predict2 is supported)",
}


def detect(patcher: Any) -> Family:
    """The family of a ModelPatcher's model; raises ``UnsupportedModel`` naming the model otherwise."""
    model = patcher.model
    cls = type(model).__name__
    dm_cls = type(getattr(model, "diffusion_model", None)).__name__
    name = _BY_CLASS.get(cls)
    if name is not None:
        return FAMILIES[name]
    why = _REFUSED.get(cls, "it is not one of the supported Diffusion Transformers")
    supported = ", ".join(sorted(FAMILIES))
    raise UnsupportedModel(
        f"DiTFastAttn does not support this model ({cls} / {dm_cls}): {why}. Supported families: {supported}."
    )
