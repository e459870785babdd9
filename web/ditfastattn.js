// ComfyUI front-end extension of DiTFastAttn (served from WEB_DIRECTORY = "./web"; no build step).
//
// * Load Plan, Calibrate and Apply nodes show their plan as a heatmap (steps x layers, legend,
//   attention FLOPs fraction, calibration settings). The Load node draws its pasted plan_json as it
//   is edited, or the plan it last loaded (its UI output); Calibrate draws the plan of its last run;
//   Apply draws whatever plan node feeds its `plan` input.
// * Calibrate has "embed plan in workflow" (a button and a context-menu entry): it writes the plan of
//   the last run into a Load Plan node's plan_json (making one if needed) and connects that node to
//   the Apply nodes Calibrate fed, so the saved workflow alone reproduces the run; Calibrate is then
//   no longer needed by those Apply nodes (ComfyUI runs only what an output depends on).
//   An embedded plan is untrusted input: the server validates it like a plan file (Plan.from_json).
// * Both node renderers: the classic canvas redraws every frame; the Vue node mode ("Nodes 2.0",
//   front end 1.3x+) draws a custom widget into its own canvas only when told, through the
//   `triggerDraw` it puts on the widget. Every change of a plan (run, edit, connection, embedding)
//   calls `refreshHeatmaps`, which does both. Connectivity is read through node methods
//   (`getOutputNodes`, `getInputNode`), not the deprecated `output.links`.

import { app } from "../../scripts/app.js";
import { drawPanel, panelHeight, parsePlan } from "./ditfa_heatmap.js";

const LOAD = "DiTFastAttnLoadPlan";
const CALIBRATE = "DiTFastAttnCalibrate";
const APPLY = "DiTFastAttnApply";
const PLAN_NODES = new Set([LOAD, CALIBRATE, APPLY]);
const HEATMAP_WIDGET = "ditfa_heatmap";

const widgetOf = (node, name) => node.widgets?.find((w) => w.name === name);

/** The plan text a node stands for now (null when it has none yet). */
function planText(node, seen = new Set()) {
  if (!node || seen.has(node.id)) return null;
  seen.add(node.id);
  if (node.type === LOAD || node.comfyClass === LOAD) {
    const pasted = widgetOf(node, "plan_json")?.value;
    if (typeof pasted === "string" && pasted.trim()) return pasted;
    return node.ditfaExecutedPlan ?? null;
  }
  if (node.type === CALIBRATE || node.comfyClass === CALIBRATE) return node.ditfaExecutedPlan ?? null;
  // Apply, or a pass-through (Reroute...): follow the plan input upstream.
  const slot = node.inputs?.findIndex((i) => i.type === "DITFA_PLAN" || i.type === "*");
  if (slot === undefined || slot < 0) return null;
  let upstream = null;
  try {
    upstream = node.getInputNode(slot);
  } catch {
    upstream = null;
  }
  return planText(upstream, seen);
}

/** parsePlan, memoised per node on the text (drawing runs every frame). */
function parsedFor(node) {
  const text = planText(node);
  if (node.ditfaParsed && node.ditfaParsedText === text) return node.ditfaParsed;
  node.ditfaParsedText = text;
  node.ditfaParsed = text === null ? null : parsePlan(text);
  return node.ditfaParsed;
}

function emptyNote(node) {
  if (node.type === CALIBRATE) return "run the workflow to see the calibrated plan";
  if (node.type === APPLY) return "connect a plan (Load Plan or Calibrate)";
  return "paste plan JSON, or run to draw the chosen file";
}

let measureCtx = null;
function measure() {
  measureCtx ??= document.createElement("canvas").getContext("2d");
  return measureCtx;
}

function addHeatmap(node) {
  const widget = {
    type: "ditfa_heatmap",
    name: HEATMAP_WIDGET,
    value: "",
    serialize: false, // not part of widgets_values: saved workflows keep the node's own layout
    options: { serialize: false }, // nor of the prompt sent to the server
    draw(ctx, drawnNode, width, y) {
      const parsed = parsedFor(drawnNode);
      const h = drawPanel(ctx, parsed, 10, y, width - 20, emptyNote(drawnNode));
      drawnNode.ditfaLastHeight ??= h;
      if (drawnNode.ditfaLastHeight !== h) {
        drawnNode.ditfaLastHeight = h;
        requestAnimationFrame(() => fitHeight(drawnNode));
      }
    },
    computeSize(width) {
      // litegraph passes the node's minimum width here, but the panel is drawn at the node's width.
      const w = Math.max(width || 0, node.size?.[0] || 0);
      return [width, panelHeight(measure(), parsedFor(node), w - 20) + 6];
    },
  };
  node.addCustomWidget(widget);
  return widget;
}

/** Redraw every plan heatmap of the graph: an Apply node shows what its upstream plan node holds, so a
 * change anywhere can change it. Canvas mode: mark the canvas dirty; Vue mode: the widget's triggerDraw. */
function refreshHeatmaps(graph) {
  const g = graph ?? app.graph;
  for (const node of g?.nodes ?? g?._nodes ?? []) {
    if (!PLAN_NODES.has(node.type ?? node.comfyClass)) continue;
    widgetOf(node, HEATMAP_WIDGET)?.triggerDraw?.();
  }
  g?.setDirtyCanvas?.(true, true);
}

/** The Apply nodes fed by output ``slot`` of ``node``, with the input slot each is fed on. */
function applyTargets(node, slot) {
  const nodes = node.getOutputNodes?.(slot) ?? [];
  return nodes
    .filter((n) => n?.type === APPLY)
    .map((n) => [n, n.inputs.findIndex((i) => i.type === "DITFA_PLAN")])
    .filter(([, s]) => s >= 0);
}

function fitHeight(node) {
  const size = node.computeSize();
  node.setSize([Math.max(node.size[0], size[0]), size[1]]);
  node.setDirtyCanvas?.(true, true);
}

function notify(severity, summary, detail) {
  const toast = app.extensionManager?.toast;
  if (toast?.add) toast.add({ severity, summary, detail, life: 5000 });
  else console[severity === "error" ? "error" : "info"](`DiTFastAttn: ${summary}: ${detail}`);
}

/**
 * Put the Calibrate node's last plan into a Load Plan node and feed that to the Apply nodes the
 * Calibrate node fed. Returns the Load node, or null when there is no valid plan to embed.
 */
export function embedPlan(calibrateNode) {
  const text = calibrateNode.ditfaExecutedPlan;
  const parsed = text ? parsePlan(text) : null;
  if (!parsed?.plan) {
    notify("warn", "No plan to embed", parsed ? parsed.error : "run the workflow (queue it) first");
    return null;
  }
  const graph = calibrateNode.graph ?? app.graph;
  const planSlot = calibrateNode.outputs.findIndex((o) => o.type === "DITFA_PLAN");
  const targets = applyTargets(calibrateNode, planSlot);
  const nodes = graph.nodes ?? graph._nodes;
  let load = nodes.find((n) => n.type === LOAD && n.properties?.ditfa_embedded_from === calibrateNode.id);
  if (!load) {
    load = LiteGraph.createNode(LOAD);
    load.pos = [calibrateNode.pos[0], calibrateNode.pos[1] + calibrateNode.size[1] + 60];
    graph.add(load);
  }
  load.properties ??= {};
  load.properties.ditfa_embedded_from = calibrateNode.id;
  const widget = widgetOf(load, "plan_json");
  widget.value = text;
  widget.callback?.(text);
  const out = load.outputs.findIndex((o) => o.type === "DITFA_PLAN");
  for (const [apply, slot] of targets) load.connect(out, apply, slot);
  fitHeight(load);
  refreshHeatmaps(graph);
  app.graph.change?.();
  notify("success", "Plan embedded", `in "${load.title}"; ${targets.length} Apply node(s) now use it`);
  return load;
}

app.registerExtension({
  name: "DiTFastAttn.PlanHeatmap",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!PLAN_NODES.has(nodeData.name)) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      if (nodeData.name === CALIBRATE) {
        const button = this.addWidget("button", "embed plan in workflow", null, () => embedPlan(this));
        button.serialize = false;
        button.options = { ...(button.options ?? {}), serialize: false };
      }
      if (nodeData.name === LOAD) {
        const w = widgetOf(this, "plan_json");
        const cb = w?.callback;
        if (w) w.callback = (...args) => { refreshHeatmaps(this.graph); return cb?.apply(w, args); };
      }
      addHeatmap(this);
      this.setSize([Math.max(this.size[0], 420), this.computeSize()[1]]);
      return r;
    };
    const onConnectionsChange = nodeType.prototype.onConnectionsChange;
    nodeType.prototype.onConnectionsChange = function () {
      const r = onConnectionsChange?.apply(this, arguments);
      refreshHeatmaps(this.graph);
      return r;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const plan = message?.ditfa_plan;
      if (Array.isArray(plan) && typeof plan[0] === "string") {
        this.ditfaExecutedPlan = plan[0];
        refreshHeatmaps(this.graph);
      }
    };
    if (nodeData.name === CALIBRATE) {
      const getExtraMenuOptions = nodeType.prototype.getExtraMenuOptions;
      nodeType.prototype.getExtraMenuOptions = function (canvas, options) {
        const r = getExtraMenuOptions?.apply(this, arguments);
        options.push({
          content: "DiTFastAttn: embed plan in workflow",
          disabled: !this.ditfaExecutedPlan,
          callback: () => embedPlan(this),
        });
        return r;
      };
    }
  },
});

// For tests and other extensions: window.DiTFastAttn.embedPlan(node), .parsePlan(text).
window.DiTFastAttn = { embedPlan, parsePlan, refreshHeatmaps };
