"""FULL: dense attention, the uncompressed computation (and the source of WA-RS residuals)."""

from .base import StrategySpec

SPEC = StrategySpec("FULL", "FULL", (222, 222, 222), order=0)
