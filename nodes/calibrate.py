"""DiTFastAttn Calibrate: sample once like KSampler while a plan search chooses each step's strategies.

The search (paper Algorithm 1, or our faster variant) must see whole model evaluations: it compares the
CFG-combined output of a compressed forward with the uncompressed one, and ASC needs the conditional and
unconditional forwards of one evaluation together. So the evaluation is wrapped at PREDICT_NOISE (once
per sampler evaluation, cond and uncond included) rather than per forward; the attention calls of those
forwards reach the search through the same override and block tags as DiTFastAttn Apply.
"""

from __future__ import annotations

import datetime
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from comfy_api.latest import io

from ..ditfa_core import __version__
from ..ditfa_core.context import CallContext, Role
from ..ditfa_core.engine import DenseFn
from ..ditfa_core.flops import pattern_pair_fraction
from ..ditfa_core.plan import Calibration, Cost, ModelInfo, Plan, WindowSetting
from ..ditfa_core.search import GRANULARITIES, SEARCHES, PlanSearch, make_search, search_class
from ..ditfa_core.windows import KINDS, TokenLayout, WindowSpec
from .families import Family, Grid, detect
from .plan_type import CATEGORY, DitfaPlan
from .run import RUN_KEY, SETUP_KEY, Override, RunParts
from .steps import step_for_sigma
from .wrappers import WRAPPER_KEY, install

log = logging.getLogger(__name__)


@dataclass
class CalibrateSetup:
    """Settings of one Calibrate execution, and the search its run creates (read back by the node).
    Shared by reference across ModelPatcher clones: it belongs to this one execution."""

    family: Family
    mode: str
    delta: float
    window: WindowSpec
    granularity: str = "layer"
    prev: Override | None = None
    search: PlanSearch | None = None
    grid: Grid | None = None
    heads: int | None = None
    widest: TokenLayout | None = None
    first_cond: TokenLayout | None = None   # what Apply's strict check compares a run with
    n_layers: int = 0
    per_thread: ClassVar[bool] = False   # one search per run: other threads compute densely

    def __deepcopy__(self, memo: dict[int, Any]) -> CalibrateSetup:
        return self

    def begin(self, diffusion_model: torch.nn.Module, latent_shape: tuple[int, ...],
              total_steps: int) -> RunParts:
        _, self.n_layers = self.family.layer_bases(diffusion_model)
        self.grid = self.family.grid(diffusion_model, latent_shape)
        self.search = make_search(self.mode, total_steps, self.n_layers, self.delta, self.window,
                                  granularity=self.granularity)
        return RunParts(self._attend, lambda: None)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: CallContext,
                dense: DenseFn | None) -> torch.Tensor:
        self.heads = q.shape[1]
        if self.widest is None or ctx.layout.n_tokens > self.widest.n_tokens:
            self.widest = ctx.layout
        if self.first_cond is None and any(c.role is Role.COND for c in ctx.chunks):
            self.first_cond = ctx.layout
        if self.search is None:
            raise RuntimeError("DiTFastAttn Calibrate: attention call before the search started")
        return self.search.attention(q, k, v, ctx, dense)


def predict_noise_wrapper(executor: Any, *args: Any, **kwargs: Any) -> Any:
    """One sampler evaluation, handed to the search, which may run it several times (trials)."""
    import comfy.model_management

    model_options = args[2] if len(args) > 2 else kwargs["model_options"]
    to = model_options.get("transformer_options", {})
    run, setup = to.get(RUN_KEY), to.get(SETUP_KEY)
    search = getattr(setup, "search", None)
    if run is None or search is None:
        return executor(*args, **kwargs)
    timestep = args[1] if len(args) > 1 else kwargs["timestep"]
    step = step_for_sigma(run.sigmas, float(timestep.flatten()[0]))

    def forward() -> torch.Tensor:
        comfy.model_management.throw_exception_if_processing_interrupted()
        return executor(*args, **kwargs)

    return search.evaluate(step, forward)


def build_plan(setup: CalibrateSetup, *, sampler: str, scheduler: str, cfg: float, seconds: float,
               latent_shape: tuple[int, ...]) -> Plan:
    """The plan the finished search found, with what it was calibrated on and its cost."""
    search = setup.search
    if (search is None or setup.heads is None or setup.grid is None or setup.widest is None
            or setup.first_cond is None):
        raise RuntimeError(f"DiTFastAttn Calibrate: no attention call of the {setup.family.name} model "
                           "reached the search; nothing was calibrated")
    grid = search.grid()
    window = setup.window
    info = ModelInfo(setup.family.name, setup.n_layers, setup.heads, math.prod(setup.grid),
                     setup.first_cond.n_global, setup.grid)
    calibration = Calibration(
        steps=len(grid), sampler=sampler, scheduler=scheduler, cfg=float(cfg), delta=setup.delta,
        window=WindowSetting(window.kind, window.fraction, window.radius), search=setup.mode,
        seconds=seconds, generations=search.generations,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        tool_version=__version__, latent_shape=latent_shape,
    )
    pairs = pattern_pair_fraction(window.resolve(setup.widest))
    return Plan(info, grid, Cost.estimate(grid, pairs), calibration)


def calibrate(model: Any, positive: Any, negative: Any, latent: dict[str, Any], *, seed: int, steps: int,
              cfg: float, sampler_name: str, scheduler: str, denoise: float, delta: float, window: WindowSpec,
              search: str, granularity: str = "layer") -> tuple[Plan, dict[str, Any]]:
    """Sample like KSampler on a clone of ``model`` whose evaluations go through a plan search."""
    import comfy.model_management
    import comfy.patcher_extension
    import comfy.sample
    import comfy.utils

    search_class(search, granularity)   # a bad combination fails here, before any sampling
    family = detect(model)
    latent_image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    holder: dict[str, CalibrateSetup] = {}

    def make_setup(prev: Override | None) -> CalibrateSetup:
        holder["setup"] = CalibrateSetup(family, search, delta, window, granularity, prev)
        return holder["setup"]

    clone = model.clone()
    install(clone, make_setup)
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.PREDICT_NOISE, WRAPPER_KEY,
                               predict_noise_wrapper)
    setup = holder["setup"]
    pbar = comfy.utils.ProgressBar(steps)

    def callback(step: int, _x0: torch.Tensor, _x: torch.Tensor, total: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        pbar.update_absolute(step + 1, total)

    start = time.perf_counter()
    try:
        samples = comfy.sample.sample(
            clone, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
            denoise=denoise, noise_mask=latent.get("noise_mask"), callback=callback,
            disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed,
        )
        plan = build_plan(setup, sampler=sampler_name, scheduler=scheduler, cfg=cfg,
                          seconds=time.perf_counter() - start, latent_shape=tuple(latent_image.shape))
    finally:
        if setup.search is not None:
            setup.search.close()
    log.info("DiTFastAttn Calibrate: %s (search cost %.1f model evaluations per sampling step)",
             plan.summary(), plan.calibration.generations)
    out = latent.copy()
    out["samples"] = samples
    return plan, out


class DiTFastAttnCalibrate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        import comfy.samplers

        return io.Schema(
            node_id="DiTFastAttnCalibrate",
            display_name="DiTFastAttn Calibrate",
            category=CATEGORY,
            description="Sample once while searching, step by step and layer by layer, the most compressive "
                        "attention strategy whose output error stays under delta; outputs the plan and the "
                        "sampled latent.",
            inputs=[
                io.Model.Input("model"),
                io.Conditioning.Input("positive"),
                io.Conditioning.Input("negative"),
                io.Latent.Input("latent_image"),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True),
                io.Int.Input("steps", default=20, min=1, max=10000),
                io.Float.Input("cfg", default=4.0, min=0.0, max=100.0, step=0.1, round=0.01),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01),
                io.Float.Input("delta", default=0.1, min=0.0, max=10.0, step=0.005,
                               tooltip="Error budget per step (paper's threshold): larger compresses more."),
                io.Combo.Input("window", options=list(KINDS), default="band"),
                io.Float.Input("window_fraction", default=0.125, min=0.01, max=1.0, step=0.005),
                io.Combo.Input("search", options=list(SEARCHES), default="fast",
                               tooltip="fast: about 2 model evaluations per sampling step. greedy: the "
                                       "paper's Algorithm 1, up to about 4 x layers."),
                io.Combo.Input("granularity", options=list(GRANULARITIES), default="layer",
                               tooltip="layer: one strategy per attention layer (DiTFastAttn). head: one per "
                                       "head, chosen by a knapsack (DiTFastAttnV2; fast search only)."),
            ],
            outputs=[DitfaPlan.Output(display_name="plan"), io.Latent.Output(display_name="LATENT")],
        )

    @classmethod
    def execute(cls, model: Any, positive: Any, negative: Any, latent_image: dict[str, Any], seed: int,
                steps: int, cfg: float, sampler_name: str, scheduler: str, denoise: float, delta: float,
                window: str, window_fraction: float, search: str,
                granularity: str = "layer") -> io.NodeOutput:
        plan, out = calibrate(model, positive, negative, latent_image, seed=seed, steps=steps, cfg=cfg,
                              sampler_name=sampler_name, scheduler=scheduler, denoise=denoise, delta=delta,
                              window=WindowSpec(window, window_fraction), search=search,
                              granularity=granularity)
        # The plan's JSON goes to the front end too (web/ditfastattn.js draws it and can embed it in a
        # Load Plan node, so that the saved workflow carries the plan).
        return io.NodeOutput(plan, out, ui={"ditfa_plan": [plan.to_json()], "text": [plan.summary()]})
