"""DiTFastAttn Load Plan and Save Plan nodes."""

from __future__ import annotations

import os
from typing import Any

from comfy_api.latest import io, ui

from ..ditfa_core.plan import Plan
from .plan_files import find_plan, list_plans, load_plan, save_plan
from .plan_type import CATEGORY, DitfaPlan


class DiTFastAttnLoadPlan(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiTFastAttnLoadPlan",
            display_name="DiTFastAttn Load Plan",
            category=CATEGORY,
            description="A plan from the plans folders (the pack's plans/ and models/ditfa_plans), or pasted "
                        "as JSON (the pasted text wins when not empty). Plans are validated strictly.",
            inputs=[
                io.Combo.Input("plan_file", options=list_plans() or [""],
                               tooltip="A .json plan from the plans folders."),
                io.String.Input("plan_json", multiline=True, default="",
                                tooltip="Plan JSON; when not empty it is used instead of the file."),
            ],
            outputs=[DitfaPlan.Output(display_name="plan")],
        )

    @classmethod
    def fingerprint_inputs(cls, plan_file: str, plan_json: str) -> Any:
        """Reload when the file changes on disk, not only when its name does."""
        if plan_json.strip():
            return plan_json
        path = find_plan(plan_file) if plan_file else None
        return (plan_file, os.path.getmtime(path)) if path else plan_file

    @classmethod
    def execute(cls, plan_file: str, plan_json: str) -> io.NodeOutput:
        if plan_json.strip():
            plan = Plan.from_json(plan_json)
        elif plan_file:
            plan = load_plan(plan_file)
        else:
            raise ValueError("DiTFastAttn Load Plan: choose a plan file or paste plan JSON")
        # ``ditfa_plan``: the plan's JSON for the front end's heatmap (web/ditfastattn.js), which also draws
        # plans chosen by file name, whose JSON the browser does not otherwise see.
        return io.NodeOutput(plan, ui={"text": [plan.summary()], "ditfa_plan": [plan.to_json()]})


class DiTFastAttnSavePlan(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiTFastAttnSavePlan",
            display_name="DiTFastAttn Save Plan",
            category=CATEGORY,
            description="Save a plan as JSON into models/ditfa_plans; never overwrites an existing file.",
            inputs=[
                DitfaPlan.Input("plan"),
                io.String.Input("filename_prefix", default="ditfa_plan",
                                tooltip="File name start; a number and .json are appended. No folders."),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, plan: Plan, filename_prefix: str) -> io.NodeOutput:
        name = save_plan(plan, filename_prefix)
        return io.NodeOutput(ui=ui.PreviewText(f"saved {name}: {plan.summary()}"))
