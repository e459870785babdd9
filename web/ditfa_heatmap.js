// DiTFastAttn plan heatmap for the ComfyUI canvas: draw a plan (read by ditfa_plan.js, never eval) as
// steps x layers coloured by strategy, with a legend and the plan's cost and calibration as text. A plan
// larger than the panel is drawn downsampled (one sampled cell per drawn cell), so drawing costs the
// same for 10 cells and for 250,000.
//
// Plain ES modules, no build step, no ComfyUI imports: ditfastattn.js wires them to the nodes, and the
// browser test loads them on their own. Colours and labels are those of ditfa_core/heatmap.py (a pytest
// compares the two tables), so a plan looks the same in a node, in the README and on the command line.

import { MAX_TEXT_CHARS, STRATEGY_NAMES, parsePlan } from "./ditfa_plan.js";

export { parsePlan };
export const MAX_PLAN_CHARS = MAX_TEXT_CHARS; // the Python reader's limit (ditfa_core/plan/fields.py)

export const STRATEGIES = STRATEGY_NAMES;

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
const isObj = (v) => v !== null && typeof v === "object" && !Array.isArray(v);

function fmtG(x) {
  // Python's "{:g}": up to 6 significant digits, no trailing zeros.
  if (typeof x !== "number" || !Number.isFinite(x)) return String(x);
  return String(Number(x.toPrecision(6)));
}

/** Share of each strategy over all cells (head-wise cells count 1/heads per head). */
export function shares(plan) {
  if (plan.shares) return plan.shares; // computed once per plan, not per frame
  const counts = new Map(STRATEGIES.map((s) => [s, 0]));
  for (const row of plan.grid) {
    for (const heads of row) for (const h of heads) counts.set(h, counts.get(h) + 1 / heads.length);
  }
  const total = plan.steps * plan.layers;
  plan.shares = Object.fromEntries(STRATEGIES.map((s) => [s, counts.get(s) / total]));
  return plan.shares;
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

const MAX_ROWS = 240; // drawn layer rows: 720 px of 3 px rows

/**
 * The drawn grid for a panel `width` px wide: `cols` columns (steps) of `cw` px in [2, 24] and `rows`
 * rows (layers) of `ch` px in [3, 12], rows as tall as columns are wide, so 60 layers stay under
 * 720 px and 50 steps fit a 400 px node. More steps than 2 px columns, or more than MAX_ROWS layers,
 * are sampled: drawn column i shows step floor(i * steps / cols), and likewise for rows.
 */
export function layout(plan, width) {
  const avail = Math.max(2, width - LEFT - 2 * PAD);
  const cols = Math.min(plan.steps, Math.floor(avail / 2));
  const cw = Math.max(2, Math.min(24, Math.floor(avail / cols)));
  const rows = Math.min(plan.layers, MAX_ROWS);
  const ch = Math.max(3, Math.min(12, cw, Math.floor(720 / rows)));
  const legendCols = width >= 360 ? 2 : 1;
  const legendRows = Math.ceil(STRATEGIES.length / legendCols);
  return { cols, rows, cw, ch, legendCols, legendRows };
}

const sampled = (i, drawn, total) => Math.floor((i * total) / drawn);

/** Height in px of the panel for `parsed` (a parsePlan result) at `width`; `ctx` measures text. */
export function panelHeight(ctx, parsed, width) {
  if (!parsed || !parsed.plan) return PAD * 2 + LINE * 2;
  const plan = parsed.plan;
  const { rows, ch, legendRows } = layout(plan, width);
  ctx.save();
  ctx.font = "11px sans-serif";
  const textLines = caption(plan).flatMap((l) => wrap(ctx, l, width - 2 * PAD)).length;
  ctx.restore();
  return PAD + textLines * LINE + 4 + rows * ch + LINE + legendRows * LEGEND_ROW + PAD;
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
  const { cols, rows, cw, ch, legendCols } = layout(plan, width);
  let ty = y + PAD;
  ctx.fillStyle = "#000";
  for (const l of caption(plan).flatMap((t) => wrap(ctx, t, width - 2 * PAD))) {
    ctx.fillText(l, x + PAD, ty);
    ty += LINE;
  }
  const gx = x + PAD + LEFT;
  const gy = ty + 4;
  const gap = cw >= 5 && ch >= 5 ? 1 : 0; // a gap between cells when they are big enough to afford it
  for (let i = 0; i < cols; i++) {
    const row = plan.grid[sampled(i, cols, plan.steps)];
    const x0 = gx + i * cw;
    for (let j = 0; j < rows; j++) {
      const heads = row[sampled(j, rows, plan.layers)];
      const stripes = Math.min(heads.length, cw); // a head-wise cell: one stripe per head, at most 1 px each
      for (let h = 0; h < stripes; h++) {
        const hx0 = x0 + Math.floor((cw * h) / stripes);
        const hx1 = x0 + Math.floor((cw * (h + 1)) / stripes) - (h === stripes - 1 ? gap : 0);
        ctx.fillStyle = rgb(COLOURS[heads[sampled(h, stripes, heads.length)]]);
        ctx.fillRect(hx0, gy + j * ch, Math.max(1, hx1 - hx0), Math.max(1, ch - gap));
      }
    }
  }
  ctx.fillStyle = "#000";
  ctx.font = "9px sans-serif";
  const everyL = Math.max(1, Math.ceil(11 / ch)); // label rows/columns so labels never overlap
  for (let j = 0; j < rows; j += everyL) {
    ctx.fillText(`L${sampled(j, rows, plan.layers)}`, x + PAD, gy + j * ch + Math.max(0, (ch - 9) / 2));
  }
  const everyS = Math.max(1, Math.ceil(18 / cw));
  for (let i = 0; i < cols; i += everyS) {
    ctx.fillText(String(sampled(i, cols, plan.steps)), gx + i * cw, gy + rows * ch + 2);
  }
  ctx.textAlign = "right";
  ctx.fillText("step", x + width - PAD, gy + rows * ch + 2);
  ctx.textAlign = "left";
  ctx.font = "11px sans-serif";
  const share = shares(plan);
  const colW = (width - 2 * PAD) / legendCols;
  const ly = gy + rows * ch + LINE;
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
