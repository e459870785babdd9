"""ComfyUI's entry point for the pack's V3 nodes (``comfy_entrypoint``)."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .apply import DiTFastAttnApply
from .calibrate import DiTFastAttnCalibrate
from .plan_files import register
from .plan_nodes import DiTFastAttnLoadPlan, DiTFastAttnSavePlan


class DiTFastAttnExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [DiTFastAttnApply, DiTFastAttnCalibrate, DiTFastAttnLoadPlan, DiTFastAttnSavePlan]


def comfy_entrypoint() -> DiTFastAttnExtension:
    register()
    return DiTFastAttnExtension()
