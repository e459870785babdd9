"""The benchmark suites run (``--smoke``: CPU/CI size) and report what they promise.

Timings are never asserted (speed is read from the tables, not tested); the FLOPs fractions are, since
the engine's accounting is exact. The e2e suite runs when ComfyUI is found, else skips with the harness's
message on how to enable it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # helpers sit next to this file, not in a package

from comfy_host import require_comfyui

from ditfa_core.flops import plan_flops_fraction
from ditfa_core.plan import Cost, ModelInfo, Plan
from ditfa_core.strategies import Strategy
from tools.benchmarks.__main__ import main
from tools.benchmarks.e2e import MODELS, PIXART_2K, synthesise_grid, with_depth


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run_suite(tmp_path: Path, suite: str, *extra: str) -> dict:
    out = tmp_path / f"{suite}.json"
    main([suite, "--smoke", "--device", "cpu", "--json", str(out), *extra])
    result = json.loads(out.read_text())
    env = result["environment"]
    assert env["torch"] == torch.__version__ and env["threads"] >= 1 and env["device"] == "cpu"
    assert result["args"]["smoke"] is True
    return result


def test_kernels_suite_reports_every_strategy(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    result = run_suite(tmp_path, "kernels")
    rows = result["strategy_rows"]
    assert {r["strategy"] for r in rows} == {"FULL", "FULL+residual", "ASC", "WA-RS", "WA-RS+ASC", "AST"}
    assert {r["head_dim"] for r in rows} == {64, 72}
    assert all(r["fallbacks"] == 0 and r["ms"] > 0 for r in rows)
    pairs = {r["kind"]: r["flops_fraction"] for r in result["window_rows"]}
    for r in rows:
        expected = {"FULL": 1.0, "ASC": 0.5, "AST": 0.0}.get(r["strategy"])
        if r["strategy"] == "FULL+residual":
            expected = 1.0 + pairs[r["window"]]
        elif r["strategy"] == "WA-RS":
            expected = pairs[r["window"]]
        elif r["strategy"] == "WA-RS+ASC":
            expected = pairs[r["window"]] / 2
        assert r["flops_fraction"] == pytest.approx(expected), r
    assert "| WA-RS+ASC |" in capsys.readouterr().out


def test_calibration_suite_times_both_searches(tmp_path: Path) -> None:
    rows = run_suite(tmp_path, "calibration")["rows"]
    assert {r["mode"] for r in rows} == {"fast", "greedy"}
    for r in rows:
        assert r["calibration_s"] > 0 and r["generations"] > 0 and r["forwards_per_eval"] >= 1
        assert 0.0 <= r["plan_flops_fraction"] <= 2.0


@pytest.mark.parametrize(("guided", "target"), [(True, PIXART_2K[-1]), (True, 0.6), (False, 0.5)])
def test_synthesised_plans_hit_the_target_flops(guided: bool, target: float) -> None:
    grid, fraction = synthesise_grid(20, 28, target, 0.125, guided)
    assert fraction == pytest.approx(plan_flops_fraction(grid, 0.125, 0.5 if guided else 1.0))
    assert target - 0.02 <= fraction <= target
    assert all(s is Strategy.FULL for s in grid[0])
    assert guided == any(s.shares_cfg for row in grid for s in row)
    Plan(ModelInfo("pixart_sigma", 28, 16, 64), [[s.value for s in row] for row in grid], Cost(fraction))


def test_e2e_suite_through_comfyui(tmp_path: Path) -> None:
    require_comfyui()
    rows = run_suite(tmp_path, "e2e")["rows"]
    assert {r["model"] for r in rows} == {"pixart_sigma_smoke", "flux_smoke", "wan21_smoke"}
    for r in rows:
        assert r["latency_s"] > 0
        if r["config"] == "all-FULL":
            assert r["note"].startswith("bit-identical") and r["engine_flops"] == 1.0
        elif r["config"].startswith("D"):
            # The plan is priced on the call's real layout (Flux: text joins the sequence), so the engine
            # spends exactly what it promises.
            assert r["engine_flops"] == pytest.approx(r["plan_flops"], abs=1e-9), r
            assert r["engine_flops"] < 1.0 and r["fallbacks"] == 0 and r["attention_s"] > 0
    assert any(r["config"] == "EasyCache" for r in rows)


def test_depth_override_keeps_the_real_geometry_but_the_block_count() -> None:
    """``--depth`` lets a CPU time real width, heads and tokens: only the block-count keys change."""
    for name, keys in (("pixart_sigma_1k", ("depth",)), ("flux_1k", ("depth", "depth_single_blocks")),
                       ("wan21_1.3b_480p", ("num_layers",))):
        spec = MODELS[name]
        small = with_depth(spec, 2)
        assert {k: v for k, v in small.unet.items() if spec.unet[k] != v} == dict.fromkeys(keys, 2)
        assert small.latent == spec.latent and with_depth(spec, 0) is spec
