"""WA-RS + ASC (DiTFastAttn §3.5): WA-RS on the conditional rows, the unconditional rows receive
their output."""

from .base import StrategySpec

SPEC = StrategySpec(
    "WA_RS_ASC", "WA-RS + ASC", (152, 78, 163), order=4,
    kernel="window", adds_residual=True, shares_cfg=True, greedy_rank=1, headwise=True,
)
