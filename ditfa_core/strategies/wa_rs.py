"""WA-RS, window attention with residual sharing (DiTFastAttn §3.2): the window output plus the
residual full - window cached at the layer's most recent FULL step. In text+image attention the
window keeps text rows and columns full, i.e. DiTFastAttnV2's arrow attention with the residual."""

from .base import StrategySpec

SPEC = StrategySpec(
    "WA_RS", "WA-RS (window + residual)", (255, 127, 0), order=2,
    kernel="window", adds_residual=True, greedy_rank=2, headwise=True,
)
