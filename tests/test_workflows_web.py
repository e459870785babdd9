"""The front-end side without a browser: example workflows, the embedded-plan round trip, web/ assets.

* example_workflows/*.json (ComfyUI's template browser lists them): litegraph structure, links that
  agree with the nodes, node types of this pack or of ComfyUI, widget values that fit each node's
  inputs (when ComfyUI is available), every pack node used, an embedded plan that Plan.from_json reads.
* The plan of a Calibrate run, embedded in a Load Plan node of a workflow as the front end does it,
  survives saving and loading the workflow JSON and loads as the identical plan.
* web/ditfa_vocabulary.js is what ``python3 -m ditfa_core.strategies`` writes from the strategy registry
  now, and the other web modules take names, colours and labels from it; no web file evaluates code.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from comfy_host import REPO_ROOT, load_pack
from comfy_host import pack_module as mod

from ditfa_core import heatmap
from ditfa_core.plan import Plan
from ditfa_core.strategies import Strategy
from ditfa_core.strategies import __main__ as vocabulary_js

EXAMPLES = sorted((REPO_ROOT / "example_workflows").glob("*.json"))
WEB = REPO_ROOT / "web"
PACK_NODES = {"DiTFastAttnApply", "DiTFastAttnCalibrate", "DiTFastAttnLoadPlan", "DiTFastAttnSavePlan"}
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}  # virtual nodes of the front end
LOAD = "DiTFastAttnLoadPlan"


def _pack_node_ids() -> set[str]:
    """The node ids the pack declares, read from the sources (works without ComfyUI)."""
    ids = set()
    for path in (REPO_ROOT / "nodes").glob("*.py"):
        ids |= set(re.findall(r'node_id="(\w+)"', path.read_text(encoding="utf-8")))
    return ids


def _load(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _embedded_plans(wf: dict[str, Any]) -> list[str]:
    texts = [n["widgets_values"][1] for n in wf["nodes"] if n["type"] == LOAD]
    return [t for t in texts if isinstance(t, str) and t.strip()]


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 2, "example_workflows/ should hold the example workflows"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_a_consistent_litegraph_workflow(path: Path) -> None:
    wf = _load(path)
    for key in ("last_node_id", "last_link_id", "nodes", "links", "version"):
        assert key in wf, f"{path.name}: missing {key}"
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert len(nodes) == len(wf["nodes"]), "node ids must be unique"
    assert max(nodes) <= wf["last_node_id"]
    known = _pack_node_ids() | FRONTEND_ONLY
    for n in wf["nodes"]:
        for key in ("type", "pos", "size", "inputs", "outputs", "widgets_values", "mode"):
            assert key in n, f"{path.name}: node {n['id']} lacks {key}"
        if n["type"].startswith("DiTFastAttn"):
            assert n["type"] in known, f"{path.name}: unknown pack node {n['type']}"
    links = {}
    for link in wf["links"]:
        lid, src, src_slot, dst, dst_slot, kind = link
        assert lid not in links and lid <= wf["last_link_id"]
        links[lid] = link
        assert src in nodes and dst in nodes, f"{path.name}: link {lid} joins missing nodes"
        out = nodes[src]["outputs"][src_slot]
        inp = nodes[dst]["inputs"][dst_slot]
        assert lid in out["links"] and inp["link"] == lid, f"{path.name}: link {lid} disagrees with nodes"
        assert out["type"] == inp["type"] == kind
    for n in wf["nodes"]:
        for inp in n["inputs"]:
            assert inp["link"] is None or inp["link"] in links
        for out in n["outputs"]:
            assert all(lid in links for lid in out.get("links") or [])


def test_examples_cover_every_node_and_embed_a_plan() -> None:
    used = {n["type"] for p in EXAMPLES for n in _load(p)["nodes"]}
    assert used >= PACK_NODES, f"no example uses {sorted(PACK_NODES - used)}"
    embedded = [text for p in EXAMPLES for text in _embedded_plans(_load(p))]
    assert embedded, "one example should carry a plan in a Load Plan node"
    for text in embedded:
        plan = Plan.from_json(text)  # exactly the server's validation
        assert plan.to_json() == text, "embedded plans are stored in the canonical form"
        assert plan.steps >= 20 and plan.num_layers >= 28


def _widget_inputs(node_class: Any) -> list[str]:
    """The widget values a node saves, in order: widget inputs (links excluded), plus the
    control_after_generate value the front end adds after a seed."""
    types = node_class.INPUT_TYPES()
    names = []
    for section in ("required", "optional"):
        for name, spec in types.get(section, {}).items():
            kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
            if isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
                names.append(name)
                if opts.get("control_after_generate"):
                    names.append(f"{name}:control_after_generate")
    return names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_nodes_exist_in_comfyui_and_widgets_fit(pack: ModuleType, path: Path) -> None:
    import nodes

    load_pack(via_comfyui=True)
    for n in _load(path)["nodes"]:
        if n["type"] in FRONTEND_ONLY:
            continue
        assert n["type"] in nodes.NODE_CLASS_MAPPINGS, f"{path.name}: ComfyUI has no node {n['type']}"
        cls = nodes.NODE_CLASS_MAPPINGS[n["type"]]
        wanted = _widget_inputs(cls)
        assert len(n["widgets_values"]) == len(wanted), (
            f"{path.name}: {n['type']} has {len(n['widgets_values'])} widget values, inputs are {wanted}")
        for value, name in zip(n["widgets_values"], wanted, strict=True):
            spec = {**cls.INPUT_TYPES().get("required", {}), **cls.INPUT_TYPES().get("optional", {})}
            kind = spec[name][0] if name in spec else None
            ours = n["type"].startswith("DiTFastAttn") and name != "plan_file"
            if ours and isinstance(kind, list) and kind:
                assert value in kind, f"{path.name}: {n['type']}.{name}={value!r} not in {kind}"
        linked = {i["name"] for i in n["inputs"] if i["link"] is not None}
        required = {name for name, spec in cls.INPUT_TYPES().get("required", {}).items()
                    if name not in wanted}
        assert required <= linked, f"{path.name}: {n['type']} inputs {sorted(required - linked)} unlinked"


def test_embedded_plan_round_trip_through_workflow_json(pack: ModuleType) -> None:
    """Calibrate's UI output -> a Load Plan node's plan_json (what web/ditfastattn.js embeds) -> the
    saved workflow text -> loaded again -> Load Plan gives the identical plan."""
    from comfy_models import make_model

    tiny = make_model("flux")
    calibrate = mod(pack, "nodes.calibrate").DiTFastAttnCalibrate
    out = calibrate.execute(model=tiny.patcher, positive=tiny.positive, negative=tiny.negative,
                            latent_image={"samples": tiny.latent}, seed=0, steps=3, cfg=4.0,
                            sampler_name="euler", scheduler="simple", denoise=1.0, delta=0.5, window="band",
                            window_fraction=0.125, search="fast")
    plan = out[0]
    ui_json = out.ui["ditfa_plan"][0]
    assert type(plan).from_json(ui_json) == plan and out.ui["text"][0] == plan.summary()

    example = next(p for p in EXAMPLES if _embedded_plans(_load(p)))
    wf = copy.deepcopy(_load(example))
    load_node = next(n for n in wf["nodes"] if n["type"] == LOAD)
    load_node["widgets_values"][1] = ui_json
    saved = json.dumps(wf, indent=2)

    reloaded = json.loads(saved)
    text = next(n for n in reloaded["nodes"] if n["type"] == LOAD)["widgets_values"][1]
    assert text == ui_json
    loader = mod(pack, "nodes.plan_nodes").DiTFastAttnLoadPlan
    result = loader.execute(plan_file="", plan_json=text)
    assert result[0] == plan
    assert result.ui["ditfa_plan"][0] == ui_json  # the Load node shows the same plan as Calibrate did
    mod(pack, "nodes.apply").apply_plan(tiny.patcher, result[0])  # and it fits the model it came from


def test_embedded_plans_are_validated_like_files(pack: ModuleType) -> None:
    plan_error = mod(pack, "ditfa_core.plan").PlanError
    loader = mod(pack, "nodes.plan_nodes").DiTFastAttnLoadPlan
    text = _embedded_plans(_load(next(p for p in EXAMPLES if _embedded_plans(_load(p)))))[0]
    for bad in (text.replace('"FULL"', '"EVIL"', 1), text.replace('"version": 1', '"version": 1, "x": 1'),
                text[:-20], '{"__proto__": 1}'):
        with pytest.raises(plan_error):
            loader.execute(plan_file="", plan_json=bad)


# -- web/ ------------------------------------------------------------------------------------------------


def test_web_vocabulary_is_what_the_registry_generates(tmp_path: Path) -> None:
    """web/ditfa_vocabulary.js is generated: adding or changing a strategy without regenerating fails here."""
    committed = (WEB / "ditfa_vocabulary.js").read_text(encoding="utf-8")
    assert committed == vocabulary_js.render(), (
        f"web/ditfa_vocabulary.js is stale (a strategy was added or changed): run `{vocabulary_js.COMMAND}` "
        "and commit the file")
    assert vocabulary_js.main([str(tmp_path / "v.js")]) == 0
    assert (tmp_path / "v.js").read_text(encoding="utf-8") == committed


@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js to run web/*.js")
def test_web_vocabulary_exports_the_registrys_names_colours_labels_and_rules(tmp_path: Path) -> None:
    script = tmp_path / "vocab.mjs"
    script.write_text(f'import * as v from "{(WEB / "ditfa_vocabulary.js").as_uri()}";\n'
                      "console.log(JSON.stringify(v));\n", encoding="utf-8")
    v = json.loads(subprocess.run(["node", str(script)], check=True, capture_output=True, text=True,
                                  timeout=60).stdout)
    assert v["STRATEGY_NAMES"] == [s.value for s in Strategy]
    assert v["COLOURS"] == {s.value: "#{:02x}{:02x}{:02x}".format(*c) for s, c in heatmap.COLOURS.items()}
    assert v["LABELS"] == {s.value: label for s, label in heatmap.LABELS.items()}
    assert v["NOT_AT_STEP_0"] == ["AST"] and v["NEEDS_EARLIER_FULL"] == ["WA_RS", "WA_RS_ASC"]


def test_web_modules_take_names_colours_and_labels_from_the_vocabulary() -> None:
    for name in ("ditfa_plan.js", "ditfa_heatmap.js"):
        code = re.sub(r"//[^\n]*", "", (WEB / name).read_text(encoding="utf-8"))
        assert 'from "./ditfa_vocabulary.js";' in code, name
        copies = re.findall(r"export const (?:STRATEGY_NAMES|COLOURS|LABELS) =", code)
        copies += [s.value for s in Strategy if s is not Strategy.FULL and f'"{s.value}"' in code]
        assert not copies, f"{name} keeps its own copy of the vocabulary: {copies}"


def test_web_files_are_plain_modules_that_never_eval() -> None:
    files = sorted(WEB.glob("*.js"))
    assert {f.name for f in files} >= {"ditfastattn.js", "ditfa_heatmap.js"}
    for f in files:
        text = f.read_text(encoding="utf-8")
        code = re.sub(r"//[^\n]*", "", text)
        assert not re.search(r"\beval\s*\(|new\s+Function\s*\(|innerHTML", code), f"{f.name} evaluates code"
        assert "readJson(" in text or f.name != "ditfa_plan.js"
    ext = (WEB / "ditfastattn.js").read_text(encoding="utf-8")
    assert 'from "../../scripts/app.js"' in ext and "registerExtension" in ext


def test_front_end_avoids_deprecated_graph_api_and_redraws_vue_widgets() -> None:
    """Front end 1.5x: ``output.links``/``input.link`` are deprecated getters that warn, ``graph._links`` is
    gone; Vue node mode redraws a custom widget only through the ``triggerDraw`` it installs on it."""
    code = re.sub(r"//[^\n]*", "", (WEB / "ditfastattn.js").read_text(encoding="utf-8"))
    assert not re.search(r"\.links\b|\.link\b|_links\b", code), "reads connectivity the deprecated way"
    assert "getOutputNodes" in code and "triggerDraw" in code
    assert re.search(r"onExecuted[\s\S]*refreshHeatmaps", code) and "onConnectionsChange" in code


@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js to run web/*.js")
def test_vue_node_mode_heatmaps_are_redrawn_on_every_plan_change(tmp_path: Path) -> None:
    """In Vue node mode a custom widget is redrawn only through ``widget.triggerDraw``: a run of Calibrate
    and a new connection must redraw both Calibrate's heatmap and that of the Apply node it feeds."""
    pack = tmp_path / "extensions" / "pack"
    shutil.copytree(WEB, pack)
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "app.js").write_text(
        "export const app = { extensions: [], registerExtension(e) { this.extensions.push(e); } };\n")
    script = Path(__file__).resolve().parent / "web_vue_mode.mjs"
    done = subprocess.run(["node", str(script), tmp_path.as_uri()], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["executed"]["calibrate"] == 1 and report["executed"]["apply"] == 1, report
    assert report["connected"]["apply"] == 2 and report["connected"]["dirty"] == 2, report
