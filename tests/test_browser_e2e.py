"""End to end in a real ComfyUI server and its front end, driven by headless Chromium.

What it does:

1. Lays out a throwaway ComfyUI base directory (``--base-directory``; the ComfyUI checkout itself is never
   written): ``custom_nodes/`` holds a symlink to this pack and a test-only pack, ``ditfa_e2e_tiny``,
   whose node ``DiTFATinyFlux`` outputs a tiny random-weight Flux MODEL with conditioning and an empty
   latent (built by tests/comfy_models.py, the harness factories: no model file is needed), and whose
   output node ``DiTFATinyCheck`` reports the sampled latent.
2. Starts ComfyUI's ``main.py --cpu --listen 127.0.0.1 --port <free>`` through a small launcher that
   installs the harness's torchvision stub first (the PyPI torchvision does not load with torch+cpu).
3. In Chromium: opens the front end, fetches the embedded-plan example through the template route
   ComfyUI serves for custom node packs, loads it, checks the nodes and that the heatmap is drawn on
   the canvas (its strategy colours are counted in the canvas pixels), saves
   docs/heatmap_in_comfyui.png; pastes a synthetic head-wise plan into the Load Plan node and checks its
   head rows are drawn, saves docs/heatmap_headwise_in_comfyui.png.
4. Builds tiny model -> Calibrate -> Apply -> KSampler -> check, queues it, waits for the result,
   embeds the calibrated plan with the extension's action, saves the workflow (graph.serialize), checks
   the plan in it parses to the very plan Calibrate returned, loads the saved workflow again and queues
   it: the Load Plan node now gives that plan, Calibrate no longer runs, and the sampled latent is the
   same as in the first run. Saves docs/heatmap_calibrated_tiny.png.

Needs ComfyUI (COMFYUI_PATH or the custom_nodes layout), its server deps (aiohttp, ...), the
``comfyui-frontend-package`` of its requirements.txt, Playwright's Python package and a system
Chromium (/usr/bin/chromium; Playwright's own browser download is never used). Skips, saying what is
missing, otherwise. Loopback only; every wait is bounded and the server is always stopped.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import plan_corpus
from comfy_host import REPO_ROOT, find_comfyui, is_comfyui_checkout

from ditfa_core.plan import Plan
from ditfa_core.strategies import Strategy

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
PACK_DIR_NAME = "ComfyUI-DiTFastAttn"
EMBEDDED_EXAMPLE = "ditfastattn_embedded_plan"
DOCS = REPO_ROOT / "docs"
SERVER_START_S = 180
# The front end sets window.app only once app.setup() is done (extensions loaded, node defs registered,
# graph restored); on a busy 2-core machine, front end 1.49 (83 MB of assets, software canvas) takes
# 75-120 s to get there, so 120 s was not enough.
APP_READY_S = 360
RUN_S = 240
APP_STATE = """() => ({comfyAPI: !!window.comfyAPI?.app?.app, LiteGraph: !!window.LiteGraph,
                      DiTFastAttn: !!window.DiTFastAttn, app: !!window.app, graph: !!window.app?.graph})"""


def _chromium() -> str | None:
    for path in (os.environ.get("DITFA_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                 shutil.which("chromium-browser")):
        if path and os.path.exists(path):
            return path
    return None


def _missing() -> str | None:
    root = find_comfyui()
    if root is None or not is_comfyui_checkout(root):
        return "ComfyUI checkout not found (set COMFYUI_PATH)"
    for module, pip in (("aiohttp", "aiohttp"), ("yarl", "yarl"), ("alembic", "alembic"),
                        ("sqlalchemy", "SQLAlchemy"), ("playwright", "playwright"), ("av", "av"),
                        ("comfyui_frontend_package", "comfyui-frontend-package")):
        if importlib.util.find_spec(module) is None:
            return f"python package {module} missing (pip install {pip})"
    if _chromium() is None:
        return "no system Chromium (apt-get install chromium)"
    return _frontend_mismatch(root)


def _frontend_mismatch(root: Path) -> str | None:
    """The front end a ComfyUI serves is the pip package it pins: another version of the package would
    test a front end that this host never ships (and an older host cannot boot a newer one)."""
    pins = re.findall(r"^comfyui-frontend-package==(\S+)", (root / "requirements.txt").read_text(), re.M)
    installed = importlib.metadata.version("comfyui-frontend-package")
    if pins and pins[0] != installed:
        return (f"this ComfyUI pins comfyui-frontend-package=={pins[0]} but {installed} is installed "
                f"(pip install comfyui-frontend-package=={pins[0]})")
    return None


# Slow: a real server and browser take about 12 minutes on a busy 2-core machine (run with -m slow).
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(_missing() is not None, reason=f"browser e2e test skipped: {_missing()}")]

TINY_PACK = '''
"""Test-only nodes for tests/test_browser_e2e.py: a tiny random-weight Flux and a latent check."""
import sys
import torch

sys.path.insert(0, {tests!r})
from comfy_models import make_model


class DiTFATinyFlux:
    @classmethod
    def INPUT_TYPES(cls):
        # No inputs: the front end gives an INT named "seed" a randomize control, which would make
        # each prompt a different model.
        return {{"required": {{}}}}

    RETURN_TYPES = ("MODEL", "CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("model", "positive", "negative", "latent")
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self):
        tiny = make_model("flux", seed=0)
        return (tiny.patcher, tiny.positive, tiny.negative, {{"samples": tiny.latent}})


class DiTFATinyCheck:
    @classmethod
    def INPUT_TYPES(cls):
        return {{"required": {{"samples": ("LATENT",)}}}}

    RETURN_TYPES = ()
    FUNCTION = "check"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def check(self, samples):
        x = samples["samples"].float()
        report = {{"shape": list(x.shape), "finite": bool(torch.isfinite(x).all()),
                  "sum": float(x.double().sum()), "abs": float(x.double().abs().sum())}}
        return {{"ui": {{"ditfa_check": [report]}}}}


NODE_CLASS_MAPPINGS = {{"DiTFATinyFlux": DiTFATinyFlux, "DiTFATinyCheck": DiTFATinyCheck}}
'''

LAUNCHER = '''
"""Start ComfyUI's main.py with the harness's torchvision stub installed first."""
import runpy, sys
sys.path.insert(0, {tests!r})
from comfy_host import install_torchvision_stub
install_torchvision_stub()
sys.path.insert(0, {root!r})
sys.argv = [{main!r}, *sys.argv[1:]]
runpy.run_path({main!r}, run_name="__main__")
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 10) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


class Server:
    def __init__(self, tmp: Path) -> None:
        self.root = find_comfyui()
        self.base = tmp / "base"
        self.log = tmp / "server.log"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        nodes = self.base / "custom_nodes"
        (nodes / "ditfa_e2e_tiny").mkdir(parents=True)
        (nodes / PACK_DIR_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
        tests = str(Path(__file__).resolve().parent)
        (nodes / "ditfa_e2e_tiny" / "__init__.py").write_text(TINY_PACK.format(tests=tests))
        settings = self.base / "user" / "default" / "comfy.settings.json"
        settings.parent.mkdir(parents=True)
        settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))
        self.launcher = tmp / "launch_comfyui.py"
        self.launcher.write_text(LAUNCHER.format(tests=tests, root=str(self.root),
                                                 main=str(self.root / "main.py")))

    def start(self) -> None:
        cmd = [sys.executable, str(self.launcher), "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.base), "--temp-directory", str(self.base),
               "--user-directory", str(self.base / "user"),
               "--database-url", f"sqlite:///{self.base / 'comfyui.db'}",
               "--disable-auto-launch", "--disable-api-nodes", "--preview-method", "none"]
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1", "NO_PROXY": "127.0.0.1"}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.root, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                _get(f"{self.url}/system_stats", timeout=2)
                return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"ComfyUI did not answer within {SERVER_START_S} s:\n{self.tail()}")

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)

    def wait_history(self, count: int) -> list[dict[str, Any]]:
        """The server's history once ``count`` prompts have finished (in queue order)."""
        deadline = time.monotonic() + RUN_S
        while time.monotonic() < deadline:
            history = _get(f"{self.url}/history")
            done = [h for h in history.values() if h.get("status", {}).get("completed") is not None
                    or h.get("status", {}).get("status_str") == "error"]
            if len(done) >= count:
                done.sort(key=lambda h: h["prompt"][0])
                return done
            time.sleep(0.5)
        raise TimeoutError(f"prompt not finished within {RUN_S} s:\n{self.tail()}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    srv = Server(tmp_path_factory.mktemp("comfyui_e2e"))
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def page(server: Server) -> Any:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), headless=True, args=CHROMIUM_FLAGS)
        try:
            pg = browser.new_page(viewport={"width": 1600, "height": 1000})
            errors: list[str] = []
            # Errors of this pack's scripts only (the front end has harmless start-up errors of its own).
            pg.on("pageerror", lambda e: errors.append(f"{e}: {e.stack}") if PACK_DIR_NAME in (e.stack or "")
                  else None)
            pg.on("console", lambda m: errors.append(m.text) if m.type == "error" and (
                "ditfa" in m.text.lower() or PACK_DIR_NAME in (m.location or {}).get("url", "")) else None)
            pg.set_default_timeout(60_000)
            pg.goto(server.url, wait_until="domcontentloaded")
            _wait_app_ready(pg, server)
            pg.ditfa_errors = errors
            yield pg
        finally:
            browser.close()


def _wait_app_ready(pg: Any, server: Server) -> None:
    """Wait until the front end is set up and this pack's extension is loaded; on a timeout, fail
    saying which stage was not reached (window.comfyAPI, LiteGraph, the pack's script, window.app)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        pg.wait_for_function("() => window.app && window.app.graph && window.DiTFastAttn",
                             timeout=APP_READY_S * 1000, polling=1000)
    except PlaywrightTimeout:
        pytest.fail(f"front end not ready within {APP_READY_S} s: {pg.evaluate(APP_STATE)}\n{server.tail()}")


def _settle(page: Any) -> None:
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    page.evaluate("() => { app.canvas.setDirty(true, true); app.canvas.draw(true, true); }")


# The example plan's strategies, counted in the canvas by their colours (the registry's, as the front
# end's generated vocabulary has them); COUNT_COLOURS takes such a table.
COUNTED = {s.value: list(s.colour) for s in (Strategy.WA_RS, Strategy.AST, Strategy.ASC, Strategy.WA_RS_ASC)}
COUNT_COLOURS = """
(want) => {
  const c = app.canvas.canvas;
  const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const counts = Object.fromEntries(Object.keys(want).map(k => [k, 0]));
  for (let i = 0; i < data.length; i += 4) {
    for (const [k, [r, g, b]] of Object.entries(want)) {
      if (data[i] === r && data[i+1] === g && data[i+2] === b) counts[k]++;
    }
  }
  return counts;
}
"""


LOAD_EXAMPLE = """async ([pack, name]) => {
  const wf = await (await fetch(`/api/workflow_templates/${pack}/${name}.json`)).json();
  await app.loadGraphData(wf, true, true, name);
  const nodes = app.graph._nodes;
  const load = nodes.find(n => n.type === 'DiTFastAttnLoadPlan');
  const apply = nodes.find(n => n.type === 'DiTFastAttnApply');
  app.canvas.ds.scale = 1.0;
  app.canvas.ds.offset = [-load.pos[0] + 20, -load.pos[1] + 40];
  return {types: nodes.map(n => n.type), hasWidget: [load, apply].map(
            n => n.widgets.some(w => w.name === 'ditfa_heatmap')),
          planText: load.widgets.find(w => w.name === 'plan_json').value};
}"""
"""Load the embedded-plan example through the template route and scroll to its Load Plan node."""


def test_example_workflow_shows_the_heatmap(server: Server, page: Any) -> None:
    templates = _get(f"{server.url}/api/workflow_templates")
    assert EMBEDDED_EXAMPLE in templates.get(PACK_DIR_NAME, []), templates
    result = page.evaluate(LOAD_EXAMPLE, [PACK_DIR_NAME, EMBEDDED_EXAMPLE])
    assert {"DiTFastAttnLoadPlan", "DiTFastAttnApply", "KSampler"} <= set(result["types"])
    assert result["hasWidget"] == [True, True]
    assert Plan.from_json(result["planText"]).num_layers == 28
    _settle(page)
    shapes = page.evaluate("""() => app.graph._nodes.filter(n => n.ditfaParsed !== undefined).map(
        n => [n.type, n.ditfaParsed && n.ditfaParsed.plan
                      ? [n.ditfaParsed.plan.steps, n.ditfaParsed.plan.layers] : null])""")
    assert ["DiTFastAttnLoadPlan", [20, 28]] in shapes and ["DiTFastAttnApply", [20, 28]] in shapes, shapes
    counts = page.evaluate(COUNT_COLOURS, COUNTED)
    # Two heatmaps of 560 cells each, several pixels per cell: every strategy of the plan is visible.
    assert all(n > 200 for n in counts.values()), counts
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / "heatmap_in_comfyui.png"))
    assert not page.ditfa_errors, page.ditfa_errors


def test_a_headwise_plan_draws_head_rows(server: Server, page: Any) -> None:
    """A synthetic head-wise plan (28 layers x 24 heads, random per head) pasted into the example's Load
    Plan node: the Load and Apply panels draw it (its ARROW colours fill many pixels), with no error from
    the pack's scripts. Saves docs/heatmap_headwise_in_comfyui.png."""
    page.evaluate(LOAD_EXAMPLE, [PACK_DIR_NAME, EMBEDDED_EXAMPLE])
    page.evaluate(
        """(text) => {
          const load = app.graph._nodes.find(n => n.type === 'DiTFastAttnLoadPlan');
          const w = load.widgets.find(w => w.name === 'plan_json');
          w.value = text;
          w.callback?.(text);
          window.DiTFastAttn.refreshHeatmaps();
        }""",
        plan_corpus.headwise_text(20, 28, 24),
    )
    _settle(page)
    _settle(page)   # a taller panel resizes its node on the next frame
    shapes = page.evaluate("""() => app.graph._nodes.filter(n => n.ditfaParsed?.plan).map(
        n => [n.type, n.ditfaParsed.plan.heads, n.ditfaParsed.plan.headwise])""")
    assert ["DiTFastAttnLoadPlan", 24, True] in shapes and ["DiTFastAttnApply", 24, True] in shapes, shapes
    arrows = {s.value: list(s.colour) for s in (Strategy.ARROW, Strategy.ARROW_ASC)}
    counts = page.evaluate(COUNT_COLOURS, arrows)
    page.screenshot(path=str(DOCS / "heatmap_headwise_in_comfyui.png"))
    assert all(n > 200 for n in counts.values()), counts
    assert not page.ditfa_errors, page.ditfa_errors


def test_every_example_loads_in_the_front_end(server: Server, page: Any) -> None:
    names = sorted(p.stem for p in (REPO_ROOT / "example_workflows").glob("*.json"))
    assert sorted(_get(f"{server.url}/api/workflow_templates").get(PACK_DIR_NAME, [])) == names
    for name in names:
        result = page.evaluate(
            """async ([pack, name]) => {
              const wf = await (await fetch(`/api/workflow_templates/${pack}/${name}.json`)).json();
              await app.loadGraphData(wf, true, true, name);
              const frontOnly = new Set(['Note', 'MarkdownNote']);
              const known = (n) => frontOnly.has(n.type) || !!LiteGraph.registered_node_types[n.type];
              return {n: wf.nodes.length, loaded: app.graph._nodes.length,
                unknown: app.graph._nodes.filter(n => !known(n)).map(n => n.type),
                prompt: Object.keys((await app.graphToPrompt()).output).length};
            }""",
            [PACK_DIR_NAME, name],
        )
        assert result["loaded"] == result["n"] and not result["unknown"], (name, result)
        assert result["prompt"] >= result["n"] - 1, (name, result)  # all but the Note reach the prompt
    assert not page.ditfa_errors, page.ditfa_errors


BUILD_TINY = """
() => {
  app.graph.clear();
  const add = (type, x, y) => {
    const n = LiteGraph.createNode(type); n.pos = [x, y]; app.graph.add(n); return n;
  };
  const set = (n, name, v) => { n.widgets.find(w => w.name === name).value = v; };
  const tiny = add('DiTFATinyFlux', 20, 40);
  const cal = add('DiTFastAttnCalibrate', 300, 40);
  const apply = add('DiTFastAttnApply', 780, 40);
  const ks = add('KSampler', 1250, 40);
  const check = add('DiTFATinyCheck', 1250, 400);
  tiny.connect(0, cal, 0); tiny.connect(1, cal, 1); tiny.connect(2, cal, 2); tiny.connect(3, cal, 3);
  tiny.connect(0, apply, 0); cal.connect(0, apply, 1);
  apply.connect(0, ks, 0); tiny.connect(1, ks, 1); tiny.connect(2, ks, 2); tiny.connect(3, ks, 3);
  ks.connect(0, check, 0);
  for (const [n, steps] of [[cal, 8], [ks, 8]]) {
    set(n, 'seed', 7); set(n, 'control_after_generate', 'fixed'); set(n, 'steps', steps); set(n, 'cfg', 4.0);
    set(n, 'sampler_name', 'euler'); set(n, 'scheduler', 'simple');
  }
  set(cal, 'delta', 0.5);
  app.canvas.ds.scale = 0.9;
  app.canvas.ds.offset = [0, 20];
  return cal.id;
}
"""


def _outputs(entry: dict[str, Any], node_type: str) -> list[dict[str, Any]]:
    prompt = entry["prompt"][2]
    return [entry["outputs"][nid] for nid, node in prompt.items()
            if node["class_type"] == node_type and nid in entry["outputs"]]


def test_calibrate_embed_save_and_reload_reproduces_the_run(server: Server, page: Any) -> None:
    cal_id = page.evaluate(BUILD_TINY)
    page.evaluate("async () => { await app.queuePrompt(0, 1); }")
    first = server.wait_history(1)[-1]
    assert first["status"]["status_str"] == "success", (first["status"], server.tail())
    [cal_out] = _outputs(first, "DiTFastAttnCalibrate")
    plan_json = cal_out["ditfa_plan"][0]
    plan = Plan.from_json(plan_json)
    assert plan.steps == 8 and plan.calibration is not None
    [check1] = _outputs(first, "DiTFATinyCheck")
    assert check1["ditfa_check"][0]["finite"]

    page.wait_for_function(f"() => !!app.graph.getNodeById({cal_id}).ditfaExecutedPlan", timeout=30_000)
    embedded = page.evaluate(
        """(id) => {
          const cal = app.graph.getNodeById(id);
          const load = window.DiTFastAttn.embedPlan(cal);
          const apply = app.graph._nodes.find(n => n.type === 'DiTFastAttnApply');
          const planInput = apply.inputs.findIndex(i => i.name === 'plan');
          return {loadId: load.id, feeds: apply.getInputNode(planInput).id,
                  calPlan: cal.ditfaExecutedPlan, workflow: JSON.stringify(app.graph.serialize())};
        }""",
        cal_id,
    )
    assert embedded["feeds"] == embedded["loadId"] and embedded["calPlan"] == plan_json
    _settle(page)
    counts = page.evaluate(COUNT_COLOURS, COUNTED)
    assert sum(counts.values()) > 100, counts
    page.screenshot(path=str(DOCS / "heatmap_calibrated_tiny.png"))

    workflow = json.loads(embedded["workflow"])  # what "Save" writes: the graph serialised
    [load_node] = [n for n in workflow["nodes"] if n["type"] == "DiTFastAttnLoadPlan"]
    assert Plan.from_json(load_node["widgets_values"][1]) == plan  # the saved workflow carries the plan

    page.evaluate("async (wf) => { await app.loadGraphData(JSON.parse(wf), true, true, 'reloaded'); }",
                  json.dumps(workflow))
    page.evaluate("async () => { await app.queuePrompt(0, 1); }")
    second = server.wait_history(2)[-1]
    assert second["status"]["status_str"] == "success", (second["status"], server.tail())
    [load_out] = _outputs(second, "DiTFastAttnLoadPlan")
    assert Plan.from_json(load_out["ditfa_plan"][0]) == plan
    assert load_out["ditfa_plan"][0] == plan_json
    # Nothing depends on Calibrate any more, so a fresh ComfyUI elsewhere would not calibrate again
    # (here its cached UI output may still be listed), and it did not run twice here.
    prompt2 = second["prompt"][2]
    cal_ids = {nid for nid, n in prompt2.items() if n["class_type"] == "DiTFastAttnCalibrate"}
    sources = {v[0] for n in prompt2.values() for v in n["inputs"].values() if isinstance(v, list)}
    assert cal_ids and not cal_ids & sources, "the reloaded workflow should not need Calibrate"
    assert server.log.read_text(errors="replace").count("DiTFastAttn Calibrate: ") == 1
    [check2] = _outputs(second, "DiTFATinyCheck")
    assert check2["ditfa_check"][0] == check1["ditfa_check"][0], "same plan, same seed: same latent"
    assert not page.ditfa_errors, page.ditfa_errors
