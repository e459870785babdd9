"""End to end through real ComfyUI: unpatched vs DiTFastAttn Apply vs core EasyCache.

The models are ComfyUI's own classes (``comfy.supported_models``) at real geometry with random weights
(time does not depend on the weights' values): PixArt-Sigma-XL at 1K and 2K, Flux at 1K and 2K, Wan 2.1
T2V 1.3B at 480p x 81 frames. The pack is loaded as ComfyUI loads it (a package under its folder's name,
``tests/comfy_host.load_pack``) and applied through its node, ``DiTFastAttnApply``, so every hook and
wrapper of ``nodes/`` is on the measured path. Plans are synthesised to the attention FLOPs of the
paper's D1-D6 plans (Table 1; OpenSora's five for video) by ``synthesise_grid``.

Needs a ComfyUI 0.3.64+ checkout (``COMFYUI_PATH``) and this repository's ``tests/`` (the headless
bootstrap). Real geometry needs a GPU; ``--smoke`` runs the same classes at toy sizes on a CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import importlib
import logging
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from ..flops import plan_flops_fraction
from ..strategies import Strategy
from ..windows import TokenLayout, WindowSpec
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
                         (512, 4096), 24, PIXART_1K, 1.0, {"guidance": 3.5}, pooled=768),
    "flux_2k": ModelSpec("Flux", _flux(3072, 24, 19, 38, [16, 56, 56], 768, 4096), (1, 16, 256, 256),
                         (512, 4096), 24, PIXART_2K, 1.0, {"guidance": 3.5}, pooled=768),
    "wan21_1.3b_480p": ModelSpec("WAN21_T2V", _wan(1536, 8960, 256, 12, 30, 512, 4096), (1, 16, 21, 60, 104),
                                 (512, 4096), 12, OPENSORA, 5.0),
}

# The same classes at toy sizes (the geometry of tests/comfy_models.py), for --smoke on a CPU.
SMOKE_MODELS: dict[str, ModelSpec] = {
    "pixart_sigma_smoke": ModelSpec("PixArtSigma", _pixart(32, 64, 2, 2, 32, 8), (1, 4, 32, 48), (8, 32), 2,
                                    PIXART_2K, 4.5),
    "flux_smoke": ModelSpec("Flux", _flux(64, 2, 2, 2, [8, 12, 12], 32, 32), (1, 16, 8, 12), (6, 32), 2,
                            PIXART_2K, 1.0, {"guidance": 3.5}, pooled=32),
    "wan21_smoke": ModelSpec("WAN21_T2V", _wan(64, 128, 32, 2, 2, 8, 32), (1, 16, 3, 8, 12), (8, 32), 2,
                             OPENSORA, 5.0),
}

SMOKE = {"models": list(SMOKE_MODELS), "steps": 4, "levels": ["D1", "D6"], "repeats": 1}

COLUMNS = [("model", "model"), ("config", "config"), ("tokens", "image tokens"), ("steps", "steps"),
           ("cfg", "cfg"), ("plan_flops", "plan FLOPs"), ("engine_flops", "engine FLOPs"),
           ("latency_s", "latency s"), ("speedup", "speedup"), ("attention_s", "attention s"),
           ("attention_speedup", "attn speedup"), ("peak_mib", "peak MiB"), ("note", "note")]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    names = [*MODELS, *SMOKE_MODELS]
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=names)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, help="default: the model's (PixArt 4.5, Flux 1, Wan 5)")
    levels = [f"D{i}" for i in range(1, 7)]
    parser.add_argument("--levels", nargs="*", default=levels, choices=levels,
                        help="paper plan levels to synthesise (a level a model lacks is skipped; none: "
                             "unpatched and all-FULL only)")
    parser.add_argument("--window", default="band", choices=["band", "nbhd"])
    parser.add_argument("--window-fraction", type=float, default=1 / 8)
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="auto: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--repeats", type=int, default=1, help="timed generations per configuration")
    parser.add_argument("--warmup-steps", type=int, default=2, help="steps of the untimed run before each")
    parser.add_argument("--easycache", type=float, default=0.2, help="EasyCache reuse_threshold; <= 0: skip")
    parser.add_argument("--seed", type=int, default=0)


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


def generation(sample: Callable[..., torch.Tensor], patcher: Any, inputs: tuple, steps: int, cfg: float,
               seed: int, device: torch.device) -> tuple[torch.Tensor, float, int | None]:
    """(latent out, seconds, peak GPU bytes or None on a CPU) of one KSampler-like run (euler)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    out = sample(patcher, *inputs, steps=steps, cfg=cfg, seed=seed)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    return out, seconds, torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def bench_model(name: str, spec: ModelSpec, args: argparse.Namespace, device: torch.device,
                dtype: torch.dtype, host: tuple[ModuleType, ModuleType, ModuleType]) -> list[dict]:
    """Every configuration of one model: unpatched, all-FULL, each level's plan, EasyCache."""
    _, comfy_models, pack = host
    apply_module = importlib.import_module(f"{pack.__name__}.nodes.apply")
    plan_module = importlib.import_module(f"{pack.__name__}.ditfa_core.plan")
    families = importlib.import_module(f"{pack.__name__}.nodes.families")
    cfg = spec.cfg if args.cfg is None else args.cfg
    base = build(spec, device, dtype, args.seed)
    pos, neg = conditioning(spec, args.seed)
    inputs = (torch.zeros(spec.latent), pos, neg)
    family = families.detect(base)
    dm = base.model.diffusion_model
    _, layers = family.layer_bases(dm)
    grid3 = family.grid(dm, spec.latent)
    n_img = math.prod(grid3)
    pattern = WindowSpec(args.window, args.window_fraction).resolve(TokenLayout(n_img, grid=grid3))
    pairs = pattern.pair_count() / n_img**2
    info = plan_module.ModelInfo(family.name, layers, spec.heads, n_img, grid=grid3)

    def apply(grid: Sequence[Sequence[Strategy]], flops: float) -> Any:
        plan = plan_module.Plan(info, [[s.value for s in row] for row in grid],
                                plan_module.Cost(flops, pairs, 0.5 if cfg != 1.0 else 1.0))
        return apply_module.DiTFastAttnApply.execute(
            model=base, plan=plan, enable=True, window=args.window, window_fraction=args.window_fraction,
            cache_device="gpu", mode="adapt")[0]   # the plan records no text length

    configs: list[tuple[str, Any, float | None]] = [("unpatched", base, None)]
    full = [[Strategy.FULL] * layers for _ in range(args.steps)]
    configs.append(("all-FULL", apply(full, 1.0), 1.0))
    for level in args.levels:
        index = int(level[1:]) - 1
        if index >= len(spec.targets):
            continue
        grid, flops = synthesise_grid(args.steps, layers, spec.targets[index], pairs, cfg != 1.0)
        configs.append((f"{level} ({spec.targets[index]:.0%})", apply(grid, flops), flops))
    if args.easycache > 0:
        from comfy_extras.nodes_easycache import EasyCacheNode

        configs.append(("EasyCache", EasyCacheNode.execute(
            model=base, reuse_threshold=args.easycache, start_percent=0.15, end_percent=0.95,
            verbose=False)[0], None))

    rows, reference = [], None
    for label, patcher, flops in configs:
        run = functools.partial(generation, comfy_models.sample, patcher, inputs, cfg=cfg, seed=args.seed,
                                device=device)
        if args.warmup_steps:
            run(args.warmup_steps)
        timed = [run(args.steps) for _ in range(args.repeats)]
        out = timed[0][0]
        row = {"model": name, "config": label, "tokens": n_img, "steps": args.steps, "cfg": cfg,
               "layers": layers, "plan_flops": flops, "window_pair_fraction": pairs,
               "latency_s": statistics.median(t[1] for t in timed),
               "peak_mib": max(t[2] for t in timed) / 2**20 if timed[0][2] is not None else None}
        if label == "unpatched":
            reference = out
        elif label == "all-FULL":
            row["note"] = "bit-identical" if torch.equal(out, reference) else "DIFFERS from unpatched"
        if flops is not None:   # one more run, instrumented, for the time inside attention
            with Timings(apply_module, device) as timings:
                run(args.steps)
            engine = timings.engines[-1]
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            row["attention_s"] = engine.attention_seconds()
            row["engine_flops"] = engine.stats.flops_fraction
            row["fallbacks"] = engine.stats.fallbacks
        rows.append(row)
        log.info("%s %s: %.3f s", name, label, row["latency_s"])
    for row in rows:
        row["speedup"] = rows[0]["latency_s"] / row["latency_s"]
        if row.get("attention_s"):
            row["attention_speedup"] = rows[1]["attention_s"] / row["attention_s"]
    rows[1]["overhead"] = rows[1]["latency_s"] / rows[0]["latency_s"] - 1
    rows[1]["note"] = f"{rows[1]['note']}, overhead {rows[1]['overhead']:+.1%}"
    return rows


def run_suite(args: argparse.Namespace, device: torch.device) -> dict:
    dtype_name = args.dtype if args.dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    host = load_host(device)
    import comfy.model_management

    specs = {**MODELS, **SMOKE_MODELS}
    rows = []
    for name in args.models:
        rows += bench_model(name, specs[name], args, device, dtype, host)
        comfy.model_management.unload_all_models()   # the model goes before the next one is built
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"\n### End to end through ComfyUI ({dtype_name}, euler, window {args.window} "
          f"{args.window_fraction:g}; speedup vs unpatched, attention speedup vs all-FULL)\n")
    print(markdown_table(rows, COLUMNS))
    return {"settings": {"dtype": dtype_name,
                         "geometry": {n: dataclasses.asdict(specs[n]) for n in args.models}},
            "rows": rows}
