"""Property-based fuzz of the plan reader (issue 10): 10,000 mutated plans; the server's reader raises
nothing but PlanError, and the front end's reader (web/ditfa_plan.js, run in Node when present) accepts
exactly the same ones. Slow: about a minute on a 2-core CPU. Run alone with
``python3 -m pytest -q -s tests/test_plan_fuzz.py`` to see the summary it prints."""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import plan_corpus  # noqa: E402

from ditfa_core.plan import Plan, PlanError  # noqa: E402

EXAMPLES = 10_000

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["FULL", "AST", "WA_RS", "ASC", "WA_RS_ASC", "toString", "__proto__", "", " ", "band",
                       "nbhd", "2025-01-02T03:04:05Z", "2024-02-29"]) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def mutated_plans(draw: Any) -> str:
    """A valid plan with one to three structural mutations (a value replaced by any JSON value, a key
    dropped or added), or the random text-level and shape mutations of plan_corpus.mutate."""
    doc = json.loads(json.dumps(draw(st.sampled_from(plan_corpus.valid_docs()))))
    if draw(st.booleans()):
        return plan_corpus.mutate(doc, random.Random(draw(st.integers(0, 2**32 - 1))))
    for _ in range(draw(st.integers(1, 3))):
        paths = list(plan_corpus._paths(doc))[1:]
        path = draw(st.sampled_from(paths))
        parent = plan_corpus._at(doc, path[:-1])
        action = draw(st.sampled_from(["replace", "drop", "add"]))
        if action == "replace" or not isinstance(parent, dict):
            parent[path[-1]] = draw(JSON_VALUES)
        elif action == "drop":
            del parent[path[-1]]
        else:
            parent[draw(st.sampled_from(["__proto__", "constructor", "x"]) | st.text(max_size=6))] = \
                draw(JSON_VALUES)
        if not isinstance(doc, dict):
            break
    return json.dumps(doc)


@pytest.mark.slow
def test_fuzz_the_plan_reader(tmp_path: Path) -> None:
    texts: list[str] = []
    outcome = {"accepted": 0, "PlanError": 0}
    slowest = [0.0]

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(mutated_plans())
    def read(text: str) -> None:
        start = time.perf_counter()
        try:
            Plan.from_json(text)
            outcome["accepted"] += 1
        except PlanError:
            outcome["PlanError"] += 1
        slowest[0] = max(slowest[0], time.perf_counter() - start)
        texts.append(text)

    read()
    assert len(texts) >= EXAMPLES
    print(f"\nplan reader fuzz: {len(texts)} mutated plans, {outcome['accepted']} accepted, "
          f"{outcome['PlanError']} PlanError, no other exception; slowest read {1000 * slowest[0]:.1f} ms")
    if plan_corpus.node() is None:
        pytest.skip("Node.js not found: the front end's reader was not compared")
    server = [plan_corpus.accepted(t) for t in texts]
    web = plan_corpus.web_accepts(texts, tmp_path)
    differ = [t[:200] for t, a, b in zip(texts, server, web, strict=True) if a != b]
    print(f"front end (Node): {sum(web)} accepted, {len(differ)} answers differ from the server's")
    assert not differ, differ[:5]
