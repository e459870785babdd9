"""The plan file: round trips, every refusal path, step mapping, fit checks, head-wise cells."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ditfa_core.plan import (
    FORMAT,
    MAX_DIM,
    MAX_TEXT_BYTES,
    Calibration,
    Cost,
    ModelInfo,
    Plan,
    PlanError,
    WindowSetting,
)
from ditfa_core.plan.io import write_atomic
from ditfa_core.strategies import Strategy

F, AST, WA, ASC, WAC = Strategy.FULL, Strategy.AST, Strategy.WA_RS, Strategy.ASC, Strategy.WA_RS_ASC

MODEL = ModelInfo("dit", num_layers=3, num_heads=2, n_image_tokens=16, n_text_tokens=4, grid=(1, 4, 4))


def _calibration(steps: int) -> Calibration:
    return Calibration(
        steps=steps, sampler="euler", scheduler="normal", cfg=4.5, delta=0.05,
        window=WindowSetting("nbhd", 0.125, (0, 1, 1)), search="greedy", seconds=12.5, generations=2.0,
        created="2025-01-02T03:04:05+00:00", tool_version="0.1.0", resolution=(32, 32),
        latent_shape=(1, 4, 4, 4),
    )


def _plan() -> Plan:
    grid = (
        (F, F, F),
        (WA, AST, (ASC, WA)),
        (WAC, ASC, (WA, AST)),
        (AST, F, F),
    )
    return Plan(MODEL, grid, Cost.estimate(grid, 0.25), _calibration(4))


def _doc(**changes: object) -> dict:
    doc = json.loads(_plan().to_json())
    doc.update(changes)
    return doc


def _refused(doc: object, match: str) -> None:
    with pytest.raises(PlanError, match=match):
        Plan.from_json(json.dumps(doc) if not isinstance(doc, str) else doc)


# -- round trips ---------------------------------------------------------------------------------------


def test_json_round_trip_is_equal():
    plan = _plan()
    text = plan.to_json()
    again = Plan.from_json(text)
    assert again == plan
    assert again.to_json() == text
    assert json.loads(text)["format"] == FORMAT and json.loads(text)["version"] == 1
    assert '    ["FULL", "FULL", "FULL"]' in text  # one grid row per line


def test_file_round_trip_and_atomic_save(tmp_path):
    plan = _plan()
    path = tmp_path / "p.json"
    plan.save(path)
    plan.save(path)  # overwriting goes through os.replace
    assert Plan.load(path) == plan
    assert os.listdir(tmp_path) == ["p.json"]  # no temp file left behind


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "out.png"
    write_atomic(path, b"old")

    def broken(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, broken)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.png"]


@pytest.mark.parametrize("links", [True, False], ids=["hard link", "no links (FAT)"])
def test_an_exclusive_write_never_replaces_a_file(tmp_path, monkeypatch, links):
    if not links:
        def no_link(*_a):
            raise PermissionError("links not supported")
        monkeypatch.setattr(os, "link", no_link)
    path = tmp_path / "p.json"
    write_atomic(path, "first", exclusive=True)
    with pytest.raises(FileExistsError):
        write_atomic(path, "second", exclusive=True)
    assert path.read_text() == "first" and os.listdir(tmp_path) == ["p.json"]


def test_uncalibrated_full_plan_round_trip():
    plan = Plan.full(5, MODEL)
    assert plan.calibration is None and plan.cost.attn_flops_fraction == 1.0
    assert all(c is F for row in plan.grid for c in row) and plan.steps == 5
    assert Plan.from_json(plan.to_json()) == plan


def test_bytes_with_bom_and_constructor_normalises_lists():
    plan = _plan()
    assert Plan.from_json(b"\xef\xbb\xbf" + plan.to_json().encode()) == plan
    listed = Plan(MODEL, [["FULL"] * 3, ["WA_RS", "AST", ["FULL", "AST"]]], Cost(0.5))
    assert listed.grid[1] == (WA, AST, (F, AST))


def test_summary():
    text = _plan().summary()
    assert text.startswith("dit plan, 4 steps x 3 layers: FULL ")
    assert "2 head-wise cells" in text and "attention FLOPs" in text


# -- refusals ------------------------------------------------------------------------------------------


def test_refuses_non_json():
    _refused("{not json", "not JSON")


def test_refuses_non_object():
    _refused([1, 2], "must be a JSON object, got array")


def test_refuses_missing_format():
    doc = _doc()
    del doc["format"]
    _refused(doc, "no 'format' key")


def test_refuses_wrong_format():
    _refused(_doc(format="other-plan"), "format is 'other-plan', expected 'ditfastattn-plan'")


def test_refuses_unsupported_version():
    _refused(_doc(version=2), "unsupported plan version 2; this build reads version.s. 1")


def test_refuses_non_integer_version():
    _refused(_doc(version="1"), "version: expected an integer, got string")


def test_refuses_missing_key():
    doc = _doc()
    del doc["calibration"]["delta"]
    _refused(doc, "calibration: missing key.s. 'delta'")


def test_refuses_extra_key():
    _refused(_doc(comment="hi"), "plan: unexpected key.s. 'comment'")


def test_refuses_wrong_type():
    doc = _doc()
    doc["model"]["num_layers"] = "3"
    _refused(doc, "model.num_layers: expected an integer, got string")


def test_refuses_boolean_as_integer():
    doc = _doc()
    doc["model"]["num_heads"] = True
    _refused(doc, "model.num_heads: expected an integer, got boolean")


def test_refuses_row_count_mismatch():
    doc = _doc(steps=5)
    _refused(doc, "grid: has 4 steps .rows., 'steps' says 5")


def test_refuses_calibration_steps_mismatch():
    doc = _doc()
    doc["calibration"]["steps"] = 50
    _refused(doc, "calibration.steps is 50 but the grid has 4 steps")


def test_refuses_row_length_mismatch():
    doc = _doc()
    doc["grid"][2] = ["FULL", "FULL"]
    _refused(doc, "grid step 2: has 2 layers, model.num_layers is 3")


def test_refuses_unknown_strategy_naming_the_cell():
    doc = _doc()
    doc["grid"][3][1] = "WINDOW"
    _refused(doc, "grid step 3, layer 1: unknown strategy 'WINDOW'; expected one of FULL, AST")


def test_unknown_strategy_hints_the_canonical_name():
    doc = _doc()
    doc["grid"][1][0] = "wa-rs"
    _refused(doc, r"grid step 1, layer 0: unknown strategy 'wa-rs' \(did you mean 'WA_RS'\?\)")


def test_refuses_headwise_cell_of_wrong_length():
    doc = _doc()
    doc["grid"][1][2] = ["FULL", "WA_RS", "AST"]
    _refused(doc, "grid step 1, layer 2: a head-wise cell needs 2 strategies .model.num_heads., got 3")


def test_refuses_unknown_strategy_in_headwise_cell():
    doc = _doc()
    doc["grid"][1][2] = ["FULL", "NOPE"]
    _refused(doc, "grid step 1, layer 2, head 1: unknown strategy 'NOPE'")


def test_refuses_text_over_8_mib():
    _refused(" " * (MAX_TEXT_BYTES + 1), "plan too large")


def test_load_refuses_large_file_before_reading(tmp_path):
    path = tmp_path / "big.json"
    with open(path, "wb") as f:
        f.truncate(MAX_TEXT_BYTES + 1)
    with pytest.raises(PlanError, match=r"big.json: plan too large: \d+ bytes"):
        Plan.load(path)


def test_refuses_too_many_steps():
    doc = _doc(steps=MAX_DIM + 1)
    _refused(doc, "steps: must be between 1 and 10000")


def test_refuses_too_many_layers():
    doc = _doc()
    doc["model"]["num_layers"] = MAX_DIM + 1
    _refused(doc, "model.num_layers: must be between 1 and 10000, got 10001")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_refuses_nan_and_infinity(constant):
    text = _plan().to_json().replace('"cfg": 4.5', f'"cfg": {constant}')
    _refused(text, f"not a finite number: {constant}")


def test_refuses_overflowing_number():
    _refused(_plan().to_json().replace('"cfg": 4.5', '"cfg": 1e999'), "not a finite number: 1e999")


def test_refuses_duplicate_keys():
    _refused(_plan().to_json().replace('"cfg": 4.5', '"cfg": 4.5, "cfg": 7'), "duplicate key 'cfg'")


def test_refuses_deep_nesting():
    _refused("[" * 200_000 + "]" * 200_000, "not JSON")


def test_refuses_bad_created_time():
    doc = _doc()
    doc["calibration"]["created"] = "yesterday"
    _refused(doc, "calibration.created: not an ISO 8601 time: 'yesterday'")


def test_refuses_band_window_with_three_radii():
    doc = _doc()
    doc["calibration"]["window"] = {"kind": "band", "fraction": 0.125, "radius": [1, 1, 1]}
    _refused(doc, "calibration.window.radius: a band window takes one integer")


def test_every_registered_window_kind_is_a_plan_window():
    for kind in ("band", "nbhd", "tile"):
        doc = _doc()
        doc["calibration"]["window"] = {"kind": kind, "fraction": 0.125, "radius": None}
        assert Plan.from_dict(doc).calibration.window.kind == kind
    doc["calibration"]["window"]["kind"] = "disc"
    _refused(doc, "calibration.window.kind: expected one of band, nbhd, tile, got 'disc'")


def test_refuses_model_grid_inconsistent_with_tokens():
    doc = _doc()
    doc["model"]["grid"] = [1, 4, 5]
    _refused(doc, r"model.grid: \[1, 4, 5\] holds 20 tokens but model.n_image_tokens is 16")


def test_refuses_ast_at_step_zero():
    doc = _doc()
    doc["grid"][0][1] = "AST"
    _refused(doc, "grid step 0, layer 1: AST at step 0 has no earlier output to reuse")


def test_refuses_window_without_earlier_full():
    doc = _doc()
    doc["grid"][0][0] = "ASC"  # layer 0 becomes ASC, WA_RS, ...: no residual to add
    _refused(doc, "grid step 1, layer 0: WA_RS needs an earlier FULL step in its layer")


def test_refuses_headwise_window_without_earlier_full():
    doc = _doc()
    doc["grid"][0][2] = ["FULL", "ASC"]  # layer 2, head 1 becomes ASC, WA_RS, ...
    _refused(doc, "grid step 1, layer 2, head 1: WA_RS needs an earlier FULL step")


def test_load_names_the_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("[]")
    with pytest.raises(PlanError, match=r"bad\.json: a plan must be a JSON object"):
        Plan.load(path)


def test_never_unpickles(tmp_path):
    path = tmp_path / "plan.json"
    path.write_bytes(b"\x80\x04\x95\x00")  # a pickle header, as the official torch.save plans start
    with pytest.raises(PlanError, match="not JSON"):
        Plan.load(path)


# -- step mapping -------------------------------------------------------------------------------------


def _distinct_plan(steps: int) -> Plan:
    """Layer 0 walks FULL, AST, FULL, AST...: enough to read back which plan row a step mapped to."""
    model = ModelInfo("dit", num_layers=1, num_heads=1, n_image_tokens=4)
    grid = tuple((F,) if s % 2 == 0 else (AST,) for s in range(steps))
    return Plan(model, grid, Cost.estimate(grid, 0.25))


def test_plan_from_50_steps_applied_at_20():
    plan = _distinct_plan(50)
    rows = [plan.plan_step(s, 20) for s in range(20)]
    assert rows == [0, 2, 5, 7, 10, 12, 15, 17, 20, 22, 25, 27, 30, 32, 35, 37, 40, 42, 45, 47]
    got = [plan.strategy_at(s, 0, 20) for s in range(20)]
    assert got == [F if r % 2 == 0 else AST for r in rows]
    assert plan.resampled(20) == tuple((s,) for s in got)


def test_more_steps_than_the_plan_repeat_rows():
    plan = _distinct_plan(3)
    assert [plan.plan_step(s, 7) for s in range(7)] == [0, 0, 0, 1, 1, 2, 2]
    assert plan.plan_step(0, 1) == 0


def test_step_out_of_range_is_refused():
    plan = _distinct_plan(3)
    with pytest.raises(ValueError, match=r"step must be an integer in \[0, 5\), got 5"):
        plan.strategy_at(5, 0, 5)
    with pytest.raises(ValueError, match="total_steps must be an integer >= 1"):
        plan.resampled(0)


def test_resampling_promotes_a_window_step_whose_full_step_was_dropped():
    model = ModelInfo("dit", num_layers=1, num_heads=2, n_image_tokens=4)
    grid = ((ASC,), (F,), (WA,), (WA,), ((ASC, F),), ((WA, WA),))
    plan = Plan(model, grid, Cost.estimate(grid, 0.25))
    # 3 run steps map to plan rows 0, 2, 4: row 1 (the FULL) is dropped, so the first WA_RS becomes FULL
    assert [plan.plan_step(s, 3) for s in range(3)] == [0, 2, 4]
    assert plan.resampled(3) == ((ASC,), (F,), ((ASC, F),))
    assert plan.resampled(6) == grid
    # head-wise cells are promoted per head
    grid2 = ((ASC,), (F,), ((WA, F),), ((WA, WA),))
    plan2 = Plan(model, grid2, Cost.estimate(grid2, 0.25))
    assert [plan2.plan_step(s, 2) for s in range(2)] == [0, 2]
    assert plan2.resampled(2) == ((ASC,), ((F, F),))


def _one_layer(column: str) -> Plan:
    model = ModelInfo("dit", num_layers=1, num_heads=2, n_image_tokens=4)
    grid = tuple((Strategy(name),) for name in column.split())
    return Plan(model, grid, Cost.estimate(grid, 0.25))


def _run_column(plan: Plan, steps: int) -> str:
    return " ".join(row[0].value for row in plan.resampled(steps))


@pytest.mark.parametrize(("steps", "expect"), [
    (6, "FULL WA_RS WA_RS FULL WA_RS WA_RS"),
    (3, "FULL WA_RS FULL"),                        # rows 0 2 4: row 4's FULL (row 3) was skipped
    (2, "FULL FULL"),                              # rows 0 3
    (4, "FULL WA_RS FULL WA_RS"),                  # rows 0 1 3 4
    (5, "FULL WA_RS WA_RS FULL WA_RS"),            # rows 0 1 2 3 4
    (12, "FULL FULL WA_RS WA_RS WA_RS WA_RS FULL FULL WA_RS WA_RS WA_RS WA_RS"),
])
def test_a_window_step_uses_the_residual_of_its_own_full_row_or_runs_full(steps: int, expect: str):
    """The rule of plans/README.md: a WA-RS step adds the residual of the FULL step its plan row refers
    to (the last FULL row before it), or computes FULL, which then stands for that row."""
    assert _run_column(_one_layer("FULL WA_RS WA_RS FULL WA_RS WA_RS"), steps) == expect


def test_a_promoted_full_step_serves_the_window_steps_of_the_same_source():
    plan = _one_layer("FULL WA_RS WA_RS FULL WA_RS WA_RS WA_RS WA_RS")
    assert _run_column(plan, 4) == "FULL WA_RS FULL WA_RS"     # rows 0 2 4 6; row 4 stands for row 3


def test_strategy_at_refuses_headwise_cells():
    plan = _plan()
    assert plan.is_headwise
    assert plan.strategy_at(1, 0, 4) is WA
    assert plan.cell_at(1, 2, 4) == (ASC, WA)
    with pytest.raises(PlanError, match="grid step 1, layer 2 is head-wise"):
        plan.strategy_at(1, 2, 4)


# -- fitting ------------------------------------------------------------------------------------------


def _fields(info: ModelInfo) -> dict:
    return {k: getattr(info, k) for k in ModelInfo.__dataclass_fields__}


def test_check_fits_same_model():
    _plan().check_fits(**_fields(MODEL))
    _plan().check_fits(family="DIT", num_layers=3)   # fields not given are not compared


def test_check_fits_names_every_difference_without_saying_strict_in_adapt():
    other = ModelInfo("flux", num_layers=4, num_heads=3, n_image_tokens=16, n_text_tokens=4, grid=(1, 4, 4))
    with pytest.raises(PlanError) as err:
        _plan().check_fits(strict=False, **_fields(other))
    assert str(err.value) == (
        "plan does not fit the model: family: plan has 'dit', model has 'flux'; "
        "layers: plan has 3, model has 4; heads: plan has 2, model has 3"
    )


def test_check_fits_strict_lists_every_difference_adapt_accepts_the_layout():
    bigger = ModelInfo("DiT", num_layers=3, num_heads=4, n_image_tokens=64, n_text_tokens=8, grid=(1, 8, 8))
    with pytest.raises(PlanError) as err:
        _plan().check_fits(**_fields(bigger))
    assert str(err.value).startswith(
        "plan does not fit the model: heads: plan has 2, model has 4; n_image_tokens: plan has 16, model has "
        "64; n_text_tokens: plan has 4, model has 8; grid: plan has (1, 4, 4), model has (1, 8, 8) (strict")
    with pytest.raises(PlanError, match="heads") as err:
        _plan().check_fits(strict=False, **_fields(bigger))
    assert "strict" not in str(err.value) and "n_image_tokens" not in str(err.value)
    _plan().check_fits(strict=False, **{**_fields(bigger), "num_heads": 2})


def test_adapt_never_allows_other_layer_counts():
    fewer = ModelInfo("dit", num_layers=2, num_heads=2, n_image_tokens=16, n_text_tokens=4, grid=(1, 4, 4))
    with pytest.raises(PlanError, match="layers: plan has 3, model has 2"):
        _plan().check_fits(strict=False, **_fields(fewer))


def test_readme_example_is_a_valid_plan():
    readme = (Path(__file__).parent.parent / "plans" / "README.md").read_text(encoding="utf-8")
    example = readme.split("```json\n", 1)[1].split("```", 1)[0]
    assert Plan.from_json(example) == _plan()
    assert example == _plan().to_json()
