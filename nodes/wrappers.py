"""Installing DiTFastAttn on a ModelPatcher clone: the override, the wrappers, the run's lifetime.

Convention of ComfyUI's own EasyCache: every wrapper is registered under one key, the node stores only
immutable settings in ``transformer_options`` (``SETUP_KEY``), and the OUTER_SAMPLE wrapper puts the
per-run state into a clone of the guider's model options and restores the original in ``finally``, so
nothing of one run survives into the next.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from typing import Any, Protocol

import torch

from .families import Family
from .override import attention_override
from .run import FORWARD_KEY, OVERRIDE_KEY, RUN_KEY, SETUP_KEY, Override, Run, RunParts
from .steps import cond_roles

log = logging.getLogger(__name__)

WRAPPER_KEY = "ditfastattn"

CURRENT_OPTIONS: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "ditfa_transformer_options", default=None)
"""The transformer_options of the forward that is running, for code ComfyUI calls without them (PixArt's
attention, reached through an object patch)."""


class Setup(Protocol):
    """What a node stores in ``transformer_options[SETUP_KEY]``: settings, and how to start a run.
    ``per_thread``: whether a second thread of the run (multi-device sampling) may get its own engine
    from ``begin``; otherwise it computes densely."""

    family: Family
    prev: Override | None
    per_thread: bool

    def begin(self, diffusion_model: torch.nn.Module, latent_shape: tuple[int, ...],
              total_steps: int) -> RunParts:
        """What a run of ``total_steps`` on latents of this shape needs."""
        ...


def outer_sample_wrapper(executor: Any, *args: Any, **kwargs: Any) -> Any:
    import comfy.model_patcher

    guider = executor.class_obj
    orig = guider.model_options
    guider.model_options = comfy.model_patcher.create_model_options_clone(orig)
    try:
        to = guider.model_options.setdefault("transformer_options", {})
        setup: Setup | None = to.get(SETUP_KEY)
        if setup is None:
            return executor(*args, **kwargs)
        noise, sigmas = args[0], args[3]
        dm = guider.model_patcher.model.diffusion_model
        shape, steps = tuple(noise.shape), max(1, len(sigmas) - 1)
        parts = setup.begin(dm, shape, steps)
        try:
            roles = cond_roles(getattr(guider, "conds", None) or {})
            lanes = (lambda: setup.begin(dm, shape, steps)) if setup.per_thread else None
            run = Run(setup.family, dm, parts, sigmas.tolist(), roles, setup.prev, lanes)
            current = to.get(OVERRIDE_KEY)
            if current is not attention_override:
                # Another node took the slot after ours: keep ours, with theirs as the dense kernel.
                log.info("DiTFastAttn: another attention override was set after DiTFastAttn; it is used as "
                         "the dense kernel under DiTFastAttn")
                run.inner = current
            to[OVERRIDE_KEY] = attention_override
            to[RUN_KEY] = run
            run.open()
            try:
                return executor(*args, **kwargs)
            finally:
                run.close()
        finally:
            parts.close()
    finally:
        guider.model_options = orig


def calc_cond_batch_wrapper(executor: Any, *args: Any, **kwargs: Any) -> Any:
    """One model evaluation (``calc_cond_batch(model, conds, x_in, timestep, model_options)``; once per
    context window under context windows): counts it (the key that pairs a conditional forward with
    its unconditional one and keeps Heun's correction apart from the next step), records its areas,
    and at steps that share attention across CFG runs the lending terms before the borrowing ones."""
    names = ("model", "conds", "x_in", "timestep", "model_options")
    bound = {**dict(zip(names, args, strict=False)), **kwargs}
    run = (bound.get("model_options") or {}).get("transformer_options", {}).get(RUN_KEY)
    if run is None:
        return executor(*args, **kwargs)
    conds = bound["conds"]
    run.begin_evaluation(conds)
    split = run.lenders_first(conds, bound["timestep"])
    if split is None:
        return executor(*args, **kwargs)

    def call(part: list) -> Any:
        if len(args) > 1:
            return executor(args[0], part, *args[2:], **kwargs)
        return executor(*args, **{**kwargs, "conds": part})

    first, rest = call(split[0]), call(split[1])
    return [a if c is not None else b for a, b, c in zip(first, rest, split[0], strict=True)]


def apply_model_wrapper(executor: Any, *args: Any, **kwargs: Any) -> Any:
    """Describes the forward (step, chunks, grid, text length) in its transformer_options, the dict
    every block and attention call of this forward receives."""
    to = args[5] if len(args) > 5 else kwargs.get("transformer_options")
    run = to.get(RUN_KEY) if isinstance(to, dict) else None
    if run is None:
        return executor(*args, **kwargs)
    context = args[3] if len(args) > 3 else kwargs.get("c_crossattn")
    to[FORWARD_KEY] = run.forward(args[0], context, to, kwargs)
    token = CURRENT_OPTIONS.set(to)
    try:
        return executor(*args, **kwargs)
    finally:
        CURRENT_OPTIONS.reset(token)


def install(patcher: Any, setup_factory: Callable[[Override | None], Setup]) -> None:
    """Put DiTFastAttn on ``patcher`` (a clone the caller owns). The override found in the slot is
    chained as the dense kernel; a DiTFastAttn already there is replaced, keeping what it chained."""
    import comfy.patcher_extension

    from . import pixart

    to = patcher.model_options.setdefault("transformer_options", {})
    prev = to.get(OVERRIDE_KEY)
    if prev is attention_override:
        log.info("DiTFastAttn: replacing an earlier DiTFastAttn on this model")
        prev = getattr(to.get(SETUP_KEY), "prev", None)
    setup = setup_factory(prev)
    to[SETUP_KEY] = setup
    to[OVERRIDE_KEY] = attention_override
    w = comfy.patcher_extension.WrappersMP
    for kind, fn in ((w.OUTER_SAMPLE, outer_sample_wrapper), (w.CALC_COND_BATCH, calc_cond_batch_wrapper),
                     (w.APPLY_MODEL, apply_model_wrapper)):
        patcher.remove_wrappers_with_key(kind, WRAPPER_KEY)
        patcher.add_wrapper_with_key(kind, WRAPPER_KEY, fn)
    if setup.family.object_patch:
        pixart.install(patcher, setup.family)
