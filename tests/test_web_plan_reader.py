"""The front end's plan reader (web/ditfa_plan.js) accepts exactly what the server's (Plan.from_json) does,
and the heatmap's drawing cost does not grow with the plan. Runs the JS in Node; skips without it."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import plan_corpus

from ditfa_core import plan as plan_module
from ditfa_core.strategies import Strategy

WEB = Path(__file__).resolve().parent.parent / "web"
needs_node = pytest.mark.skipif(plan_corpus.node() is None, reason="needs Node.js to run web/*.js")


def test_limits_and_names_are_the_servers() -> None:
    js = (WEB / "ditfa_plan.js").read_text(encoding="utf-8")
    consts = dict(re.findall(r"export const (\w+) = ([^;]+);", js))
    assert consts["MAX_TEXT_CHARS"] == "8 * 1024 * 1024" and plan_module.MAX_TEXT_BYTES == 8 * 1024 * 1024
    for name in ("MAX_DIM", "MAX_INT", "MAX_CELLS", "MAX_DEPTH"):
        assert int(consts[name].replace("_", "")) == getattr(plan_module, name), name
    assert consts["MAX_ITEMS"] == "MAX_CELLS + 256" and plan_module.MAX_ITEMS == plan_module.MAX_CELLS + 256
    assert json.loads(consts["STRATEGY_NAMES"]) == [s.value for s in Strategy]
    assert json.loads(consts["WINDOW_KINDS"]) == list(plan_module.WINDOW_KINDS)
    assert json.loads(consts["VERSIONS"]) == list(plan_module.SUPPORTED_VERSIONS)


@needs_node
def test_hostile_and_valid_plans_get_the_same_answer(tmp_path: Path) -> None:
    hostile = plan_corpus.hostile_texts()
    valid = [json.dumps(d) for d in plan_corpus.valid_docs()] + [plan_corpus.big_grid_text(25, 10_000)]
    texts = list(hostile.values()) + valid
    server = [plan_corpus.accepted(t) for t in texts]
    assert server == [False] * len(hostile) + [True] * len(valid), \
        [name for name, ok in zip(hostile, server, strict=False) if ok]
    assert plan_corpus.web_accepts(texts, tmp_path) == server


@needs_node
def test_mutated_plans_get_the_same_answer(tmp_path: Path) -> None:
    rng = random.Random(10)
    docs = plan_corpus.valid_docs()
    texts = [plan_corpus.mutate(rng.choice(docs), rng) for _ in range(600)]
    server = [plan_corpus.accepted(t) for t in texts]
    web = plan_corpus.web_accepts(texts, tmp_path)
    differ = [t[:300] for t, a, b in zip(texts, server, web, strict=True) if a != b]
    assert not differ, differ[:3]
    assert 0 < sum(server) < len(texts)


DRAW = """
import { drawPanel } from "WEB/ditfa_heatmap.js";
import { parsePlan } from "WEB/ditfa_plan.js";
import { readFileSync } from "node:fs";
let rects = 0;
const ctx = new Proxy({}, { get: (_, k) => k === "measureText" ? (t) => ({ width: 6 * t.length })
  : k === "fillRect" ? () => { rects += 1; } : () => {}, set: () => true });
const parsed = parsePlan(readFileSync(process.argv[2], "utf8"));
if (!parsed.plan) throw new Error(parsed.error);
const height = drawPanel(ctx, parsed, 0, 0, 400, "");
console.log(JSON.stringify({ rects, height }));
"""


@needs_node
def test_the_heatmap_of_a_huge_plan_is_drawn_downsampled(tmp_path: Path) -> None:
    """25 x 10,000 cells (the cell cap): a bounded number of rectangles, a panel of bounded height."""
    script = tmp_path / "draw.mjs"
    script.write_text(DRAW.replace("WEB", WEB.as_uri()), encoding="utf-8")
    (tmp_path / "plan.json").write_text(plan_corpus.big_grid_text(25, 10_000), encoding="utf-8")
    out = subprocess.run([plan_corpus.node(), str(script), str(tmp_path / "plan.json")], check=True,
                         capture_output=True, text=True, timeout=120).stdout
    result = json.loads(out)
    assert result["rects"] <= 25 * 240 + 10 and result["height"] < 1000, result   # 240 drawn rows
