"""Tiny random-weight ComfyUI models, one factory per DiT family, for CPU integration tests.

Each factory builds the real ComfyUI class (``comfy.supported_models.<X>(cfg).get_model({})``), so forwards
run through the genuine blocks, wrappers and attention call sites the pack patches; only the sizes are tiny.
ComfyUI allocates weights with ``torch.empty`` (``comfy.ops.disable_weight_init``), hence the seeded fill of
``diffusion_model`` parameters. ``model_sampling`` buffers hold the sigma table and are left alone.

Call :func:`comfy_host.bootstrap_comfyui` (or ``require_comfyui``) before using anything here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

#: A ComfyUI conditioning list: ``[[cross_attn_tensor, {extra cond kwargs}], ...]``.
Conditioning = list[list[Any]]


@dataclass
class TinyModel:
    """A ready-to-sample tiny model and matching inputs.

    ``overrides_attention`` is False for families whose attention never reaches
    ``transformer_options["optimized_attention_override"]`` (PixArt): tests of the override path skip them.
    """

    family: str
    patcher: Any  # comfy.model_patcher.ModelPatcher (not imported at module level: ComfyUI may be absent)
    latent: torch.Tensor
    positive: Conditioning
    negative: Conditioning
    overrides_attention: bool = True
    notes: dict[str, Any] = field(default_factory=dict)

    def sample(self, **kwargs: Any) -> torch.Tensor:
        """Run :func:`sample` on this model's own latent and conditioning."""
        return sample(self.patcher, self.latent, self.positive, self.negative, **kwargs)


def init_weights(module: torch.nn.Module, seed: int = 0) -> None:
    """Fill every parameter of ``module`` deterministically from ``seed``.

    Matrices get N(0, 1/fan_in) so activations keep unit scale through the stack (attention stays
    non-degenerate, which the pattern tests need); 1-D weights/scales are ~1 (norm gains), other 1-D
    tensors (biases, embeddings) ~0.02. Iteration follows ``named_parameters`` order, which is stable.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            values = torch.randn(param.shape, generator=gen, dtype=torch.float32)
            if param.ndim >= 2:
                fan_in = max(1, param[0].numel())
                values = values / math.sqrt(fan_in)
            elif name.endswith(("weight", "scale")):
                values = 1.0 + 0.02 * values
            else:
                values = 0.02 * values
            param.copy_(values.to(param.dtype))


def _build(
    model_config: Any, seed: int, buffers: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None
) -> Any:
    """Instantiate ``model_config``'s model on CPU, fill it, and wrap it in a ModelPatcher.

    ``buffers`` maps ``diffusion_model`` buffer names to a function giving their value from the empty
    buffer. It is for buffers that checkpoints supply and the constructor leaves as ``torch.empty`` (SD3's
    ``pos_embed``): garbage memory there made SD3 output NaN depending on what the allocator reused.
    Computed buffers (Cosmos' RoPE ranges) must not be listed.
    """
    import comfy.model_patcher

    model = model_config.get_model({})
    init_weights(model.diffusion_model, seed)
    named = dict(model.diffusion_model.named_buffers())
    with torch.no_grad():
        for name, make in (buffers or {}).items():
            named[name].copy_(make(named[name]).to(named[name].dtype))
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def _with_new_fields(params: type, cfg: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """``cfg`` plus those of ``fields`` that this host's params dataclass declares.

    Later ComfyUI versions add required fields to a family's params (Flux ``txt_ids_dims`` in 0.33); the
    values given here are the ones ``model_detection`` picks for the classic checkpoints, so one tiny config
    builds the same network on every host.
    """
    import dataclasses

    declared = {f.name for f in dataclasses.fields(params)}
    return {**cfg, **{k: v for k, v in fields.items() if k in declared}}


def _text(gen: torch.Generator, length: int, dim: int) -> torch.Tensor:
    """A (1, length, dim) stand-in for text-encoder output."""
    return torch.randn(1, length, dim, generator=gen)


def _mask(length: int, valid: int) -> torch.Tensor:
    """A (1, length) long attention mask with the first ``valid`` tokens on."""
    mask = torch.zeros(1, length, dtype=torch.long)
    mask[:, :valid] = 1
    return mask


def _conds(
    gen: torch.Generator,
    cond_len: int,
    uncond_len: int | None,
    dim: int,
    extra: Callable[[int], dict[str, Any]] | None = None,
) -> tuple[Conditioning, Conditioning]:
    """Positive and negative conditioning; ``extra(length)`` supplies per-entry kwargs (pooled, masks...)."""
    lengths = (cond_len, cond_len if uncond_len is None else uncond_len)
    out = []
    for length in lengths:
        out.append([[_text(gen, length, dim), extra(length) if extra else {}]])
    return out[0], out[1]


def _pooled(gen: torch.Generator, dim: int) -> Callable[[int], dict[str, Any]]:
    """Extra-cond factory adding a random ``pooled_output`` of width ``dim``."""
    return lambda _length: {"pooled_output": torch.randn(1, dim, generator=gen)}


def _masked(_length: int) -> dict[str, Any]:
    """Extra-cond factory: attention mask with the last token padded (exercises masked attention)."""
    return {"attention_mask": _mask(_length, max(1, _length - 1))}


def make_flux(seed: int = 0, cond_len: int = 6, uncond_len: int | None = None, heads: int = 2) -> TinyModel:
    """Flux: double blocks then single blocks, joint [txt, img] attention; ``heads`` of width 32 (the sum
    of ``axes_dim``, which Flux's RoPE requires)."""
    import comfy.supported_models as sm
    from comfy.ldm.flux.model import FluxParams

    cfg = dict(image_model="flux", guidance_embed=True, in_channels=16, out_channels=16, vec_in_dim=32,
               context_in_dim=32, hidden_size=32 * heads, mlp_ratio=2.0, num_heads=heads, depth=2,
               depth_single_blocks=2,
               axes_dim=[8, 12, 12], theta=10000, patch_size=2, qkv_bias=True)
    cfg = _with_new_fields(FluxParams, cfg, txt_ids_dims=[])
    gen = torch.Generator().manual_seed(seed + 1)
    pooled = _pooled(gen, 32)
    pos, neg = _conds(gen, cond_len, uncond_len, 32, lambda n: {**pooled(n), "guidance": 3.5})
    return TinyModel("flux", _build(sm.Flux(cfg), seed), torch.zeros(1, 16, 8, 12), pos, neg)


def make_sd3(seed: int = 0, cond_len: int = 7, uncond_len: int | None = None, heads: int = 2) -> TinyModel:
    """SD3.5-style MMDiT with ``x_block_self_attn`` on layer 0 (an extra image-only attention call).

    ComfyUI's MMDiT ties its width to ``depth`` (``depth`` heads of 64): ``heads`` sets ``depth`` while
    ``num_blocks`` keeps two joint blocks."""
    import comfy.supported_models as sm

    cfg = dict(in_channels=16, pos_embed_scaling_factor=None, patch_size=2, out_channels=16, depth=heads,
               num_blocks=2, input_size=None, adm_in_channels=32,
               context_embedder_config={"target": "torch.nn.Linear",
                                        "params": {"in_features": 32, "out_features": 64 * heads}},
               num_patches=256, pos_embed_max_size=16, qk_norm="rms", x_block_self_attn_layers=[0])
    gen = torch.Generator().manual_seed(seed + 1)
    pos, neg = _conds(gen, cond_len, uncond_len, 32, _pooled(gen, 32))
    model = _build(sm.SD3(cfg), seed, {"pos_embed": _sincos_2d})
    return TinyModel("sd3", model, torch.zeros(1, 16, 8, 12), pos, neg)


def _sincos_2d(buffer: torch.Tensor) -> torch.Tensor:
    """SD3's fixed 2-D sin-cos table (what checkpoints store) for a (1, side*side, dim) ``pos_embed``."""
    from comfy.ldm.modules.diffusionmodules.mmdit import get_2d_sincos_pos_embed

    side = math.isqrt(buffer.shape[1])
    return torch.from_numpy(get_2d_sincos_pos_embed(buffer.shape[2], side)).reshape(buffer.shape)


def _pixart(family: str, seed: int, cond_len: int, uncond_len: int | None) -> TinyModel:
    """PixArt alpha/sigma share the network; alpha adds the size/aspect micro-conditions."""
    import comfy.supported_models as sm

    alpha = family == "pixart_alpha"
    # alpha embeds c_size/c_ar into hidden_size // 3 channels each, so its width must be a multiple of 3
    cfg = dict(image_model=family, patch_size=2, in_channels=4, hidden_size=96 if alpha else 64, depth=2,
               num_heads=2,
               caption_channels=32, model_max_length=8, input_size=32, pe_interpolation=0.5,
               micro_condition=alpha)
    gen = torch.Generator().manual_seed(seed + 1)
    latent = torch.zeros(1, 4, 32, 48)  # PixArtMS needs >= ~32 latent px per side (base_size > 0)
    size = {"width": 48 * 8, "height": 32 * 8} if alpha else {}
    pos, neg = _conds(gen, cond_len, uncond_len, 32, lambda _n: dict(size))
    model_config = sm.PixArtAlpha(cfg) if alpha else sm.PixArtSigma(cfg)
    # y_embedding (the learned null caption) is drawn from the global RNG in __init__: reseed it
    null_gen = torch.Generator().manual_seed(seed + 2)
    null_caption = {"y_embedder.y_embedding": lambda b: torch.randn(b.shape, generator=null_gen)}
    model = _build(model_config, seed, null_caption)
    return TinyModel(family, model, latent, pos, neg, overrides_attention=False)


def make_pixart_sigma(seed: int = 0, cond_len: int = 8, uncond_len: int | None = None) -> TinyModel:
    """PixArt-Sigma: self + cross attention; never reaches the attention override (object patch only)."""
    return _pixart("pixart_sigma", seed, cond_len, uncond_len)


def make_pixart_alpha(seed: int = 0, cond_len: int = 8, uncond_len: int | None = None) -> TinyModel:
    """PixArt-Alpha: as Sigma plus ``c_size``/``c_ar`` micro-conditions from the cond's width/height."""
    return _pixart("pixart_alpha", seed, cond_len, uncond_len)


def make_wan21_t2v(seed: int = 0, cond_len: int = 8, uncond_len: int | None = None) -> TinyModel:
    """Wan 2.1 T2V: per block self-attention over (f h w) video tokens, then text cross-attention."""
    import comfy.supported_models as sm

    cfg = dict(image_model="wan2.1", model_type="t2v", patch_size=(1, 2, 2), text_len=8, in_dim=16, dim=64,
               ffn_dim=128, freq_dim=32, text_dim=32, out_dim=16, num_heads=2, num_layers=2)
    gen = torch.Generator().manual_seed(seed + 1)
    pos, neg = _conds(gen, cond_len, uncond_len, 32)
    return TinyModel("wan21_t2v", _build(sm.WAN21_T2V(cfg), seed), torch.zeros(1, 16, 3, 8, 12), pos, neg)


def make_qwen_image(seed: int = 0, cond_len: int = 5, uncond_len: int | None = None,
                    heads: int = 2) -> TinyModel:
    """Qwen-Image: joint [txt, img] blocks of ``heads`` heads of 32; the latent is 5-D (B, 16, 1, H, W)."""
    import comfy.supported_models as sm

    cfg = dict(image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16, num_layers=2,
               attention_head_dim=32, num_attention_heads=heads, joint_attention_dim=32,
               axes_dims_rope=(8, 12, 12))
    gen = torch.Generator().manual_seed(seed + 1)
    pos, neg = _conds(gen, cond_len, uncond_len, 32)
    return TinyModel("qwen_image", _build(sm.QwenImage(cfg), seed), torch.zeros(1, 16, 1, 8, 12), pos, neg)


def make_hunyuan_video(seed: int = 0, cond_len: int = 5, uncond_len: int | None = None) -> TinyModel:
    """HunyuanVideo: text-only token refiner, then joint [img, txt] double and single blocks."""
    import comfy.supported_models as sm
    from comfy.ldm.hunyuan_video.model import HunyuanVideoParams

    cfg = dict(image_model="hunyuan_video", in_channels=16, out_channels=16, vec_in_dim=32,
               context_in_dim=32, hidden_size=64, mlp_ratio=2.0, num_heads=2, depth=2, depth_single_blocks=2,
               axes_dim=[8, 12, 12], theta=256, patch_size=[1, 2, 2], qkv_bias=True, guidance_embed=True,
               byt5=False, meanflow=False)
    cfg = _with_new_fields(HunyuanVideoParams, cfg, use_cond_type_embedding=False, vision_in_dim=None,
                           meanflow_sum=False)
    gen = torch.Generator().manual_seed(seed + 1)
    pos, neg = _conds(gen, cond_len, uncond_len, 32, _pooled(gen, 32))
    model = _build(sm.HunyuanVideo(cfg), seed)
    return TinyModel("hunyuan_video", model, torch.zeros(1, 16, 2, 8, 12), pos, neg)


def make_ltxv(seed: int = 0, cond_len: int = 5, uncond_len: int | None = None) -> TinyModel:
    """LTX-Video: attn1 self over (f h w) tokens, attn2 masked text cross-attention (mask is required)."""
    import comfy.supported_models as sm

    cfg = dict(image_model="ltxv", in_channels=128, cross_attention_dim=64, attention_head_dim=32,
               num_attention_heads=2, caption_channels=32, num_layers=2)
    gen = torch.Generator().manual_seed(seed + 1)
    pos, neg = _conds(gen, cond_len, uncond_len, 32, _masked)
    return TinyModel("ltxv", _build(sm.LTXV(cfg), seed), torch.zeros(1, 128, 2, 4, 6), pos, neg)


def make_lumina2(seed: int = 0, cond_len: int = 5, uncond_len: int | None = 7) -> TinyModel:
    """Lumina2: context refiner (txt), noise refiner (img), joint [cap, img] layers; mask gives num_tokens.

    The negative defaults to another text length: ComfyUI 0.3.64 builds Lumina's joint mask as (B, L), which
    neither the CPU (sub-quadratic) nor the SDPA backend broadcasts when B > 1, so cond and uncond must not
    share a batch (real, unpadded Gemma prompts rarely have equal lengths anyway).
    """
    import comfy.supported_models as sm

    cfg = dict(image_model="lumina2", patch_size=2, in_channels=16, dim=64, n_layers=2, n_refiner_layers=1,
               n_heads=2, n_kv_heads=2, multiple_of=16, cap_feat_dim=32, axes_dims=(8, 12, 12),
               axes_lens=(300, 64, 64), qk_norm=True)
    gen = torch.Generator().manual_seed(seed + 1)
    pos, neg = _conds(gen, cond_len, uncond_len, 32, _masked)
    return TinyModel("lumina2", _build(sm.Lumina2(cfg), seed), torch.zeros(1, 16, 8, 12), pos, neg)


def make_chroma(seed: int = 0, cond_len: int = 5, uncond_len: int | None = None) -> TinyModel:
    """Chroma: Flux-like [txt, img] joint attention with a distilled-guidance approximator."""
    import comfy.supported_models as sm
    from comfy.ldm.chroma.model import ChromaParams

    cfg = dict(image_model="chroma", in_channels=64, out_channels=64, context_in_dim=32, hidden_size=64,
               mlp_ratio=2.0, num_heads=2, depth=2, depth_single_blocks=2, axes_dim=[8, 12, 12], theta=10000,
               patch_size=2, qkv_bias=True, in_dim=64, out_dim=64, hidden_dim=64, n_layers=1)
    cfg = _with_new_fields(ChromaParams, cfg, txt_ids_dims=[], vec_in_dim=None)
    gen = torch.Generator().manual_seed(seed + 1)
    pos, neg = _conds(gen, cond_len, uncond_len, 32, _pooled(gen, 32))
    return TinyModel("chroma", _build(sm.Chroma(cfg), seed), torch.zeros(1, 16, 8, 12), pos, neg)


def make_aura_flow(seed: int = 0, cond_len: int = 5, uncond_len: int | None = None) -> TinyModel:
    """AuraFlow: double then single layers, joint [8 registers + txt, img]."""
    import comfy.supported_models as sm

    cfg = dict(cond_seq_dim=32, in_channels=4, out_channels=4, patch_size=2, dim=64, n_layers=3,
               n_double_layers=1, n_heads=2, global_conddim=64, max_seq=64)
    gen = torch.Generator().manual_seed(seed + 1)
    pos, neg = _conds(gen, cond_len, uncond_len, 32)
    return TinyModel("aura_flow", _build(sm.AuraFlow(cfg), seed), torch.zeros(1, 4, 8, 12), pos, neg)


def make_hidream(seed: int = 0, cond_len: int = 4, uncond_len: int | None = None) -> TinyModel:
    """HiDream: MoE double then single blocks, joint [img, t5 + llama_i]; llama is (B, layers, L, C)."""
    import comfy.supported_models as sm

    n_double, n_single = 1, 1
    cfg = dict(image_model="hidream", patch_size=2, in_channels=16, out_channels=16, num_layers=n_double,
               num_single_layers=n_single, attention_head_dim=32, num_attention_heads=2,
               caption_channels=[32, 24], text_emb_dim=32, num_routed_experts=2, num_activated_experts=1,
               axes_dims_rope=(8, 12, 12), max_resolution=(32, 32), llama_layers=[0, 1])
    gen = torch.Generator().manual_seed(seed + 1)

    def extra(length: int) -> dict[str, Any]:
        return {"pooled_output": torch.randn(1, 32, generator=gen),
                "conditioning_llama3": torch.randn(1, 2, length, 24, generator=gen)}

    pos, neg = _conds(gen, cond_len, uncond_len, 32, extra)
    return TinyModel("hidream", _build(sm.HiDream(cfg), seed), torch.zeros(1, 16, 8, 12), pos, neg)


def make_cosmos_predict2(seed: int = 0, cond_len: int = 6, uncond_len: int | None = None) -> TinyModel:
    """Cosmos Predict2 (MiniTrainDIT): per block self-attention over (t h w), then text cross-attention."""
    import comfy.supported_models as sm

    cfg = dict(image_model="cosmos_predict2", max_img_h=32, max_img_w=32, max_frames=8, in_channels=16,
               out_channels=16, patch_spatial=2, patch_temporal=1, model_channels=64, num_blocks=2,
               num_heads=2, crossattn_emb_channels=32, concat_padding_mask=True, pos_emb_cls="rope3d",
               pos_emb_learnable=True, pos_emb_interpolation="crop", min_fps=1, max_fps=30,
               use_adaln_lora=True, adaln_lora_dim=16, extra_per_block_abs_pos_emb=False,
               rope_h_extrapolation_ratio=1.0, rope_w_extrapolation_ratio=1.0, rope_t_extrapolation_ratio=1.0)
    gen = torch.Generator().manual_seed(seed + 1)
    pos, neg = _conds(gen, cond_len, uncond_len, 32)
    model = _build(sm.CosmosT2IPredict2(cfg), seed)
    return TinyModel("cosmos_predict2", model, torch.zeros(1, 16, 2, 8, 12), pos, neg)


def make_mochi(seed: int = 0, cond_len: int = 6, uncond_len: int | None = None) -> TinyModel:
    """Genmo Mochi: asymmetric joint [img, txt] blocks; text mask required (gives num_tokens)."""
    import comfy.supported_models as sm

    # AsymmetricJointBlock asserts hidden_size_x * mlp_ratio_x == 1536 * 8, hence the odd ratio
    cfg = dict(image_model="mochi_preview", depth=2, patch_size=2, num_heads=2, hidden_size_x=64,
               hidden_size_y=32, mlp_ratio_x=1536 * 8 / 64, mlp_ratio_y=4.0, learn_sigma=False,
               in_channels=12, qk_norm=True, qkv_bias=False, out_bias=True, attn_drop=0.0,
               patch_embed_bias=True, posenc_preserve_area=True, timestep_mlp_bias=True,
               attend_to_padding=False, timestep_scale=1000.0, use_t5=True, t5_feat_dim=32,
               t5_token_length=cond_len, rope_theta=10000.0)
    gen = torch.Generator().manual_seed(seed + 1)
    pos, neg = _conds(gen, cond_len, uncond_len, 32, _masked)
    return TinyModel("mochi", _build(sm.GenmoMochi(cfg), seed), torch.zeros(1, 12, 2, 8, 12), pos, neg)


def _all_valid(length: int) -> dict[str, Any]:
    """Extra-cond factory: an attention mask that keeps every token (an unpadded prompt)."""
    return {"attention_mask": _mask(length, length)}


def make_lumina2_unpadded(seed: int = 0, cond_len: int = 5, uncond_len: int | None = 7) -> TinyModel:
    """Lumina 2 with unpadded prompts: its joint calls carry a mask that keeps every key."""
    tiny = make_lumina2(seed, cond_len, uncond_len)
    gen = torch.Generator().manual_seed(seed + 1)
    tiny.positive, tiny.negative = _conds(gen, cond_len, uncond_len, 32, _all_valid)
    tiny.family = "lumina2_unpadded"
    return tiny


def make_z_image(seed: int = 0, cond_len: int = 5, uncond_len: int | None = 7) -> TinyModel:
    """Z-Image (ComfyUI 0.33+): a Lumina 2 network with Z-Image modulation; caption and image tokens are
    padded to a multiple of 32 with learned pad tokens, the image's padding after the image."""
    import comfy.supported_models as sm

    # Z-Image modulation embeds the timestep in 256 channels, so the width is at least 256
    cfg = dict(image_model="lumina2", patch_size=2, in_channels=16, dim=256, n_layers=2, n_refiner_layers=1,
               n_heads=2, n_kv_heads=2, multiple_of=16, cap_feat_dim=32, axes_dims=(32, 48, 48),
               axes_lens=(300, 64, 64), qk_norm=True, rope_theta=256.0, ffn_dim_multiplier=8.0 / 3.0,
               z_image_modulation=True, time_scale=1000.0, pad_tokens_multiple=32)
    gen = torch.Generator().manual_seed(seed + 1)
    pos, neg = _conds(gen, cond_len, uncond_len, 32)
    return TinyModel("z_image", _build(sm.ZImage(cfg), seed), torch.zeros(1, 16, 8, 10), pos, neg)


def make_flux2(seed: int = 0, cond_len: int = 6, uncond_len: int | None = None) -> TinyModel:
    """Flux 2 (ComfyUI 0.33+): the Flux network with Flux 2 params (patch 1 on 128-channel latents, global
    modulation, text padded to 512 tokens by the model's extra_conds), [txt, img] joint attention."""
    import comfy.supported_models as sm

    cfg = dict(image_model="flux2", guidance_embed=True, in_channels=128, out_channels=128, vec_in_dim=None,
               context_in_dim=32, hidden_size=64, mlp_ratio=3.0, num_heads=2, depth=2, depth_single_blocks=2,
               axes_dim=[8, 8, 8, 8], theta=2000, patch_size=1, qkv_bias=False, txt_ids_dims=[3],
               global_modulation=True, mlp_silu_act=True, ops_bias=False, default_ref_method="index",
               ref_index_scale=10.0)
    gen = torch.Generator().manual_seed(seed + 1)
    pos, neg = _conds(gen, cond_len, uncond_len, 32, lambda _n: {"guidance": 3.5})
    return TinyModel("flux2", _build(sm.Flux2(cfg), seed), torch.zeros(1, 128, 4, 6), pos, neg)


#: Families only ComfyUI 0.33+ has (``comfy.supported_models`` class name -> factory).
FACTORIES_2026: dict[str, tuple[str, Callable[..., TinyModel]]] = {
    "flux2": ("Flux2", make_flux2),
    "z_image": ("ZImage", make_z_image),
}


def host_has(supported_model: str) -> bool:
    """Whether the bootstrapped ComfyUI has this ``comfy.supported_models`` class."""
    import comfy.supported_models as sm

    return hasattr(sm, supported_model)


#: Every factory by family name. All take ``(seed=0, cond_len=..., uncond_len=None)``; ``uncond_len`` gives
#: the negative a different text length (which forces cond and uncond into separate forwards); the MMDiT
#: factories (``flux``, ``sd3``, ``qwen_image``) also take ``heads=2``.
FACTORIES: dict[str, Callable[..., TinyModel]] = {
    "flux": make_flux,
    "sd3": make_sd3,
    "pixart_sigma": make_pixart_sigma,
    "pixart_alpha": make_pixart_alpha,
    "wan21_t2v": make_wan21_t2v,
    "qwen_image": make_qwen_image,
    "hunyuan_video": make_hunyuan_video,
    "ltxv": make_ltxv,
    "lumina2": make_lumina2,
    "chroma": make_chroma,
    "aura_flow": make_aura_flow,
    "hidream": make_hidream,
    "cosmos_predict2": make_cosmos_predict2,
    "mochi": make_mochi,
    "lumina2_unpadded": make_lumina2_unpadded,
}


def make_model(family: str, **kwargs: Any) -> TinyModel:
    """Build the tiny model of ``family`` (a key of :data:`FACTORIES`)."""
    if family in FACTORIES_2026:
        return FACTORIES_2026[family][1](**kwargs)
    try:
        factory = FACTORIES[family]
    except KeyError:
        raise KeyError(f"unknown family {family!r}; known: {sorted(FACTORIES)}") from None
    return factory(**kwargs)


def sample(
    patcher: Any,
    latent: torch.Tensor,
    positive: Conditioning,
    negative: Conditioning,
    *,
    sampler: str = "euler",
    scheduler: str = "simple",
    steps: int = 3,
    cfg: float = 4.0,
    seed: int = 0,
    denoise: float = 1.0,
    callback: Callable[..., None] | None = None,
) -> torch.Tensor:
    """Sample like KSampler does (``comfy.sample.sample`` with seeded noise), without a progress bar."""
    import comfy.sample

    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(
        patcher, noise, steps, cfg, sampler, scheduler, positive, negative, latent,
        denoise=denoise, callback=callback, disable_pbar=True, seed=seed,
    )
