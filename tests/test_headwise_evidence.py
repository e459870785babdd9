"""``tools/headwise_evidence.py --quick`` runs and reports what it promises, so the script cannot rot.

Timings are never asserted (speed is read from its tables); the FLOPs the engine reports are, since its
accounting is exact. The host part needs ComfyUI (``COMFYUI_PATH``) and is marked slow (it calibrates).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ditfa_core.windows import TokenLayout, WindowSpec
from tools import headwise_evidence as evidence


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()
    yield
    assert torch.get_num_threads() == threads, "the script must restore the thread count"


def test_quick_kernel_rows_price_each_head_pattern(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "k.json"
    evidence.main(["--quick", "--parts", "kernels", "--threads", "1", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["quick"] and result["host"] is None and "load average" in result["machine"]["load"]
    sizes = evidence.QUICK
    pairs = WindowSpec("band", sizes.fraction).resolve(TokenLayout(sizes.side**2, grid=(1, sizes.side,
                                                                                         sizes.side)))
    pair_fraction = pairs.pair_count() / sizes.side**4
    rows = result["kernels"]["rows"]
    assert [r["pattern"] for r in rows] == list(evidence.head_patterns(sizes.heads))
    for r in rows:
        k = r["windowed_heads"]
        assert math.isclose(r["flops_fraction"], 1 - k / sizes.heads * (1 - pair_fraction), rel_tol=1e-12)
        assert r["ms"]["min"] > 0 and r["ms"]["min"] <= r["ms"]["median"] <= r["ms"]["max"]
        assert math.isclose(r["lat_per_flops"], r["latency_fraction"]["median"] / r["flops_fraction"])
    assert rows[0]["latency_fraction"]["median"] == 1.0
    assert "| lat/FLOPs |" in capsys.readouterr().out


@pytest.mark.slow
def test_quick_host_pairs_layer_and_head_wise_plans(tmp_path: Path) -> None:
    from comfy_host import require_comfyui

    require_comfyui()
    out = tmp_path / "h.json"
    evidence.main(["--quick", "--parts", "host", "--json", str(out)])
    rows = json.loads(out.read_text())["host"]["rows"]
    assert [r["plan"] for r in rows] == ["layer-wise", "head-wise"] * len(evidence.QUICK.layer_deltas)
    for r in rows:
        assert r["heads"] == evidence.QUICK.host_heads and r["fallbacks"] == 0
        assert math.isclose(r["flops_spent"], r["flops_promised"], rel_tol=1e-9)
        assert math.isfinite(r["rel_l1"]) and r["generations"] <= 3
