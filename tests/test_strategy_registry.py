"""The strategy registry: every rule comes from the records, and a new strategy is one new module."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ditfa_core.strategies import GREEDY_ORDER, HEADWISE_CANDIDATES, SPECS, Op, Strategy, StrategySpec

ROOT = Path(__file__).resolve().parent.parent


def test_vocabulary_is_the_registry_in_order():
    assert [s.value for s in Strategy] == list(SPECS)
    assert list(SPECS)[:5] == ["FULL", "AST", "WA_RS", "ASC", "WA_RS_ASC"]
    assert GREEDY_ORDER == (Strategy.AST, Strategy.WA_RS_ASC, Strategy.WA_RS, Strategy.ASC)   # Algorithm 1
    assert Strategy.FULL not in HEADWISE_CANDIDATES and Strategy.ARROW in HEADWISE_CANDIDATES


@pytest.mark.parametrize(("name", "cond", "uncond", "cost"), [
    ("FULL", Op.DENSE, Op.DENSE, 1.0), ("AST", Op.REUSE, Op.REUSE, 0.0), ("WA_RS", Op.WINDOW, Op.WINDOW, 0.1),
    ("ASC", Op.DENSE, Op.SHARE, 0.5), ("WA_RS_ASC", Op.WINDOW, Op.SHARE, 0.05),
    ("ARROW", Op.WINDOW, Op.WINDOW, 0.1), ("ARROW_ASC", Op.WINDOW, Op.SHARE, 0.05),
])
def test_each_record_gives_op_and_cost(name, cond, uncond, cost):
    s = Strategy(name)
    assert (s.op(False), s.op(True)) == (cond, uncond)
    assert s.cost(0.1, 0.5) == pytest.approx(cost)


def test_inconsistent_records_are_refused():
    with pytest.raises(ValueError, match="only a window strategy adds the residual"):
        StrategySpec("X", "x", (0, 0, 0), order=99, adds_residual=True)
    with pytest.raises(ValueError, match="runs no kernel exactly when it reuses"):
        StrategySpec("X", "x", (0, 0, 0), order=99, kernel="none")


def test_a_new_strategy_is_one_module(tmp_path):
    """Copy the engine, add one module, and a plan using the new name validates, runs and is costed."""
    shutil.copytree(ROOT / "ditfa_core", tmp_path / "ditfa_core",
                    ignore=shutil.ignore_patterns("__pycache__", "weights"))
    (tmp_path / "ditfa_core" / "strategies" / "half_window.py").write_text(textwrap.dedent('''
        """A test strategy: window + residual on the conditional rows (as WA_RS_ASC), another name."""
        from .base import StrategySpec

        SPEC = StrategySpec("HALF_WINDOW", "half window", (1, 2, 3), order=50, kernel="window",
                            adds_residual=True, shares_cfg=True, headwise=True)
    '''))
    script = textwrap.dedent('''
        import torch
        from ditfa_core.context import COND_UNCOND, CallContext
        from ditfa_core.engine import FastAttention
        from ditfa_core.flops import plan_flops_fraction
        from ditfa_core.plan import Cost, ModelInfo, Plan
        from ditfa_core.schedule import Schedule
        from ditfa_core.strategies import HEADWISE_CANDIDATES, Strategy
        from ditfa_core.windows import TokenLayout

        S = Strategy
        grid = [["FULL"], [["HALF_WINDOW", "FULL"]]]
        plan = Plan(ModelInfo("x", 1, 2, 64), grid, Cost(0.5))
        assert S.HALF_WINDOW in HEADWISE_CANDIDATES
        e = FastAttention(Schedule(plan.grid))
        layout = TokenLayout(64, grid=(1, 8, 8))
        for step in range(2):
            q = torch.randn(2, 2, 64, 8)
            e(q, q, q, CallContext(0, step, COND_UNCOND, layout, step))
        assert e.stats.chunks["share"] == 1 and e.stats.fallbacks == 0, e.stats
        from ditfa_core.windows import WindowSpec
        pairs = WindowSpec().resolve(layout).pair_count() / 64**2
        print(plan_flops_fraction(plan.grid, pairs), e.stats.flops_fraction, pairs)
    ''')
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    promised, spent, pairs = map(float, out.stdout.split())
    # Head 0: FULL with the window pass its step-1 residual needs (1 + w), then 0.5 x w; head 1: 1 + 1.
    assert promised == pytest.approx(((1 + pairs + 0.5 * pairs) + 2) / 2 / 2)
    assert spent == pytest.approx(promised)
