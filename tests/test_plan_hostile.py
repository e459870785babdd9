"""Hostile plans (issue 10): plans come from shared workflows, so every one gets a PlanError that names
the field, quotes at most a few dozen characters of it, and is refused with bounded work."""

from __future__ import annotations

import json
import sys
import tracemalloc
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import plan_corpus

from ditfa_core.plan import MAX_CELLS, Plan, PlanError
from ditfa_core.plan import io as plan_io


@pytest.mark.parametrize("name", list(plan_corpus.hostile_texts()))
def test_every_hostile_plan_is_a_plan_error_with_a_short_message(name: str) -> None:
    text = plan_corpus.hostile_texts()[name]
    with pytest.raises(PlanError) as err:
        Plan.from_json(text)
    assert len(str(err.value)) < 400, str(err.value)[:400]


@pytest.mark.parametrize(("name", "field"), [
    ("400-digit integer in a number field", "calibration.cfg"),
    ("400-digit integer in an integer field", "model.n_image_tokens"),
    ("4,000-digit grid dimensions", "model.grid[0]"),
    ("7 MB string in a field", "calibration.created"),
    ("7 MB unknown key", "cost: unexpected key"),
    ("1,000,000 layers", "model.num_layers"),
    ("toString strategy", "grid step 0, layer 0: unknown strategy 'toString'"),
    ("integer field written 3.0", "steps: expected an integer"),
])
def test_the_error_names_the_field(name: str, field: str) -> None:
    with pytest.raises(PlanError, match=field.replace("[", r"\[").replace("]", r"\]")):
        Plan.from_json(plan_corpus.hostile_texts()[name])


@pytest.mark.parametrize("name", ["1000 x 1000 grid", "100,000-deep array in a calibration field",
                                  "5,000-digit integer"])
def test_oversized_texts_are_refused_before_the_json_parser_runs(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_parse(*_a: object, **_k: object) -> None:
        raise AssertionError("json.loads ran on a text the size checks should have refused")

    text = plan_corpus.hostile_texts()[name]
    if name == "5,000-digit integer":   # small enough to parse: json refuses it, as a PlanError
        with pytest.raises(PlanError, match="not JSON"):
            Plan.from_json(text)
        return
    monkeypatch.setattr(plan_io.json, "loads", no_parse)
    with pytest.raises(PlanError):
        Plan.from_json(text)


def test_the_largest_accepted_plan_reads_in_bounded_memory() -> None:
    """MAX_CELLS cells (25 steps x 10,000 layers) is accepted; the reader's peak allocation stays under
    64 MiB (the 1000 x 1000 grid it replaced took ~80 MB before being accepted)."""
    text = plan_corpus.big_grid_text(25, 10_000)
    assert MAX_CELLS == 25 * 10_000
    tracemalloc.start()
    try:
        plan = Plan.from_json(text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert plan.steps == 25 and peak < 64 * 2**20, peak


def test_quoted_values_are_capped() -> None:
    doc = plan_corpus.valid_docs()[0]
    doc["calibration"]["window"]["kind"] = "w" * 100_000
    with pytest.raises(PlanError) as err:
        Plan.from_json(json.dumps(doc))
    assert "(100002 characters)" in str(err.value) and len(str(err.value)) < 200
