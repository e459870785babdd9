// Test helper: node web_vue_mode.mjs EXTENSION_DIR. EXTENSION_DIR holds web/*.js under extensions/pack/ and a
// stub scripts/app.js, the layout ComfyUI serves. Builds Calibrate -> Apply as the front end would, with the
// heatmap widgets bound the way Vue node mode's WidgetLegacy binds them (it sets widget.triggerDraw and
// redraws only through it), then prints a JSON report of which heatmaps were redrawn after each change.
const dir = process.argv[2];
globalThis.window = {};
globalThis.requestAnimationFrame = () => 0;
const ctx = new Proxy({}, { get: (_t, k) => (k === "measureText" ? () => ({ width: 8 }) : () => {}) });
globalThis.document = { createElement: () => ({ getContext: () => ctx }) };
const { app } = await import(`${dir}/scripts/app.js`);
await import(`${dir}/extensions/pack/ditfastattn.js`);
const ext = app.extensions[0];

function nodeClass(name, inputs, outputs) {
  class Node {
    constructor() {
      this.type = name;
      this.widgets = [];
      this.inputs = inputs.map((type) => ({ type }));
      this.outputs = outputs.map((type) => ({ type }));
      this.size = [300, 100];
    }
    addCustomWidget(w) { this.widgets.push(w); return w; }
    addWidget(type, name, value, callback) { const w = { type, name, value, callback }; this.widgets.push(w); return w; }
    computeSize() { return [300, 200]; }
    setSize(size) { this.size = size; }
    setDirtyCanvas() {}
  }
  return Node;
}

const Calibrate = nodeClass("DiTFastAttnCalibrate", [], ["DITFA_PLAN"]);
const Apply = nodeClass("DiTFastAttnApply", ["MODEL", "DITFA_PLAN"], ["MODEL"]);
await ext.beforeRegisterNodeDef(Calibrate, { name: "DiTFastAttnCalibrate" });
await ext.beforeRegisterNodeDef(Apply, { name: "DiTFastAttnApply" });
const calibrate = new Calibrate();
const apply = new Apply();
const graph = { nodes: [calibrate, apply], dirty: 0, setDirtyCanvas() { this.dirty += 1; } };
for (const [i, n] of [calibrate, apply].entries()) { n.graph = graph; n.id = i + 1; n.onNodeCreated(); }
calibrate.getOutputNodes = (slot) => (slot === 0 ? [apply] : null);
apply.getInputNode = (slot) => (slot === 1 ? calibrate : null);

const redraws = { calibrate: 0, apply: 0 };
for (const [key, n] of [["calibrate", calibrate], ["apply", apply]]) {
  n.widgets.find((w) => w.name === "ditfa_heatmap").triggerDraw = () => { redraws[key] += 1; };
}
const report = {};
calibrate.onExecuted({ ditfa_plan: ["{}"] });
report.executed = { ...redraws, dirty: graph.dirty };
apply.onConnectionsChange(1, 1, true);
report.connected = { ...redraws, dirty: graph.dirty };
console.log(JSON.stringify(report));
