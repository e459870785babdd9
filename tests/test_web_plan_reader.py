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
    assert "STRATEGY_NAMES" not in consts   # the generated vocabulary's (tests/test_workflows_web.py)
    assert re.search(r'import \{[^}]*\bSTRATEGY_NAMES\b[^}]*\} from "\./ditfa_vocabulary\.js";', js)
    assert re.search(r'import \{[^}]*\bWINDOW_KINDS\b[^}]*\} from "\./ditfa_vocabulary\.js";', js)
    vocabulary = (WEB / "ditfa_vocabulary.js").read_text(encoding="utf-8")
    kinds = re.search(r"export const WINDOW_KINDS = Object.freeze\((\[[^\]]*\])\);", vocabulary)
    assert kinds and json.loads(kinds.group(1)) == list(plan_module.WINDOW_KINDS) == ["band", "nbhd", "tile"]
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


DRAW_RECORDED = """
import { drawPanel, gridOrigin, layout } from "WEB/ditfa_heatmap.js";
import { parsePlan } from "WEB/ditfa_plan.js";
import { readFileSync } from "node:fs";
const rects = [];
const ctx = { fillStyle: "", measureText: (t) => ({ width: 6 * t.length }),
  fillRect(x, y, w, h) { rects.push([x, y, w, h, this.fillStyle]); } };
for (const k of ["save", "restore", "fillText", "strokeRect"]) ctx[k] = () => {};
const parsed = parsePlan(readFileSync(process.argv[2], "utf8"));
if (!parsed.plan) throw new Error(parsed.error);
const width = Number(process.argv[3]);
const height = drawPanel(ctx, parsed, 0, 0, width, "");
const at = layout(parsed.plan, width);
console.log(JSON.stringify({ rects, height, layout: at, origin: gridOrigin(ctx, parsed.plan, width) }));
"""


def _draw_recorded(tmp_path: Path, text: str, width: int = 400) -> dict:
    """Draw ``text`` with a context that records every fillRect with its colour (later ones on top)."""
    script = tmp_path / "draw_recorded.mjs"
    script.write_text(DRAW_RECORDED.replace("WEB", WEB.as_uri()), encoding="utf-8")
    (tmp_path / "plan.json").write_text(text, encoding="utf-8")
    out = subprocess.run([plan_corpus.node(), str(script), str(tmp_path / "plan.json"), str(width)],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    return json.loads(out)


def _colour_at(drawn: dict, x: float, y: float) -> str:
    return next(r[4] for r in reversed(drawn["rects"]) if r[0] <= x < r[0] + r[2] and r[1] <= y < r[1] + r[3])


@needs_node
@pytest.mark.parametrize(("layers", "heads", "shown"), [(24, 24, 24), (57, 24, 11), (24, 48, 29)])
def test_the_heatmap_draws_head_rows_inside_each_layer_band(tmp_path: Path, layers: int, heads: int,
                                                             shown: int) -> None:
    """SD3 (24 layers x 24 heads) draws every head, Flux (57 x 24) and 48 heads evenly sampled heads, in
    a 400 px node: the colour at (step, layer, drawn head row) is that head's, a 1 px separator parts
    two layer bands, and the panel stays under 1,000 px."""
    text = plan_corpus.headwise_text(28, layers, heads, seed=layers + heads)
    plan = plan_module.Plan.from_json(text)
    drawn = _draw_recorded(tmp_path, text)
    at, (ox, oy) = drawn["layout"], drawn["origin"].values()
    assert (at["cols"], at["rows"], at["headRows"]) == (28, layers, shown) and at["hh"] >= 1, at
    colours = {s: "#{:02x}{:02x}{:02x}".format(*s.colour) for s in Strategy}
    rng = random.Random(3)
    for _ in range(300):
        s, layer, row = rng.randrange(28), rng.randrange(layers), rng.randrange(shown)
        cell = plan.grid[s][layer]
        want = cell if isinstance(cell, Strategy) else cell[row * heads // shown]
        y = oy + layer * at["ch"] + row * at["hh"] + 0.5
        assert _colour_at(drawn, ox + s * at["cw"] + 0.5, y) == colours[want], (s, layer, row)
        separator = oy + layer * at["ch"] + shown * at["hh"] + 0.5
        assert _colour_at(drawn, ox + s * at["cw"] + 0.5, separator) == "#ffffff"
    assert drawn["height"] < 1000
    used = {s for row in plan.grid for cell in row for s in (cell if isinstance(cell, tuple) else (cell,))}
    legend = [r[4] for r in drawn["rects"] if r[1] > oy + layers * at["ch"]]   # the swatches under the grid
    assert legend == [colours[s] for s in Strategy if s in used] and len(legend) == 5


@needs_node
def test_the_heatmap_of_a_huge_headwise_plan_is_drawn_downsampled(tmp_path: Path) -> None:
    """25 steps x 100 layers x 100 heads (the cell cap): at most one rectangle per drawn pixel row."""
    drawn = _draw_recorded(tmp_path, plan_corpus.headwise_text(25, 100, 100))
    assert len(drawn["rects"]) <= 25 * 720 + 20 and drawn["height"] < 1000, drawn["height"]
