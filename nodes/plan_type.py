"""The DITFA_PLAN socket type: a validated ``Plan`` travelling between nodes."""

from __future__ import annotations

from comfy_api.latest import io

DitfaPlan = io.Custom("DITFA_PLAN")

CATEGORY = "model_patches/DiTFastAttn"
