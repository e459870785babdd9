"""ARROW + ASC: arrow attention on the conditional rows, the unconditional rows receive their output
(DiTFastAttnV2's head-wise candidates combined with CFG sharing)."""

from .base import StrategySpec

SPEC = StrategySpec(
    "ARROW_ASC", "ARROW + ASC", (202, 178, 214), order=6,
    kernel="window", shares_cfg=True, headwise=True,
)
