"""DiTFastAttn Apply: a MODEL whose attention follows a plan.

Without a plan the node raises: DiTFastAttn has no safe default, since which layers tolerate
compression at which steps depends on the model (paper §4: the plan comes from calibration). Connect
DiTFastAttn Load Plan (a shipped or saved plan) or DiTFastAttn Calibrate.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from comfy_api.latest import io

from ..ditfa_core.engine import FastAttention
from ..ditfa_core.plan import Plan, PlanError
from ..ditfa_core.schedule import Schedule
from ..ditfa_core.windows import KINDS, TokenLayout, WindowSpec
from .families import Family, detect
from .plan_type import CATEGORY, DitfaPlan
from .run import Override, RunParts
from .wrappers import install

log = logging.getLogger(__name__)

WINDOW_KINDS = ("auto", *KINDS)
MODES = ("strict", "adapt")
CACHE_DEVICES = ("gpu", "cpu")


@dataclass(frozen=True)
class ApplySetup:
    """The node's settings; immutable, so the deep copies ModelPatcher.clone makes are harmless."""

    family: Family
    plan: Plan
    window: WindowSpec
    cache_device: str | None
    strict: bool
    prev: Override | None = None
    per_thread: ClassVar[bool] = True    # each thread of multi-device sampling runs its own engine

    def __deepcopy__(self, memo: dict[int, Any]) -> ApplySetup:
        return self

    def begin(self, diffusion_model: torch.nn.Module, latent_shape: tuple[int, ...],
              total_steps: int) -> RunParts:
        """The run's engine, with the plan resampled to this run's step count (a plan calibrated at
        50 steps runs at 20), and the check of heads and token layout at the first conditional call."""
        if total_steps != self.plan.steps:
            log.info("DiTFastAttn: plan of %d steps mapped onto a run of %d steps",
                     self.plan.steps, total_steps)
        schedule = Schedule(self.plan.resampled(total_steps))
        engine = FastAttention(schedule, self.window, cache_device=self.cache_device)
        return RunParts(engine, engine.close, self.check_layout, schedule.shares_cfg_at)

    def check_layout(self, heads: int, layout: TokenLayout) -> None:
        """Strict: the heads, image grid, image and text token counts of the run's first conditional
        attention call must be the plan's (every difference listed); adapt: only the heads."""
        self.plan.check_fits(self.strict, num_heads=heads, n_image_tokens=layout.n_image,
                             n_text_tokens=layout.n_global, grid=layout.grid)


def resolve_window(plan: Plan, kind: str, fraction: float, strict: bool) -> WindowSpec:
    """The window to run with. ``auto`` is the plan's calibration window (its strategies were chosen
    for it); an explicit window differing from the plan's is refused in strict mode."""
    cal = plan.calibration
    if kind == "auto":
        if cal is None:
            return WindowSpec("band", fraction)
        return WindowSpec(cal.window.kind, cal.window.fraction, cal.window.radius)
    spec = WindowSpec(kind, fraction)
    if cal is not None and (cal.window.kind != kind or not math.isclose(cal.window.fraction, fraction)
                            or cal.window.radius is not None):
        note = (f"plan calibrated with a {cal.window.kind} window of fraction {cal.window.fraction:g}, "
                f"node asks for {kind} {fraction:g}")
        if strict:
            raise PlanError(f"DiTFastAttn (strict mode): {note}; use window 'auto' or mode 'adapt'")
        log.info("DiTFastAttn (adapt mode): %s; using the node's window", note)
    return spec


def apply_plan(model: Any, plan: Plan, window_kind: str = "auto", window_fraction: float = 1 / 8,
               cache_device: str = "gpu", mode: str = "strict") -> Any:
    """A clone of ``model`` running ``plan``; the input ModelPatcher is left untouched."""
    family = detect(model)
    dm = model.model.diffusion_model
    _, n_layers = family.layer_bases(dm)
    strict = mode == "strict"
    plan.check_fits(strict, family=family.name, num_layers=n_layers, num_heads=family.heads(dm))
    window = resolve_window(plan, window_kind, window_fraction, strict)
    clone = model.clone()
    cache = "cpu" if cache_device == "cpu" else None
    install(clone, lambda prev: ApplySetup(family, plan, window, cache, strict, prev))
    log.info("DiTFastAttn: %s", plan.summary())
    return clone


class DiTFastAttnApply(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiTFastAttnApply",
            display_name="DiTFastAttn Apply",
            category=CATEGORY,
            description="Compress the model's attention with a DiTFastAttn plan (window attention with "
                        "residual sharing, sharing across steps and across CFG).",
            inputs=[
                io.Model.Input("model"),
                DitfaPlan.Input("plan", optional=True,
                                tooltip="From DiTFastAttn Load Plan or Calibrate; required when enabled."),
                io.Boolean.Input("enable", default=True,
                                 tooltip="Off: the model passes through unchanged."),
                io.Combo.Input("window", options=list(WINDOW_KINDS), default="auto",
                               tooltip="auto: the window the plan was calibrated with. band: 1-D over "
                                       "the flattened image tokens (paper). nbhd: a box over the (t, h, w) "
                                       "grid."),
                io.Float.Input("window_fraction", default=0.125, min=0.01, max=1.0, step=0.005,
                               tooltip="Window area as a fraction of the image tokens (band/nbhd only)."),
                io.Combo.Input("cache_device", options=list(CACHE_DEVICES), default="gpu",
                               tooltip="Where cached attention outputs rest between steps; cpu spares "
                                       "GPU memory at some speed."),
                io.Combo.Input("mode", options=list(MODES), default="strict",
                               tooltip="strict: refuse a plan calibrated at another resolution, prompt "
                                       "length or window. adapt: use it anyway, with a note in the log."),
            ],
            outputs=[io.Model.Output(tooltip="The model with DiTFastAttn.")],
        )

    @classmethod
    def execute(cls, model: Any, enable: bool, window: str, window_fraction: float, cache_device: str,
                mode: str, plan: Plan | None = None) -> io.NodeOutput:
        if not enable:
            return io.NodeOutput(model)
        if plan is None:
            raise ValueError("DiTFastAttn Apply needs a plan: connect DiTFastAttn Load Plan (a shipped or "
                             "saved plan) or DiTFastAttn Calibrate, or set enable to false")
        return io.NodeOutput(apply_plan(model, plan, window, window_fraction, cache_device, mode))
