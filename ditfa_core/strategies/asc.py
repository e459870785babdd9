"""ASC, attention sharing across CFG (DiTFastAttn §3.4): the conditional rows are computed dense, the
unconditional rows receive their output."""

from .base import StrategySpec

SPEC = StrategySpec(
    "ASC", "ASC (share across CFG)", (77, 175, 74), order=3,
    shares_cfg=True, greedy_rank=3, headwise=True,
)
