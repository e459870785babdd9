// DiTFastAttn plan heatmap for the ComfyUI canvas: draw a plan (read by ditfa_plan.js, never eval) as
// steps x layers coloured by strategy, with a legend and the plan's cost and calibration as text. A
// head-wise plan draws each layer as a band of head rows (head 0 on top), bands parted by a 1 px line.
// A plan larger than the panel is drawn downsampled (one sampled cell, or head, per drawn row), so
// drawing costs the same for 10 cells and for 250,000.
//
// Plain ES modules, no build step, no ComfyUI imports: ditfastattn.js wires them to the nodes, and the
// browser test loads them on their own. Names, colours and labels come from ditfa_vocabulary.js, which
// `python3 -m ditfa_core.strategies` generates from the server's strategy registry, so a plan looks the
// same in a node, in the README and on the command line.

import { MAX_TEXT_CHARS, parsePlan } from "./ditfa_plan.js";
import { COLOURS, LABELS, STRATEGY_NAMES } from "./ditfa_vocabulary.js";

export { COLOURS, LABELS, parsePlan };
export const MAX_PLAN_CHARS = MAX_TEXT_CHARS; // the Python reader's limit (ditfa_core/plan/fields.py)

export const STRATEGIES = STRATEGY_NAMES;

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

/** The caption lines (those of ditfa_core/heatmap.py; a radius is labelled as one). `shownHeads`: head
 * rows drawn per layer band, when fewer than the plan's heads (the panel samples them). */
export function caption(plan, shownHeads = plan.heads) {
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
  if (plan.headwise) {
    const sampledNote = shownHeads < plan.heads ? ` (${shownHeads} drawn, evenly sampled)` : "";
    lines.push(`head-wise: each layer is a band of ${plan.heads} head rows, head 0 on top${sampledNote}`);
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

const GRID_H = 720; // px the grid's rows aim at
const MAX_ROWS = 240; // drawn layer rows (bands): 720 px of 3 px rows

/** The strategies the plan uses, in vocabulary order: the legend's entries. */
const present = (plan) => STRATEGIES.filter((s) => shares(plan)[s] > 0);

/**
 * The drawn grid for a panel `width` px wide: `cols` columns (steps) of `cw` px in [2, 24] and `rows`
 * layer bands of `ch` px. Layer-wise, a band is one row in [3, 12] px, as tall as a column is wide, so 60
 * layers stay under 720 px and 50 steps fit a 400 px node. Head-wise, a band is `headRows` rows of `hh`
 * px (1 to 6) and a 1 px separator (`sep`), aiming at 720 px in all: SD3's 24 x 24 heads draw every head,
 * Flux's 57 layers draw 11 of 24. More steps than 2 px columns, more than MAX_ROWS layers, or more heads
 * than rows are sampled: drawn column i shows step floor(i * steps / cols), and likewise for the others.
 */
export function layout(plan, width) {
  const avail = Math.max(2, width - LEFT - 2 * PAD);
  const cols = Math.min(plan.steps, Math.floor(avail / 2));
  const cw = Math.max(2, Math.min(24, Math.floor(avail / cols)));
  const rows = Math.min(plan.layers, MAX_ROWS);
  const legendCols = width >= 360 ? 2 : 1;
  const legendRows = Math.ceil(present(plan).length / legendCols);
  const common = { cols, rows, cw, legendCols, legendRows };
  if (!plan.headwise) {
    const ch = Math.max(3, Math.min(12, cw, Math.floor(GRID_H / rows)));
    return { ...common, ch, headRows: 1, hh: ch, sep: 0 };
  }
  const sep = 1;
  const room = Math.max(2, Math.floor(GRID_H / rows)) - sep;
  const headRows = Math.max(1, Math.min(plan.heads, room));
  const hh = Math.max(1, Math.min(6, cw, Math.floor(room / headRows)));
  return { ...common, ch: headRows * hh + sep, headRows, hh, sep };
}

const sampled = (i, drawn, total) => Math.floor((i * total) / drawn);

/** The caption as drawn: wrapped to the panel's `width` in 11 px text (`ctx` measures it). */
function captionLines(ctx, plan, width) {
  ctx.save();
  ctx.font = "11px sans-serif";
  const lines = caption(plan, layout(plan, width).headRows).flatMap((l) => wrap(ctx, l, width - 2 * PAD));
  ctx.restore();
  return lines;
}

/** Where the grid starts in a panel drawn at (0, 0): its first column's left and first band's top, px. */
export function gridOrigin(ctx, plan, width) {
  return { x: PAD + LEFT, y: PAD + captionLines(ctx, plan, width).length * LINE + 4 };
}

/** Height in px of the panel for `parsed` (a parsePlan result) at `width`; `ctx` measures text. */
export function panelHeight(ctx, parsed, width) {
  if (!parsed || !parsed.plan) return PAD * 2 + LINE * 2;
  const plan = parsed.plan;
  const { rows, ch, legendRows } = layout(plan, width);
  return gridOrigin(ctx, plan, width).y + rows * ch + LINE + legendRows * LEGEND_ROW + PAD;
}

/**
 * The cells of one drawn column at (x0, gy): per layer band, a layer-wise cell as one rectangle, a
 * head-wise cell as one rectangle per run of equal strategies down its drawn head rows.
 */
function drawColumn(ctx, plan, row, x0, gy, at) {
  const { rows, ch, headRows, hh, sep } = at;
  const w = at.cw - (at.cw >= 5 && (plan.headwise || ch >= 5) ? 1 : 0); // a gap when cells can afford it
  const gapY = plan.headwise ? sep : w < at.cw ? 1 : 0;
  for (let j = 0; j < rows; j++) {
    const heads = row[sampled(j, rows, plan.layers)];
    const y0 = gy + j * ch;
    if (heads.length === 1) {
      ctx.fillStyle = COLOURS[heads[0]];
      ctx.fillRect(x0, y0, w, Math.max(1, ch - gapY));
      continue;
    }
    let start = 0;
    for (let h = 1; h <= headRows; h++) {
      const here = heads[sampled(start, headRows, heads.length)];
      if (h < headRows && heads[sampled(h, headRows, heads.length)] === here) continue;
      ctx.fillStyle = COLOURS[here];
      ctx.fillRect(x0, y0 + start * hh, w, (h - start) * hh);
      start = h;
    }
  }
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
  const at = layout(plan, width);
  const { cols, rows, cw, ch, legendCols } = at;
  ctx.fillStyle = "#000";
  captionLines(ctx, plan, width).forEach((l, i) => ctx.fillText(l, x + PAD, y + PAD + i * LINE));
  const origin = gridOrigin(ctx, plan, width);
  const gx = x + origin.x;
  const gy = y + origin.y;
  for (let i = 0; i < cols; i++) {
    drawColumn(ctx, plan, plan.grid[sampled(i, cols, plan.steps)], gx + i * cw, gy, at);
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
  present(plan).forEach((s, i) => {
    const lx = x + PAD + (i % legendCols) * colW;
    const yy = ly + Math.floor(i / legendCols) * LEGEND_ROW;
    ctx.fillStyle = COLOURS[s];
    ctx.fillRect(lx, yy, 11, 11);
    ctx.strokeStyle = "#000";
    ctx.lineWidth = 1;
    ctx.strokeRect(lx + 0.5, yy + 0.5, 10, 10);
    ctx.fillStyle = "#000";
    const percent = share[s] >= 0.005 ? `${(100 * share[s]).toFixed(0)}%` : "<1%";
    ctx.fillText(`${LABELS[s]} ${percent}`, lx + 16, yy);
  });
  ctx.restore();
  return height;
}
