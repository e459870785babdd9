"""The registry of compression strategies: one module per strategy, found at import.

Each module of this package (other than ``base``) defines ``SPEC``, a :class:`~.base.StrategySpec`.
The registry builds :class:`Strategy`, the plan file's vocabulary, from them: an enum of stable
strings whose members answer every question through their record (``Strategy.WA_RS.cost(...)``,
``.op(...)``, ``.gap(...)``, ``.predict(...)``, ``.colour``). Adding a strategy is adding one module
here (plus its tests); flops, schedules, plan validation, the searches, the heatmap and the web
vocabulary (``web/ditfa_vocabulary.js``, written by ``python -m ditfa_core.strategies``) follow.
"""

from __future__ import annotations

import enum
import importlib
import pkgutil
from typing import Any

from .base import Candidates, Op, StrategySpec


def _discover() -> tuple[StrategySpec, ...]:
    specs = []
    for info in pkgutil.iter_modules(__path__):
        if info.name in ("base", "__main__"):
            continue
        spec = getattr(importlib.import_module(f"{__name__}.{info.name}"), "SPEC", None)
        if not isinstance(spec, StrategySpec):
            raise TypeError(f"{__name__}.{info.name} must define SPEC = StrategySpec(...)")
        specs.append(spec)
    specs.sort(key=lambda s: s.order)
    for attr in ("name", "order"):
        values = [getattr(s, attr) for s in specs]
        if len(set(values)) != len(values):
            raise ValueError(f"two strategies share a {attr}: {values}")
    return tuple(specs)


SPECS: dict[str, StrategySpec] = {s.name: s for s in _discover()}


class _StrategyMember(str):
    """Behaviour of a ``Strategy`` member: its record's fields and methods, by delegation."""

    @property
    def spec(self) -> StrategySpec:
        return SPECS[self._value_]   # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(SPECS[self._value_], name)   # type: ignore[attr-defined]

    @classmethod
    def parse(cls, name: str | Strategy) -> Strategy:
        """The strategy named ``name`` (case-insensitive, '-', '+' and '_' interchangeable)."""
        if isinstance(name, cls):   # a str subclass whose str() is "Strategy.X" on Python 3.11
            return name
        key = str(name).strip().upper().replace("-", "_").replace("+", "_")
        try:
            return cls(key)   # type: ignore[call-arg]
        except ValueError:
            known = ", ".join(s.value for s in cls)   # type: ignore[attr-defined]
            raise ValueError(f"unknown strategy {name!r}; expected one of: {known}") from None


Strategy = enum.Enum(  # type: ignore[misc]
    "Strategy", [(name, name) for name in SPECS], type=_StrategyMember, module=__name__, qualname="Strategy",
)
Strategy.__doc__ = "What one attention layer (or head) does at one step; members delegate to their record."

GREEDY_ORDER: tuple[Strategy, ...] = tuple(
    Strategy(s.name) for s in sorted(SPECS.values(), key=lambda s: s.greedy_rank or 0)
    if s.greedy_rank is not None
)
"""Paper Algorithm 1 tries the candidates from the most to the least compressive:
S = [AST, WA-RS + ASC, WA-RS, ASC]; FULL is what remains when none passes."""

HEADWISE_CANDIDATES: tuple[Strategy, ...] = tuple(Strategy(s.name) for s in SPECS.values() if s.headwise)
"""What the head-wise search may give a head besides FULL (DiTFastAttnV2's candidates)."""


def vocabulary() -> dict[str, Any]:
    """The strategies as plain data for the front end: name, label, colour (#rrggbb), in order."""
    return {
        "strategies": [
            {"name": s.name, "label": s.label, "colour": "#{:02x}{:02x}{:02x}".format(*s.colour)}
            for s in SPECS.values()
        ]
    }


__all__ = [
    "GREEDY_ORDER", "HEADWISE_CANDIDATES", "SPECS", "Candidates", "Op", "Strategy", "StrategySpec",
    "vocabulary",
]
