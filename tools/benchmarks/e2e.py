"""End to end through real ComfyUI: unpatched vs DiTFastAttn Apply vs core EasyCache.

The models are ComfyUI's own classes (``comfy.supported_models``) at real geometry with random weights
(time does not depend on the weights' values): PixArt-Sigma-XL at 1K and 2K, Flux at 1K and 2K, Wan 2.1
T2V 1.3B at 480p x 81 frames (and x 17 frames, a clip a CPU can time). The pack is loaded as ComfyUI
loads it (a package under its folder's name, ``tests/comfy_host.load_pack``) and applied through its
node, ``DiTFastAttnApply``, so every hook and wrapper of ``nodes/`` is on the measured path. Plans are
synthesised to the attention FLOPs of the paper's D1-D6 plans (Table 1; OpenSora's five for video) by
``synthesise_grid``.

Needs a ComfyUI 0.3.64+ checkout (``COMFYUI_PATH``) and this repository's ``tests/`` (the headless
bootstrap). Full depth at real geometry needs a GPU; ``--depth`` keeps a few blocks of the real width,
heads and tokens for a CPU; ``--smoke`` runs the same classes at toy sizes.

Fairness: every configuration runs on the same dense kernel (torch SDPA, see ``dense_kernel``; the
host's own default is measured beside it when it differs), configurations are interleaved round by
round, latencies are medians with their range, and EasyCache is forced to skip by default so that its
combination with a plan measures something on random weights. ``forwards`` counts the transformer
forwards a run really made; peak memory is the allocator's (CUDA) or the resident set's (CPU) peak.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gc
import importlib
import logging
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from ditfa_core.flops import plan_flops_fraction
from ditfa_core.strategies import Strategy
from ditfa_core.windows import KINDS, TokenLayout, WindowSpec

from .common import markdown_table

log = logging.getLogger(__name__)

TESTS_DIR = Path(__file__).resolve().parents[2] / "tests"

# Attention FLOPs fractions of the paper's plans D1..D6 (Table 1) and OpenSora's (§4.3, five values).
PIXART_1K = (0.90, 0.74, 0.63, 0.52, 0.44, 0.37)
PIXART_2K = (0.81, 0.60, 0.46, 0.36, 0.29, 0.24)
OPENSORA = (0.9237, 0.805, 0.6984, 0.6234, 0.5948)


@dataclass(frozen=True)
class ModelSpec:
    """One ComfyUI model at one geometry: its supported_models class and unet config, its inputs."""

    config_class: str
    unet: dict[str, Any]
    latent: tuple[int, ...]
    text: tuple[int, int]                 # (tokens, width) of the text-encoder output
    heads: int
    targets: tuple[float, ...]            # attention FLOPs fractions of D1, D2, ...
    cfg: float
    extra: dict[str, Any] = field(default_factory=dict)   # per-cond kwargs besides the text
    pooled: int = 0                       # width of a pooled text vector, 0 = none
    joint_text: bool = False              # the text tokens are in the self-attention sequence (MMDiT)


def _pixart(input_size: int, hidden: int, depth: int, heads: int, caption: int, text: int) -> dict[str, Any]:
    return dict(image_model="pixart_sigma", patch_size=2, in_channels=4, hidden_size=hidden, depth=depth,
                num_heads=heads, caption_channels=caption, model_max_length=text, input_size=input_size,
                pe_interpolation=input_size / 64, micro_condition=False)


def _flux(hidden: int, heads: int, depth: int, single: int, axes: list[int], vec: int, ctx: int) -> dict:
    return dict(image_model="flux", guidance_embed=True, in_channels=16, out_channels=16, vec_in_dim=vec,
                context_in_dim=ctx, hidden_size=hidden, mlp_ratio=4.0, num_heads=heads, depth=depth,
                depth_single_blocks=single, axes_dim=axes, theta=10000, patch_size=2, qkv_bias=True)


def _wan(dim: int, ffn: int, freq: int, heads: int, layers: int, text: int, text_dim: int) -> dict[str, Any]:
    return dict(image_model="wan2.1", model_type="t2v", patch_size=(1, 2, 2), text_len=text, in_dim=16,
                dim=dim, ffn_dim=ffn, freq_dim=freq, text_dim=text_dim, out_dim=16, num_heads=heads,
                num_layers=layers)


# Flux-dev is guidance-distilled and runs without CFG (cfg 1: one forward per step, no ASC cells).
MODELS: dict[str, ModelSpec] = {
    "pixart_sigma_1k": ModelSpec("PixArtSigma", _pixart(128, 1152, 28, 16, 4096, 300), (1, 4, 128, 128),
                                 (300, 4096), 16, PIXART_1K, 4.5),
    "pixart_sigma_2k": ModelSpec("PixArtSigma", _pixart(256, 1152, 28, 16, 4096, 300), (1, 4, 256, 256),
                                 (300, 4096), 16, PIXART_2K, 4.5),
    "flux_1k": ModelSpec("Flux", _flux(3072, 24, 19, 38, [16, 56, 56], 768, 4096), (1, 16, 128, 128),
                         (512, 4096), 24, PIXART_1K, 1.0, {"guidance": 3.5}, pooled=768, joint_text=True),
    "flux_2k": ModelSpec("Flux", _flux(3072, 24, 19, 38, [16, 56, 56], 768, 4096), (1, 16, 256, 256),
                         (512, 4096), 24, PIXART_2K, 1.0, {"guidance": 3.5}, pooled=768, joint_text=True),
    "wan21_1.3b_480p": ModelSpec("WAN21_T2V", _wan(1536, 8960, 256, 12, 30, 512, 4096), (1, 16, 21, 60, 104),
                                 (512, 4096), 12, OPENSORA, 5.0),
    # A short clip (17 frames: 5 latent frames) at the same 480p: what a CPU can time at real width.
    "wan21_1.3b_480p_17f": ModelSpec("WAN21_T2V", _wan(1536, 8960, 256, 12, 30, 512, 4096),
                                     (1, 16, 5, 60, 104), (512, 4096), 12, OPENSORA, 5.0),
}

# The same classes at toy sizes (the geometry of tests/comfy_models.py), for --smoke on a CPU.
SMOKE_MODELS: dict[str, ModelSpec] = {
    "pixart_sigma_smoke": ModelSpec("PixArtSigma", _pixart(32, 64, 2, 2, 32, 8), (1, 4, 32, 48), (8, 32), 2,
                                    PIXART_2K, 4.5),
    "flux_smoke": ModelSpec("Flux", _flux(64, 2, 2, 2, [8, 12, 12], 32, 32), (1, 16, 8, 12), (6, 32), 2,
                            PIXART_2K, 1.0, {"guidance": 3.5}, pooled=32, joint_text=True),
    "wan21_smoke": ModelSpec("WAN21_T2V", _wan(64, 128, 32, 2, 2, 8, 32), (1, 16, 3, 8, 12), (8, 32), 2,
                             OPENSORA, 5.0),
}

SMOKE = {"models": list(SMOKE_MODELS), "steps": 4, "levels": ["D1", "D6"], "repeats": 2}

FORCED_SKIP = 1e9
"""EasyCache reuse_threshold that skips every step it may (15-95% of the schedule): on random weights
the real default (0.2) skipped nothing, which measured only EasyCache's overhead."""

COLUMNS = [("model", "model"), ("config", "config"), ("tokens", "image tokens"), ("steps", "steps"),
           ("forwards", "forwards"), ("plan_flops", "plan FLOPs"), ("engine_flops", "engine FLOPs"),
           ("repeats", "runs"), ("latency_s", "latency s"), ("latency_range", "range s"),
           ("speedup", "speedup"), ("attention_s", "attention s"), ("attention_share", "attn share"),
           ("attention_speedup", "attn speedup"), ("amdahl", "Amdahl bound"), ("peak_mib", "peak MiB"),
           ("extra_mib", "+MiB vs unpatched"), ("note", "note")]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    names = [*MODELS, *SMOKE_MODELS]
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=names)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, help="default: the model's (PixArt 4.5, Flux 1, Wan 5)")
    levels = [f"D{i}" for i in range(1, 7)]
    parser.add_argument("--levels", nargs="*", default=levels, choices=levels,
                        help="paper plan levels to synthesise (a level a model lacks is skipped; none: "
                             "unpatched and all-FULL only)")
    parser.add_argument("--window", default="band", choices=KINDS)
    parser.add_argument("--window-fraction", type=float, default=1 / 8)
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="auto: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--repeats", type=int, default=5,
                        help="rounds; each runs every configuration once, interleaved")
    parser.add_argument("--budget", type=float, default=0.0,
                        help="seconds per model: no new round once the next would pass it (0: no limit)")
    parser.add_argument("--warmup-steps", type=int, default=2, help="steps of the untimed run before each")
    parser.add_argument("--easycache", type=float, default=FORCED_SKIP,
                        help=f"EasyCache reuse_threshold (default {FORCED_SKIP:g}: skip every step it may); "
                             "<= 0: no EasyCache rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--depth", type=int, default=0,
                        help="blocks of each model (0: the real depth); the real width, heads and tokens "
                             "are kept, so a CPU can time real geometry: attention's share of a block does "
                             "not depend on how many blocks there are")


DEPTH_KEYS = {"pixart_sigma": ("depth",), "flux": ("depth", "depth_single_blocks"), "wan2.1": ("num_layers",)}
"""Which config keys count blocks, per ComfyUI image model."""


def with_depth(spec: ModelSpec, depth: int) -> ModelSpec:
    """``spec`` with ``depth`` blocks (Flux: of each kind); 0 leaves it as it is."""
    if depth <= 0:
        return spec
    keys = DEPTH_KEYS[spec.unet["image_model"]]
    return dataclasses.replace(spec, unet={**spec.unet, **{k: depth for k in keys}})


# -- plans --------------------------------------------------------------------------------------------


def synthesise_grid(steps: int, layers: int, target: float, pair_fraction: float,
                    guided: bool) -> tuple[list[list[Strategy]], float]:
    """A deterministic steps x layers grid whose attention FLOPs fraction is the largest <= ``target``.

    Step 0 stays FULL (every later strategy reads what it leaves). Cells are compressed from the last
    step backwards, layer by layer, each taking the next strategy of a fixed mix (WA-RS+ASC, AST,
    WA-RS, ASC with CFG; WA-RS, AST, WA-RS without), so late steps are the most compressed, as in the
    paper's D6 plans (Fig. 5). The count of compressed cells is found by bisection.
    """
    mix = ((Strategy.WA_RS_ASC, Strategy.AST, Strategy.WA_RS, Strategy.ASC) if guided
           else (Strategy.WA_RS, Strategy.AST, Strategy.WA_RS))
    cond = 0.5 if guided else 1.0
    order = [(s, layer) for s in range(steps - 1, 0, -1) for layer in range(layers)]

    def grid(k: int) -> list[list[Strategy]]:
        g = [[Strategy.FULL] * layers for _ in range(steps)]
        for s, layer in order[:k]:
            g[s][layer] = mix[(s + layer) % len(mix)]
        return g

    def fraction(k: int) -> float:
        return plan_flops_fraction(grid(k), pair_fraction, cond)

    lo, hi = 0, len(order)
    if fraction(hi) > target:
        return grid(hi), fraction(hi)
    while lo < hi:
        mid = (lo + hi) // 2
        if fraction(mid) <= target:
            hi = mid
        else:
            lo = mid + 1
    return grid(lo), fraction(lo)


# -- ComfyUI -----------------------------------------------------------------------------------------


def load_host(device: torch.device) -> tuple[ModuleType, ModuleType, ModuleType]:
    """(comfy_host, comfy_models, the pack) with ComfyUI bootstrapped for ``device``.

    The tests' bootstrap forces ComfyUI's CPU mode, which ``comfy.model_management`` reads once, at
    import; on a GPU it is imported first, in GPU mode, so the later flag has no effect.
    """
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))
    comfy_host = importlib.import_module("comfy_host")
    if device.type == "cuda":
        root = comfy_host.find_comfyui()
        if root is None or not comfy_host.is_comfyui_checkout(root):
            raise comfy_host.ComfyUIUnavailable(f"ComfyUI not found; to enable: {comfy_host.ENABLE_HINT}")
        sys.path.insert(0, str(root))
        comfy_host.install_torchvision_stub()
        importlib.import_module("comfy.model_management")
    comfy_host.bootstrap_comfyui()
    return comfy_host, importlib.import_module("comfy_models"), comfy_host.load_pack()


def comfyui_unavailable(device: torch.device) -> str | None:
    """Why the suite cannot run here (ComfyUI not found or not importable), or None when it can."""
    try:
        load_host(device)
    except ImportError as exc:
        return f"this repository's tests/ helpers are missing ({exc})"
    except RuntimeError as exc:
        comfy_host = sys.modules.get("comfy_host")
        if comfy_host is None or not isinstance(exc, comfy_host.ComfyUIUnavailable):
            raise
        return str(exc)
    return None


@torch.no_grad()
def init_weights(module: torch.nn.Module, seed: int) -> None:
    """Random weights on the module's own device (a CPU fill of Flux's 12B would take minutes):
    matrices N(0, 1/fan_in), norm gains ~1, other vectors ~0.02 (as tests/comfy_models.init_weights)."""
    params = list(module.named_parameters())
    gen = torch.Generator(params[0][1].device).manual_seed(seed)
    for name, p in params:
        if p.ndim >= 2:
            p.normal_(0.0, 1.0 / math.sqrt(max(1, p[0].numel())), generator=gen)
        elif name.endswith(("weight", "scale")):
            p.normal_(1.0, 0.02, generator=gen)
        else:
            p.normal_(0.0, 0.02, generator=gen)


def _for_host(unet: dict[str, Any]) -> dict[str, Any]:
    """``unet`` plus the params ComfyUI 0.33+ requires that 0.3.64 does not know (Flux ``txt_ids_dims``,
    empty for classic Flux checkpoints, as its model detection sets it)."""
    import dataclasses

    if unet.get("image_model") != "flux":
        return unet
    from comfy.ldm.flux.model import FluxParams

    declared = {f.name for f in dataclasses.fields(FluxParams)}
    return {**unet, "txt_ids_dims": []} if "txt_ids_dims" in declared else unet


def build(spec: ModelSpec, device: torch.device, dtype: torch.dtype, seed: int) -> Any:
    import comfy.model_patcher
    import comfy.supported_models

    config = getattr(comfy.supported_models, spec.config_class)(_for_host(dict(spec.unet)))
    config.set_inference_dtype(dtype, None)
    torch.manual_seed(seed)  # buffers drawn in __init__ (PixArt's null caption)
    model = config.get_model({}, device=device)
    init_weights(model.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def conditioning(spec: ModelSpec, seed: int) -> tuple[list, list]:
    gen = torch.Generator().manual_seed(seed + 1)
    out = []
    for _ in range(2):
        extra = dict(spec.extra)
        if spec.pooled:
            extra["pooled_output"] = torch.randn(1, spec.pooled, generator=gen)
        out.append([[torch.randn(1, *spec.text, generator=gen), extra]])
    return out[0], out[1]


class Timings:
    """Records the engines the Apply node builds while active, each timing its attention calls
    (CUDA events on a GPU, read after the run; the wall clock on a CPU)."""

    def __init__(self, apply_module: ModuleType, device: torch.device) -> None:
        self.module, self.base, self.engines = apply_module, apply_module.FastAttention, []
        cuda, engines = device.type == "cuda", self.engines

        class Timed(self.base):  # type: ignore[misc, name-defined]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                self.events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
                self.seconds = 0.0
                engines.append(self)

            def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
                if cuda:
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    out = super().__call__(*args, **kwargs)
                    end.record()
                    self.events.append((start, end))
                    return out
                t0 = time.perf_counter()
                out = super().__call__(*args, **kwargs)
                self.seconds += time.perf_counter() - t0
                return out

            def attention_seconds(self) -> float:
                return self.seconds + sum(s.elapsed_time(e) for s, e in self.events) / 1e3

        self.timed = Timed

    def __enter__(self) -> Timings:
        self.module.FastAttention = self.timed
        return self

    def __exit__(self, *exc: object) -> None:
        self.module.FastAttention = self.base


@contextlib.contextmanager
def dense_kernel(kind: str) -> Iterator[None]:
    """Within the block, ComfyUI's dense attention is torch SDPA (``kind="sdpa"``) or the host's own
    choice (``"host"``, e.g. the sub-quadratic kernel on a CPU).

    The pack's dense calls go through the host's kernel, and its window kernels are SDPA based: an
    unpatched baseline on another kernel would credit (or charge) the pack with the difference
    between two dense kernels. ComfyUI's blocks read the module global ``optimized_attention``
    bound at import, so every ``comfy`` module holding the host's choice gets ``attention_pytorch``.
    """
    import comfy.ldm.modules.attention as attention

    default, sdpa = attention.optimized_attention, attention.attention_pytorch
    if kind == "host" or default is sdpa:
        yield
        return
    holders = [m for name, m in list(sys.modules.items())
               if name.startswith("comfy") and getattr(m, "optimized_attention", None) is default]
    for module in holders:
        module.optimized_attention = sdpa
    try:
        yield
    finally:
        for module in holders:
            module.optimized_attention = default


def host_default_is_sdpa() -> bool:
    import comfy.ldm.modules.attention as attention

    return attention.optimized_attention is attention.attention_pytorch


class PeakMemory:
    """Peak memory of one run: CUDA's allocator peak, or on Linux CPUs the resident-set high-water
    mark (reset through ``/proc/self/clear_refs``; None where the kernel refuses)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")

    def read(self) -> int | None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        try:
            status = Path("/proc/self/status").read_text()
        except OSError:
            return None
        line = next((x for x in status.splitlines() if x.startswith("VmHWM:")), None)
        return int(line.split()[1]) * 1024 if line else None


@dataclass
class Config:
    """One measured configuration: its patched model, plan FLOPs (None: no plan) and dense kernel."""

    label: str
    patcher: Any
    flops: float | None = None
    dense: str = "sdpa"
    samples: list[dict] = field(default_factory=list)


def first_block(module: torch.nn.Module) -> torch.nn.Module:
    """The first block of the model's first block list: one call per transformer forward (a CFG
    batch is one forward), counted to see which steps a step cache really skipped."""
    blocks = next(m for m in module.modules() if isinstance(m, torch.nn.ModuleList) and len(m))
    return blocks[0]


def generation(config: Config, sample: Callable[..., torch.Tensor], inputs: tuple, steps: int, cfg: float,
               seed: int, device: torch.device, timings: Callable[[], Timings] | None,
               counter: list[int], memory: PeakMemory) -> dict:
    """One KSampler-like run (euler): latent out, seconds, forwards, peak bytes, attention seconds."""
    counter[0] = 0
    memory.reset()
    instrument = timings() if timings is not None and config.flops is not None else contextlib.nullcontext()
    with dense_kernel(config.dense), instrument as timed:
        t0 = time.perf_counter()
        out = sample(config.patcher, *inputs, steps=steps, cfg=cfg, seed=seed)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
    run = {"out": out, "seconds": seconds, "forwards": counter[0], "peak": memory.read()}
    if timed is not None:
        engine = timed.engines[-1]
        run.update(attention_s=engine.attention_seconds(), engine_flops=engine.stats.flops_fraction,
                   fallbacks=engine.stats.fallbacks)
    return run


def attention_layout(spec: ModelSpec, family: Any, grid3: tuple[int, int, int]) -> TokenLayout:
    """The self-attention call's token layout: the image grid, plus the text where the text joins the
    sequence (Flux: a windowed call keeps the text's rows and columns full, so pricing the plan on the
    image alone would promise FLOPs the engine cannot save)."""
    n_img = math.prod(grid3)
    if not spec.joint_text:
        return TokenLayout(n_img, grid=grid3)
    n_txt = spec.text[0]
    return family.layout(n_txt + n_img, grid3, n_txt)


def build_configs(name: str, spec: ModelSpec, args: argparse.Namespace, base: Any, pack: ModuleType,
                  cfg: float) -> tuple[list[Config], dict[str, Any]]:
    """Unpatched (SDPA and, where it differs, the host's default kernel), all-FULL, one plan per
    level, EasyCache, and EasyCache on top of the deepest plan; plus the geometry."""
    apply_module = importlib.import_module(f"{pack.__name__}.nodes.apply")
    plan_module = importlib.import_module(f"{pack.__name__}.ditfa_core.plan")
    families = importlib.import_module(f"{pack.__name__}.nodes.families")
    family = families.detect(base)
    dm = base.model.diffusion_model
    _, layers = family.layer_bases(dm)
    grid3 = family.grid(dm, spec.latent)
    n_img = math.prod(grid3)
    layout = attention_layout(spec, family, grid3)
    pattern = WindowSpec(args.window, args.window_fraction).resolve(layout)
    pairs = pattern.pair_count() / layout.n_tokens**2
    info = plan_module.ModelInfo(family.name, layers, spec.heads, n_img, grid=grid3)

    def apply(grid: Sequence[Sequence[Strategy]], flops: float) -> Any:
        plan = plan_module.Plan(info, [[s.value for s in row] for row in grid],
                                plan_module.Cost(flops, pairs, 0.5 if cfg != 1.0 else 1.0))
        return apply_module.DiTFastAttnApply.execute(
            model=base, plan=plan, enable=True, window=args.window, window_fraction=args.window_fraction,
            cache_device="gpu", mode="adapt")[0]   # the plan records no text length

    configs = [Config("unpatched", base)]
    if not host_default_is_sdpa():
        configs.append(Config("unpatched, host kernel", base, dense="host"))
    configs.append(Config("all-FULL", apply([[Strategy.FULL] * layers for _ in range(args.steps)], 1.0), 1.0))
    for level in args.levels:
        index = int(level[1:]) - 1
        if index < len(spec.targets):
            grid, flops = synthesise_grid(args.steps, layers, spec.targets[index], pairs, cfg != 1.0)
            configs.append(Config(f"{level} ({spec.targets[index]:.0%})", apply(grid, flops), flops))
    if args.easycache > 0:
        from comfy_extras.nodes_easycache import EasyCacheNode

        def easycache(model: Any) -> Any:
            return EasyCacheNode.execute(model=model, reuse_threshold=args.easycache, start_percent=0.15,
                                         end_percent=0.95, verbose=False)[0]

        configs.append(Config("EasyCache", easycache(base)))
        deepest = configs[-2] if configs[-2].flops is not None and configs[-2].flops < 1.0 else None
        if deepest is not None:
            configs.append(Config(f"EasyCache + {deepest.label}", easycache(deepest.patcher), deepest.flops))
    geometry = {"model": name, "tokens": n_img, "attention_tokens": layout.n_tokens, "steps": args.steps,
                "cfg": cfg, "layers": layers, "window_pair_fraction": pairs}
    return configs, geometry


def bench_model(name: str, spec: ModelSpec, args: argparse.Namespace, device: torch.device,
                dtype: torch.dtype, host: tuple[ModuleType, ModuleType, ModuleType],
                on_round: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Every configuration of one model, interleaved: after one untimed warm-up run each, up to
    ``args.repeats`` rounds run every configuration once (in a rotated order), so that drifting load
    hits all alike; rounds stop early when the next would pass ``args.budget`` seconds. ``on_round``
    sees the rows so far after each round (so a caller killed mid-way keeps them)."""
    _, comfy_models, pack = host
    apply_module = importlib.import_module(f"{pack.__name__}.nodes.apply")
    cfg = spec.cfg if args.cfg is None else args.cfg
    base = build(spec, device, dtype, args.seed)
    configs, geometry = build_configs(name, spec, args, base, pack, cfg)
    inputs = (torch.zeros(spec.latent), *conditioning(spec, args.seed))
    counter = [0]
    hook = first_block(base.model.diffusion_model).register_forward_pre_hook(
        lambda *_: counter.__setitem__(0, counter[0] + 1))
    memory = PeakMemory(device)

    def run(config: Config, steps: int) -> dict:
        return generation(config, comfy_models.sample, inputs, steps, cfg, args.seed, device,
                          functools.partial(Timings, apply_module, device), counter, memory)

    started = time.perf_counter()
    try:
        if args.warmup_steps:
            for config in configs:
                run(config, args.warmup_steps)
        for r in range(max(1, args.repeats)):
            t0 = time.perf_counter()
            for config in configs[r % len(configs):] + configs[:r % len(configs)]:
                config.samples.append(run(config, args.steps))
            if on_round is not None:
                on_round(summarise(configs, geometry))
            spent, last = time.perf_counter() - started, time.perf_counter() - t0
            if args.budget and spent + last > args.budget and r + 1 < args.repeats:
                log.warning("%s: %d of %d rounds fit the %.0f s budget", name, r + 1, args.repeats,
                            args.budget)
                break
    finally:
        hook.remove()
    return summarise(configs, geometry)


def _median(samples: list[dict], key: str) -> float | None:
    values = [s[key] for s in samples if s.get(key) is not None]
    return statistics.median(values) if values else None


def summarise(configs: list[Config], geometry: dict[str, Any]) -> list[dict]:
    """One row per configuration: medians with ranges, speed-ups against the unpatched SDPA run, the
    attention share of all-FULL and the Amdahl bound it puts on each plan's end-to-end speed-up."""
    rows = []
    for c in configs:
        times = [s["seconds"] for s in c.samples]
        rows.append({**geometry, "config": c.label, "dense_kernel": c.dense, "plan_flops": c.flops,
                     "repeats": len(times), "latency_s": statistics.median(times),
                     "latency_min_s": min(times), "latency_max_s": max(times),
                     "forwards": _median(c.samples, "forwards"),
                     "attention_s": _median(c.samples, "attention_s"),
                     "engine_flops": _median(c.samples, "engine_flops"),
                     "fallbacks": max((s.get("fallbacks") or 0) for s in c.samples),
                     "peak_mib": (_median(c.samples, "peak") or 0) / 2**20 or None})
    base, full = rows[0], next(r for r in rows if r["config"] == "all-FULL")
    full_cfg = next(c for c in configs if c.label == "all-FULL")
    share = full["attention_s"] / full["latency_s"] if full["attention_s"] else None
    full["attention_share"] = share
    for row in rows:
        row["speedup"] = base["latency_s"] / row["latency_s"]
        row["latency_range"] = f"{row['latency_min_s']:.3g}-{row['latency_max_s']:.3g}"
        if row["peak_mib"] and base["peak_mib"]:
            row["extra_mib"] = row["peak_mib"] - base["peak_mib"]
        if row["attention_s"] and full["attention_s"]:
            row["attention_speedup"] = full["attention_s"] / row["attention_s"]
            row["amdahl"] = 1 / (1 - share + share / row["attention_speedup"])
    pairs = zip(full_cfg.samples, configs[0].samples, strict=True)
    ratios = [f["seconds"] / u["seconds"] - 1 for f, u in pairs]
    same = torch.equal(full_cfg.samples[0]["out"], configs[0].samples[0]["out"])
    full["overhead"] = statistics.median(ratios)
    full["note"] = (f"{'bit-identical' if same else 'DIFFERS from unpatched'}, overhead "
                    f"{full['overhead']:+.1%} ({min(ratios):+.1%}..{max(ratios):+.1%})")
    return rows


def run_suite(args: argparse.Namespace, device: torch.device) -> dict:
    dtype_name = args.dtype if args.dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    host = load_host(device)
    import comfy.model_management

    specs = {**MODELS, **SMOKE_MODELS}
    rows = []
    for name in args.models:
        rows += bench_model(name, with_depth(specs[name], args.depth), args, device, dtype, host)
        comfy.model_management.unload_all_models()   # the model goes before the next one is built
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"\n### End to end through ComfyUI ({dtype_name}, euler, window {args.window} "
          f"{args.window_fraction:g}; speedup vs unpatched, attention speedup vs all-FULL)\n")
    print(markdown_table(rows, COLUMNS))
    return {"settings": {"dtype": dtype_name, "depth": args.depth or "real",
                         "geometry": {n: dataclasses.asdict(with_depth(specs[n], args.depth))
                                      for n in args.models}},
            "rows": rows}
