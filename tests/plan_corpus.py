"""Plan texts for the reader tests: valid plans, the hostile plans of issue 10, and mutations of both.

Shared by tests/test_plan_hostile.py (the server), tests/test_web_plan_reader.py (the front end against
the server) and tests/test_plan_fuzz.py (property-based: many mutations).
"""

from __future__ import annotations

import copy
import json
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

from ditfa_core.plan import MAX_CELLS, MAX_DEPTH, MAX_DIM, MAX_TEXT_BYTES, Plan, PlanError
from ditfa_core.strategies import Strategy

WEB_READER = Path(__file__).resolve().parent / "web_reader.mjs"


def readme_doc() -> dict[str, Any]:
    """The example of plans/README.md (head-wise cells, a calibration record) as a JSON value."""
    readme = (Path(__file__).resolve().parent.parent / "plans" / "README.md").read_text(encoding="utf-8")
    return json.loads(readme.split("```json\n", 1)[1].split("```", 1)[0])


def valid_docs() -> list[dict[str, Any]]:
    """A few valid plans of different shapes."""
    head = readme_doc()
    plain = copy.deepcopy(head)
    plain["grid"] = [["FULL", "FULL", "FULL"], ["WA_RS", "AST", "ASC"], ["WA_RS_ASC", "ASC", "FULL"],
                     ["AST", "FULL", "WA_RS"]]
    bare = copy.deepcopy(plain)
    bare["calibration"] = None
    bare["model"]["grid"] = None
    bare["cost"]["window_pair_fraction"] = None
    return [head, plain, bare]


def big_grid_text(steps: int, layers: int) -> str:
    """An otherwise valid plan of ``steps`` x ``layers`` FULL cells."""
    doc = valid_docs()[2]
    doc["steps"], doc["model"]["num_layers"] = steps, layers
    doc["grid"] = [["FULL"] * layers for _ in range(steps)]
    return json.dumps(doc)


def headwise_text(steps: int, layers: int, heads: int, seed: int = 0) -> str:
    """A valid head-wise plan: step 0 all FULL, later cells random per head (every fifth layer a
    layer-wise cell, as a head-wise plan may mix them)."""
    rng = random.Random(seed)
    later = ["FULL", "AST", "ASC", "ARROW", "ARROW_ASC"]
    doc = valid_docs()[2]
    doc["steps"], doc["model"]["num_layers"], doc["model"]["num_heads"] = steps, layers, heads

    def cell(layer: int) -> str | list[str]:
        return [rng.choice(later) for _ in range(heads)] if layer % 5 else rng.choice(later)

    doc["grid"] = [["FULL"] * layers] + [[cell(layer) for layer in range(layers)] for _ in range(steps - 1)]
    return json.dumps(doc)


def hostile_texts() -> dict[str, str]:
    """The hostile plans of issue 10 (and their kin), by name; every one must be refused."""
    base = valid_docs()[0]

    def with_(path: list[Any], value: Any) -> str:
        doc = copy.deepcopy(base)
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return json.dumps(doc)

    text = json.dumps(base)
    deep = "[" * 100_000 + "]" * 100_000
    return {
        "400-digit integer in a number field": with_(["calibration", "cfg"], 10**400),
        "400-digit integer in an integer field": with_(["model", "n_image_tokens"], 10**400),
        "4,000-digit grid dimensions": with_(["model", "grid"], [10**3999, 10**3999, 1]),
        "5,000-digit integer": text.replace('"cfg": 4.5', '"cfg": ' + "9" * 5000),
        "7 MB string in a field": with_(["calibration", "created"], "x" * 7_000_000),
        "7 MB unknown key": with_(["cost", "k" * 7_000_000], 1),
        "1000 x 1000 grid": big_grid_text(1000, 1000),
        "100,000-deep array in a calibration field": with_(["calibration", "search"], 0).replace(
            '"search": 0', '"search": ' + deep),
        f"{MAX_DEPTH + 1}-deep array": with_(["calibration", "search"], 0).replace(
            '"search": 0', '"search": ' + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)),
        "toString strategy": with_(["grid", 0, 0], "toString"),
        "__proto__ strategy": with_(["grid", 0, 0], "__proto__"),
        "constructor strategy in a head-wise cell": with_(["grid", 1, 2], ["constructor", "FULL"]),
        "__proto__ key": text.replace('"cost": {', '"cost": {"__proto__": {}, '),
        "toString key": text.replace('"model": {', '"model": {"toString": 1, '),
        "duplicate key": text.replace('"cfg": 4.5', '"cfg": 4.5, "cfg": 4.5'),
        "integer field written 3.0": text.replace('"steps": 4,', '"steps": 4.0,', 1),
        "integer field written 4e0": text.replace('"num_layers": 3', '"num_layers": 3e0'),
        "boolean for an integer": with_(["version"], True),
        "blank name": with_(["calibration", "sampler"], " \t\r\n"),
        "time that is not a date": with_(["calibration", "created"], "2025-02-30T00:00:00"),
        "1,000,000 layers": with_(["model", "num_layers"], 1_000_000),
        f"{MAX_CELLS + 1} cells": big_grid_text(1, MAX_CELLS + 1) if MAX_CELLS + 1 <= MAX_DIM
        else big_grid_text((MAX_CELLS // MAX_DIM) + 1, MAX_DIM),
        "over 8 MiB": " " * (MAX_TEXT_BYTES + 1),
        "NaN": text.replace('"cfg": 4.5', '"cfg": NaN'),
        "trailing garbage": text + "x",
        "leading no-break space": "\u00a0" + text,
    }


def accepted(text: str) -> bool:
    """Whether the server reads ``text`` as a plan; any exception but PlanError propagates."""
    try:
        Plan.from_json(text)
    except PlanError:
        return False
    return True


def node() -> str | None:
    return shutil.which("node")


def web_accepts(texts: list[str], tmp: Path) -> list[bool]:
    """Whether web/ditfa_plan.js's parsePlan reads each text as a plan (one node process for all)."""
    src, out = tmp / "texts.json", tmp / "accepted.json"
    src.write_text(json.dumps(texts), encoding="utf-8")
    subprocess.run([node(), str(WEB_READER), str(src), str(out)], check=True, timeout=600)
    return json.loads(out.read_text(encoding="utf-8"))


def mutate(doc: dict[str, Any], rng: random.Random) -> str:
    """One random mutation of ``doc`` as JSON text: a value replaced, a key dropped or added, a grid
    reshaped, or the text cut, spliced or given a number in another spelling."""
    doc = copy.deepcopy(doc)
    kind = rng.randrange(6)
    if kind <= 2:
        paths = list(_paths(doc))[1:]   # not the root
        path = rng.choice(paths)
        parent = _at(doc, path[:-1])
        if kind == 0:
            parent[path[-1]] = rng.choice(_VALUES)(rng)
        elif kind == 1 and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[rng.choice(_KEYS)] = rng.choice(_VALUES)(rng)
        else:
            parent.insert(path[-1], rng.choice(_VALUES)(rng))
        return json.dumps(doc, allow_nan=True)
    if kind == 3:
        steps, layers = rng.choice([(1, 1), (2, 3), (doc["steps"], doc["model"]["num_layers"] + 1)])
        names = [s.value for s in Strategy]
        doc["grid"] = [[rng.choice(names) for _ in range(layers)] for _ in range(steps)]
        doc["steps"] = rng.choice([steps, steps + 1])
        doc["model"]["num_layers"] = rng.choice([layers, layers - 1])
        if doc["calibration"] is not None:
            doc["calibration"]["steps"] = rng.choice([steps, doc["calibration"]["steps"]])
        return json.dumps(doc)
    text = json.dumps(doc)
    at = rng.randrange(len(text) + 1)
    if kind == 4:
        splice = rng.choice(['"', ",", "]", "}", "[", "{", "\\", "\x00", "\u00a0", "1", ".0", ""])
        return text[:at] + splice + text[at + rng.randrange(3):]
    numbers = [m for m in range(len(text)) if text[m].isdigit() and not text[m - 1].isdigit()]
    at = rng.choice(numbers) if numbers else at
    end = at
    while end < len(text) and (text[end].isdigit() or text[end] in ".eE+-"):
        end += 1
    spelling = rng.choice(["3.0", "1e2", "-0", "1e400", "0.5", "10000000000000000000001", "2147483648",
                           "Infinity", "-1"])
    return text[:at] + spelling + text[end:]


def _paths(value: Any, prefix: tuple = ()) -> Any:
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _paths(item, (*prefix, i))


def _at(value: Any, path: tuple) -> Any:
    for key in path:
        value = value[key]
    return value


_KEYS = ["__proto__", "constructor", "toString", "hasOwnProperty", "extra", "", "grid", "valueOf"]
_VALUES = [
    lambda r: r.choice([0, 1, -1, 2, 3, 4, 16, 2**31 - 1, 2**31, 10**20, 10**400, MAX_DIM, MAX_DIM + 1]),
    lambda r: r.choice([0.0, 0.5, 1.0, 2.0, 3.0, -0.5, 1e308, 2.5, 4.5]),
    lambda r: r.choice([True, False, None]),
    lambda r: r.choice(["", " ", "\u00a0", "\t", "FULL", "AST", "WA_RS", "ASC", "WA_RS_ASC", "full", "wa-rs",
                        "toString", "__proto__", "constructor", "band", "nbhd", "dit", "flux",
                        "2025-01-02T03:04:05Z", "2025-13-01", "2024-02-29", "2023-02-29",
                        "x" * r.randrange(200)]),
    lambda r: [r.choice(["FULL", "AST", 1, None, [], "__proto__"]) for _ in range(r.randrange(5))],
    lambda r: r.choice([{}, {"a": 1}, {"__proto__": 1}, {"kind": "band", "fraction": 0.5, "radius": None}]),
    lambda r: _nested(r.randrange(1, 30)),
]


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value
