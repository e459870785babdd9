"""AST, attention sharing across timesteps (DiTFastAttn §3.3): reuse the layer's (or head's) output
of its last computed step; no kernel runs."""

from .base import StrategySpec

SPEC = StrategySpec(
    "AST", "AST (share across steps)", (55, 126, 184), order=1,
    kernel="none", reuses_output=True, greedy_rank=0, headwise=True,
)
