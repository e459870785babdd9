"""The per-(step, layer) compression strategies of DiTFastAttn (paper §3.2-3.4).

A strategy says how one attention layer computes its output at one step. The names are the
plan file's vocabulary, so they are stable strings.
"""

from __future__ import annotations

import enum


class Strategy(str, enum.Enum):
    """What one attention layer does at one step.

    FULL       dense attention (and, when a later WA-RS step needs it, the residual full - window).
    AST        attention sharing across timesteps: reuse this layer's output of its last computed step.
    WA_RS      window attention plus the residual cached at this layer's most recent FULL step.
    ASC        attention sharing across CFG: compute the conditional rows only, reuse them for the others.
    WA_RS_ASC  both WA-RS and ASC.
    """

    FULL = "FULL"
    AST = "AST"
    WA_RS = "WA_RS"
    ASC = "ASC"
    WA_RS_ASC = "WA_RS_ASC"

    @property
    def uses_window(self) -> bool:
        return self in (Strategy.WA_RS, Strategy.WA_RS_ASC)

    @property
    def shares_cfg(self) -> bool:
        return self in (Strategy.ASC, Strategy.WA_RS_ASC)

    @property
    def computes(self) -> bool:
        """Whether the layer runs an attention kernel at all (everything but AST)."""
        return self is not Strategy.AST

    @classmethod
    def parse(cls, name: str | Strategy) -> Strategy:
        """The strategy named ``name`` (case-insensitive, '-', '+' and '_' interchangeable)."""
        if isinstance(name, Strategy):   # a str subclass whose str() is "Strategy.X" on Python 3.11
            return name
        key = str(name).strip().upper().replace("-", "_").replace("+", "_")
        try:
            return cls(key)
        except ValueError:
            known = ", ".join(s.value for s in cls)
            raise ValueError(f"unknown strategy {name!r}; expected one of: {known}") from None


# Paper Algorithm 1 tries the candidates from the most to the least compressive:
# S = [AST, WA-RS + ASC, WA-RS, ASC]; FULL is what remains when none passes.
GREEDY_ORDER: tuple[Strategy, ...] = (Strategy.AST, Strategy.WA_RS_ASC, Strategy.WA_RS, Strategy.ASC)
