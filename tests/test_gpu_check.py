"""The GPU check's dry run: the same sections on the CPU at toy sizes, so that the first GPU run does
not fail on a typo. The e2e sections run through the real host when ComfyUI is found, else they
record why they were skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools import gpu_check


def test_dry_run_runs_every_section(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    report = gpu_check.main(["--dry-run", "--out", str(tmp_path)])
    assert report is not None
    assert json.loads((tmp_path / "gpu_check.json").read_text())["sections"].keys() == \
        {s.name for s in gpu_check.SECTIONS}
    sections = report["sections"]
    assert all(s["status"] == "ok" for s in sections.values()), {k: s["status"] for k, s in sections.items()}

    tests = sections["kernel_tests"]["rows"]
    assert tests and all(t["outcome"] == "passed" for t in tests)
    table = sections["table2"]
    assert {(r["tokens"], r["kind"]) for r in table["rows"]} == {(n, k) for n in (256, 576)
                                                                 for k in ("band", "nbhd")}
    assert {r["strategy"] for r in table["strategy_rows"]} >= {"FULL", "WA-RS", "WA-RS+ASC", "AST"}
    heads = sections["headwise"]["rows"]
    assert {r["windowed_heads"] for r in heads} >= {0, 4} and all(0 < r["flops_fraction"] <= 1 for r in heads)

    skipped_steps = []
    for name in gpu_check.E2E_MODELS:
        section = sections[name]
        if section.get("skipped"):
            assert "COMFYUI_PATH" in section["skipped"] or "ComfyUI" in section["skipped"]
            continue
        rows = {r["config"]: r for r in section["rows"]}
        assert {"unpatched", "all-FULL", "D6 (24%)", "EasyCache", "EasyCache + D6 (24%)"} <= rows.keys()
        assert rows["all-FULL"]["note"].startswith("bit-identical")
        assert rows["D6 (24%)"]["engine_flops"] < 1.0 and rows["D6 (24%)"]["fallbacks"] == 0
        assert 0 < rows["EasyCache"]["forwards"] <= rows["unpatched"]["forwards"]
        skipped_steps.append(rows["unpatched"]["forwards"] - rows["EasyCache"]["forwards"])
        assert all(r["repeats"] == 2 and r["latency_min_s"] <= r["latency_s"] for r in rows.values())

    # Forced EasyCache skips what it may: at 4 steps that is one step of Flux (PixArt's schedule, none).
    assert not skipped_steps or max(skipped_steps) > 0, "EasyCache skipped no step"
    printed = capsys.readouterr().out.rstrip()
    assert printed.splitlines()[-1].startswith("|"), "the tables are printed last"
    assert "GPU check (dry run, CPU)" in printed
