// DiTFastAttn plan heatmap for the ComfyUI canvas: parse a plan's JSON (never eval) and draw it as
// steps x layers coloured by strategy, with a legend and the plan's cost and calibration as text.
//
// Plain ES module, no build step, no ComfyUI imports: ditfastattn.js wires it to the nodes, and the
// browser test loads it on its own. Colours and labels are those of ditfa_core/heatmap.py (a pytest
// compares the two tables), so a plan looks the same in a node, in the README and on the command line.

export const MAX_PLAN_CHARS = 8 * 1024 * 1024; // the Python reader's limit (ditfa_core/plan.py)

export const STRATEGIES = ["FULL", "AST", "WA_RS", "ASC", "WA_RS_ASC"];

export const COLOURS = {
  FULL: [222, 222, 222],
  AST: [55, 126, 184],
  WA_RS: [255, 127, 0],
  ASC: [77, 175, 74],
  WA_RS_ASC: [152, 78, 163],
};

export const LABELS = {
  FULL: "FULL",
  AST: "AST (share across steps)",
  WA_RS: "WA-RS (window + residual)",
  ASC: "ASC (share across CFG)",
  WA_RS_ASC: "WA-RS + ASC",
};

const rgb = (c) => `rgb(${c[0]},${c[1]},${c[2]})`;
const isInt = (v) => typeof v === "number" && Number.isInteger(v);
const isObj = (v) => v !== null && typeof v === "object" && !Array.isArray(v);

function fmtG(x) {
  // Python's "{:g}": up to 6 significant digits, no trailing zeros.
  if (typeof x !== "number" || !Number.isFinite(x)) return String(x);
  return String(Number(x.toPrecision(6)));
}

/**
 * Parse plan text for display. Returns {plan} or {error}; never throws, never evaluates code.
 * The checks are the ones drawing needs (shape, strategy names); the server validates fully
 * (Plan.from_json) when the workflow runs, so a plan drawn here may still be refused there.
 */
export function parsePlan(text) {
  if (typeof text !== "string") return { error: "no plan" };
  if (text.length > MAX_PLAN_CHARS) return { error: `plan too large: ${text.length} characters` };
  const trimmed = text.replace(/^\uFEFF/, "").trim();
  if (!trimmed) return { error: "no plan" };
  let data;
  try {
    data = JSON.parse(trimmed);
  } catch (e) {
    return { error: `not JSON: ${e.message}` };
  }
  if (!isObj(data) || data.format !== "ditfastattn-plan") return { error: "not a DiTFastAttn plan" };
  if (data.version !== 1) return { error: `unsupported plan version ${JSON.stringify(data.version)}` };
  const model = data.model;
  if (!isObj(model) || !isInt(model.num_layers) || model.num_layers < 1) return { error: "model.num_layers" };
  if (!isInt(data.steps) || data.steps < 1 || data.steps > 10000) return { error: "steps" };
  if (!Array.isArray(data.grid) || data.grid.length !== data.steps) {
    return { error: `grid: ${Array.isArray(data.grid) ? data.grid.length : "no"} rows, steps says ${data.steps}` };
  }
  const grid = [];
  for (let s = 0; s < data.grid.length; s++) {
    const row = data.grid[s];
    if (!Array.isArray(row) || row.length !== model.num_layers) {
      return { error: `grid[${s}]: expected ${model.num_layers} cells` };
    }
    const cells = [];
    for (let l = 0; l < row.length; l++) {
      const cell = row[l];
      const heads = Array.isArray(cell) ? cell : [cell];
      if (heads.length === 0 || !heads.every((h) => typeof h === "string" && h in COLOURS)) {
        return { error: `grid[${s}][${l}]: unknown strategy ${JSON.stringify(cell)}` };
      }
      cells.push(heads);
    }
    grid.push(cells);
  }
  const cost = isObj(data.cost) ? data.cost : {};
  const cal = isObj(data.calibration) ? data.calibration : null;
  return {
    plan: {
      family: typeof model.family === "string" ? model.family : "?",
      steps: data.steps,
      layers: model.num_layers,
      grid,
      flops: typeof cost.attn_flops_fraction === "number" ? cost.attn_flops_fraction : null,
      calibration: cal,
    },
  };
}

/** Share of each strategy over all cells (head-wise cells count 1/heads per head). */
export function shares(plan) {
  const counts = Object.fromEntries(STRATEGIES.map((s) => [s, 0]));
  for (const row of plan.grid) for (const heads of row) for (const h of heads) counts[h] += 1 / heads.length;
  const total = plan.steps * plan.layers;
  return Object.fromEntries(STRATEGIES.map((s) => [s, counts[s] / total]));
}

/** The caption lines (those of ditfa_core/heatmap.py; a radius is labelled as one). */
export function caption(plan) {
  const flops = plan.flops === null ? "?" : `${(100 * plan.flops).toFixed(1)}%`;
  const lines = [`${plan.family}: ${plan.steps} steps x ${plan.layers} layers, attention FLOPs ${flops} of full`];
  const c = plan.calibration;
  if (c) {
    const w = isObj(c.window) ? c.window : {};
    const radius = w.radius === null || w.radius === undefined || w.radius === 0
      ? fmtG(w.fraction) : Array.isArray(w.radius) ? `radius [${w.radius.join(", ")}]` : `radius ${w.radius}`;
    lines.push(`search ${c.search}, delta ${fmtG(c.delta)}, ${c.sampler}/${c.scheduler}, cfg ${fmtG(c.cfg)}, ` +
      `window ${w.kind} ${radius}, ${Number(c.generations).toFixed(2)} model evaluations per sampling step`);
  } else {
    lines.push("no calibration record (hand-made plan)");
  }
  return lines;
}

const PAD = 6;
const LINE = 14;
const LEFT = 34; // room for the layer labels
const LEGEND_ROW = 15;

function wrap(ctx, text, width) {
  const words = text.split(" ");
  const out = [];
  let line = "";
  for (const w of words) {
    const next = line ? `${line} ${w}` : w;
    if (line && ctx.measureText(next).width > width) {
      out.push(line);
      line = w;
    } else {
      line = next;
    }
  }
  if (line) out.push(line);
  return out;
}

/**
 * Cell sizes for a panel `width` px wide: columns share the width (at least 2 px, at most 24),
 * rows are as tall as the columns are wide within [3, 12] px, so 60 layers stay under 720 px
 * and 50 steps fit a 400 px node.
 */
export function layout(plan, width) {
  const cw = Math.max(2, Math.min(24, Math.floor((width - LEFT - 2 * PAD) / plan.steps)));
  const ch = Math.max(3, Math.min(12, cw, Math.floor(720 / plan.layers)));
  const legendCols = width >= 360 ? 2 : 1;
  const legendRows = Math.ceil(STRATEGIES.length / legendCols);
  return { cw, ch, legendCols, legendRows };
}

/** Height in px of the panel for `parsed` (a parsePlan result) at `width`; `ctx` measures text. */
export function panelHeight(ctx, parsed, width) {
  if (!parsed || !parsed.plan) return PAD * 2 + LINE * 2;
  const plan = parsed.plan;
  const { ch, legendRows } = layout(plan, width);
  ctx.save();
  ctx.font = "11px sans-serif";
  const textLines = caption(plan).flatMap((l) => wrap(ctx, l, width - 2 * PAD)).length;
  ctx.restore();
  return PAD + textLines * LINE + 4 + plan.layers * ch + LINE + legendRows * LEGEND_ROW + PAD;
}

/**
 * Draw the panel at (x, y), `width` wide. `parsed` is a parsePlan result; with an error (or
 * nothing yet) a one-line note is drawn instead. Returns the height used.
 */
export function drawPanel(ctx, parsed, x, y, width, emptyNote) {
  const height = panelHeight(ctx, parsed, width);
  ctx.save();
  ctx.fillStyle = "#ffffff";
  ctx.fillRect(x, y, width, height);
  ctx.font = "11px sans-serif";
  ctx.textBaseline = "top";
  ctx.textAlign = "left";
  if (!parsed || !parsed.plan) {
    ctx.fillStyle = parsed && parsed.error && parsed.error !== "no plan" ? "#b00020" : "#444";
    const note = parsed && parsed.error && parsed.error !== "no plan" ? `plan: ${parsed.error}` : emptyNote;
    ctx.fillText(wrap(ctx, note || "no plan yet", width - 2 * PAD)[0] || "", x + PAD, y + PAD + 7);
    ctx.restore();
    return height;
  }
  const plan = parsed.plan;
  const { cw, ch, legendCols } = layout(plan, width);
  let ty = y + PAD;
  ctx.fillStyle = "#000";
  for (const l of caption(plan).flatMap((t) => wrap(ctx, t, width - 2 * PAD))) {
    ctx.fillText(l, x + PAD, ty);
    ty += LINE;
  }
  const gx = x + PAD + LEFT;
  const gy = ty + 4;
  const gap = cw >= 5 && ch >= 5 ? 1 : 0; // a gap between cells when they are big enough to afford it
  for (let s = 0; s < plan.steps; s++) {
    for (let l = 0; l < plan.layers; l++) {
      const heads = plan.grid[s][l];
      const x0 = gx + s * cw;
      for (let h = 0; h < heads.length; h++) { // a head-wise cell: one stripe per head
        const hx0 = x0 + Math.floor((cw * h) / heads.length);
        const hx1 = x0 + Math.floor((cw * (h + 1)) / heads.length) - (h === heads.length - 1 ? gap : 0);
        ctx.fillStyle = rgb(COLOURS[heads[h]]);
        ctx.fillRect(hx0, gy + l * ch, Math.max(1, hx1 - hx0), Math.max(1, ch - gap));
      }
    }
  }
  ctx.fillStyle = "#000";
  ctx.font = "9px sans-serif";
  const everyL = Math.max(1, Math.ceil(11 / ch)); // label rows/columns so labels never overlap
  for (let l = 0; l < plan.layers; l += everyL) {
    ctx.fillText(`L${l}`, x + PAD, gy + l * ch + Math.max(0, (ch - 9) / 2));
  }
  const everyS = Math.max(1, Math.ceil(18 / cw));
  for (let s = 0; s < plan.steps; s += everyS) ctx.fillText(String(s), gx + s * cw, gy + plan.layers * ch + 2);
  ctx.textAlign = "right";
  ctx.fillText("step", x + width - PAD, gy + plan.layers * ch + 2);
  ctx.textAlign = "left";
  ctx.font = "11px sans-serif";
  const share = shares(plan);
  const colW = (width - 2 * PAD) / legendCols;
  const ly = gy + plan.layers * ch + LINE;
  STRATEGIES.forEach((s, i) => {
    const lx = x + PAD + (i % legendCols) * colW;
    const yy = ly + Math.floor(i / legendCols) * LEGEND_ROW;
    ctx.fillStyle = rgb(COLOURS[s]);
    ctx.fillRect(lx, yy, 11, 11);
    ctx.strokeStyle = "#000";
    ctx.lineWidth = 1;
    ctx.strokeRect(lx + 0.5, yy + 0.5, 10, 10);
    ctx.fillStyle = "#000";
    ctx.fillText(`${LABELS[s]} ${(100 * share[s]).toFixed(0)}%`, lx + 16, yy);
  });
  ctx.restore();
  return height;
}
