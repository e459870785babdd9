"""The plan file: which strategy each attention layer uses at each step, as one strict JSON document.

Plans travel inside workflows shared on the internet, so a plan is untrusted input. The official
code stores plans with ``torch.save`` (a pickle, i.e. code execution on load) and ties them to one
step count; here a plan is parsed by the JSON parser only, every field is type- and range-checked
with a message that names the field, and a plan made at one step count runs at any other by
mapping steps along the schedule. The format is documented in ``plans/README.md``.

Parts: ``fields`` (``PlanError``, limits, field checks), ``schema`` (the document and its validation),
``io`` (text in and out, the atomic file writer), ``resample`` (step mapping and history gaps).
"""

from .fields import (
    BLANK,
    MAX_CELLS,
    MAX_DEPTH,
    MAX_DIM,
    MAX_INT,
    MAX_ITEMS,
    MAX_QUOTE,
    MAX_TEXT_BYTES,
    Cell,
    Grid,
    PlanError,
)
from .schema import (
    FORMAT,
    SUPPORTED_VERSIONS,
    VERSION,
    WINDOW_KINDS,
    Calibration,
    Cost,
    ModelInfo,
    Plan,
    WindowSetting,
)

__all__ = [
    "BLANK", "FORMAT", "MAX_CELLS", "MAX_DEPTH", "MAX_DIM", "MAX_INT", "MAX_ITEMS", "MAX_QUOTE",
    "MAX_TEXT_BYTES", "SUPPORTED_VERSIONS", "VERSION", "WINDOW_KINDS", "Calibration", "Cell", "Cost",
    "Grid", "ModelInfo", "Plan", "PlanError", "WindowSetting",
]
