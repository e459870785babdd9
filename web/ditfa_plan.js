// DiTFastAttn plan reader for the front end: the rules of ditfa_core/plan/ (Plan.from_json), so that
// the browser accepts exactly the plans the server accepts (tests/test_web_plan_reader.py runs both on
// the same texts, hostile ones included).
//
// Plans come from workflows shared on the internet. The text is read by a JSON reader written here, not
// JSON.parse, because the server's reader tells integers (3) from other numbers (3.0), refuses
// duplicate keys, and bounds nesting, strings and values before its parser runs; JSON.parse does none of
// these. Objects are read into Maps, so keys such as "__proto__" or "toString" are plain data, and every
// lookup is by own key (Map.has, Set.has), never `in`. Plain ES module; its one import is the strategy
// vocabulary generated from the server's registry (python3 -m ditfa_core.strategies).

import { NEEDS_EARLIER_FULL, NOT_AT_STEP_0, STRATEGY_NAMES, WINDOW_KINDS } from "./ditfa_vocabulary.js";

export { STRATEGY_NAMES };

export const FORMAT = "ditfastattn-plan";
export const VERSIONS = [1];
export const MAX_TEXT_CHARS = 8 * 1024 * 1024;
export const MAX_DIM = 10000;
export const MAX_INT = 2147483647;
export const MAX_CELLS = 250000;
export const MAX_ITEMS = MAX_CELLS + 256;
export const MAX_DEPTH = 16;
export const MAX_INT_DIGITS = 4300; // Python's int() refuses longer integer literals

const STRATEGY_SET = new Set(STRATEGY_NAMES);
const FIRST_STEP_BANNED = new Set(NOT_AT_STEP_0);
const NEEDS_FULL = new Set(NEEDS_EARLIER_FULL);

/** A JSON number written with a fraction or exponent: Python reads it as a float, never an integer. */
export class Float {
  constructor(value) {
    this.value = value;
  }
}

class PlanError extends Error {}

const fail = (message) => {
  throw new PlanError(message);
};

// -- the JSON reader ------------------------------------------------------------------------------------

const WS = /[ \t\n\r]*/y;
const STRING = /"(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/y;
const NUMBER = /-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/y;
const LITERAL = /true|false|null/y;

function readJson(text) {
  let pos = 0;
  let strings = 0;
  let commas = 0;
  const at = (re) => {
    re.lastIndex = pos;
    const m = re.exec(text);
    if (m) pos = re.lastIndex;
    return m;
  };
  const ws = () => at(WS);
  const comma = () => {
    commas += 1;
    if (commas > MAX_ITEMS) fail(`plan too large: more than ${MAX_ITEMS} strings or values`);
  };
  const string = () => {
    const m = at(STRING);
    if (!m) fail(`not JSON: bad string at ${pos}`);
    strings += 1;
    if (strings > MAX_ITEMS) fail(`plan too large: more than ${MAX_ITEMS} strings or values`);
    return JSON.parse(m[0]);
  };
  const value = (depth) => {
    ws();
    const c = text[pos];
    if (c === "{" || c === "[") {
      if (depth + 1 > MAX_DEPTH) fail(`not JSON: nested deeper than ${MAX_DEPTH} levels`);
      pos += 1;
      return c === "{" ? object(depth + 1) : array(depth + 1);
    }
    if (c === '"') return string();
    const n = at(NUMBER);
    if (n) {
      if (n[1] !== undefined || n[2] !== undefined) {
        const v = Number(n[0]);
        if (!Number.isFinite(v)) fail(`not a finite number: ${n[0].slice(0, 40)}`);
        return new Float(v);
      }
      if (n[0].replace("-", "").length > MAX_INT_DIGITS) fail("not JSON: integer literal too long");
      return Number(n[0]);
    }
    const lit = at(LITERAL);
    if (lit) return lit[0] === "null" ? null : lit[0] === "true";
    fail(`not JSON: unexpected ${c === undefined ? "end" : JSON.stringify(c)} at ${pos}`);
  };
  const object = (depth) => {
    const out = new Map();
    ws();
    if (text[pos] === "}") {
      pos += 1;
      return out;
    }
    for (;;) {
      ws();
      if (text[pos] !== '"') fail(`not JSON: expected a key at ${pos}`);
      const key = string();
      ws();
      if (text[pos] !== ":") fail(`not JSON: expected ':' at ${pos}`);
      pos += 1;
      const v = value(depth);
      if (out.has(key)) fail(`duplicate key ${JSON.stringify(key).slice(0, 60)}`);
      out.set(key, v);
      ws();
      if (text[pos] === ",") {
        pos += 1;
        comma();
        continue;
      }
      if (text[pos] === "}") {
        pos += 1;
        return out;
      }
      fail(`not JSON: expected ',' or '}' at ${pos}`);
    }
  };
  const array = (depth) => {
    const out = [];
    ws();
    if (text[pos] === "]") {
      pos += 1;
      return out;
    }
    for (;;) {
      out.push(value(depth));
      ws();
      if (text[pos] === ",") {
        pos += 1;
        comma();
        continue;
      }
      if (text[pos] === "]") {
        pos += 1;
        return out;
      }
      fail(`not JSON: expected ',' or ']' at ${pos}`);
    }
  };
  const result = value(0);
  ws();
  if (pos !== text.length) fail(`not JSON: extra data at ${pos}`);
  return result;
}

// -- field checks (plan/fields.py's _int, _num, _str, _ints, _keys) -------------------------------------

function kind(v) {
  if (v === null) return "null";
  if (typeof v === "boolean") return "boolean";
  if (v instanceof Float) return "number";
  if (typeof v === "number") return "integer";
  if (typeof v === "string") return "string";
  if (Array.isArray(v)) return "array";
  if (v instanceof Map) return "object";
  return typeof v;
}

function int(v, where, lo, hi = MAX_INT) {
  if (typeof v !== "number") fail(`${where}: expected an integer, got ${kind(v)}`);
  if (!(v >= lo && v <= hi)) fail(`${where}: must be between ${lo} and ${hi}`);
  return v;
}

function num(v, where, lo = null, hi = null) {
  if (!(v instanceof Float) && typeof v !== "number") fail(`${where}: expected a number, got ${kind(v)}`);
  const x = v instanceof Float ? v.value : v;
  if (!Number.isFinite(x)) fail(`${where}: must be finite`);
  if ((lo !== null && x < lo) || (hi !== null && x > hi)) fail(`${where}: must be between ${lo} and ${hi}`);
  return x;
}

function str(v, where) {
  if (typeof v !== "string") fail(`${where}: expected a string, got ${kind(v)}`);
  if (/^[ \t\n\r\f\v]*$/.test(v)) fail(`${where}: must not be empty`);
  return v;
}

function ints(v, where, length, lo) {
  if (!Array.isArray(v)) fail(`${where}: expected an array of integers, got ${kind(v)}`);
  if (length !== null && v.length !== length) fail(`${where}: expected ${length} integers, got ${v.length}`);
  if (v.length === 0 || v.length > 8) fail(`${where}: expected 1 to 8 integers, got ${v.length}`);
  return v.map((x, i) => int(x, `${where}[${i}]`, lo));
}

function keys(v, where, allowed) {
  if (!(v instanceof Map)) fail(`${where}: expected an object, got ${kind(v)}`);
  const missing = allowed.filter((k) => !v.has(k));
  if (missing.length) fail(`${where}: missing key(s) ${missing.join(", ")}`);
  const extra = [...v.keys()].filter((k) => !allowed.includes(k));
  if (extra.length) {
    const shown = extra.slice(0, 5).map((k) => JSON.stringify(k).slice(0, 60));
    fail(`${where}: unexpected key(s) ${shown.join(", ")}`);
  }
  return v;
}

const ISO_TIME = new RegExp(
  "^([0-9]{4})-([0-9]{2})-([0-9]{2})" +
  "(?:[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\\.[0-9]{3}(?:[0-9]{3})?)?)?" +
  "(?:Z|[+-]([0-9]{2}):([0-9]{2}))?)?$",
);

/** plan/fields.py's _is_iso_time: the same pattern and the same calendar checks. */
export function isIsoTime(text) {
  const m = ISO_TIME.exec(text);
  if (!m) return false;
  const [year, month, day, hour, minute, second, oh, om] = m.slice(1).map((g) => (g ? Number(g) : 0));
  const leap = year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0);
  const days = [31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1];
  return year >= 1 && month >= 1 && month <= 12 && day >= 1 && day <= days && hour <= 23 && minute <= 59 &&
    second <= 59 && oh <= 23 && om <= 59;
}

// -- the document (ModelInfo, WindowSetting, Calibration, Cost, Plan) ------------------------------------

function checkModel(v) {
  const m = keys(v, "model", ["family", "num_layers", "num_heads", "n_image_tokens", "n_text_tokens", "grid"]);
  str(m.get("family"), "model.family");
  int(m.get("num_layers"), "model.num_layers", 1, MAX_DIM);
  int(m.get("num_heads"), "model.num_heads", 1, MAX_DIM);
  const nImage = int(m.get("n_image_tokens"), "model.n_image_tokens", 1);
  int(m.get("n_text_tokens"), "model.n_text_tokens", 0);
  if (m.get("grid") !== null) {
    const grid = ints(m.get("grid"), "model.grid", 3, 1);
    if (grid[0] * grid[1] * grid[2] !== nImage) fail("model.grid: its product is not model.n_image_tokens");
  }
  return m;
}

function checkWindow(v) {
  const w = keys(v, "calibration.window", ["kind", "fraction", "radius"]);
  if (!WINDOW_KINDS.includes(w.get("kind"))) fail(`calibration.window.kind: expected one of ${WINDOW_KINDS}`);
  if (num(w.get("fraction"), "calibration.window.fraction", 0, 1) === 0) {
    fail("calibration.window.fraction: must be > 0");
  }
  const radius = w.get("radius");
  if (Array.isArray(radius)) {
    if (w.get("kind") === "band") fail("calibration.window.radius: a band window takes one integer");
    ints(radius, "calibration.window.radius", 3, 0);
  } else if (radius !== null) {
    int(radius, "calibration.window.radius", 0);
  }
}

function checkCalibration(v) {
  const c = keys(v, "calibration", ["steps", "sampler", "scheduler", "cfg", "delta", "window", "search",
    "seconds", "generations", "created", "tool_version", "resolution", "latent_shape"]);
  checkWindow(c.get("window"));
  int(c.get("steps"), "calibration.steps", 1, MAX_DIM);
  str(c.get("sampler"), "calibration.sampler");
  str(c.get("scheduler"), "calibration.scheduler");
  num(c.get("cfg"), "calibration.cfg");
  num(c.get("delta"), "calibration.delta", 0);
  str(c.get("search"), "calibration.search");
  num(c.get("seconds"), "calibration.seconds", 0);
  num(c.get("generations"), "calibration.generations", 0);
  if (!isIsoTime(str(c.get("created"), "calibration.created"))) fail("calibration.created: not an ISO 8601 time");
  str(c.get("tool_version"), "calibration.tool_version");
  if (c.get("resolution") !== null) ints(c.get("resolution"), "calibration.resolution", 2, 1);
  if (c.get("latent_shape") !== null) ints(c.get("latent_shape"), "calibration.latent_shape", null, 1);
  return c;
}

function checkCost(v) {
  const c = keys(v, "cost", ["attn_flops_fraction", "window_pair_fraction", "cond_fraction"]);
  num(c.get("attn_flops_fraction"), "cost.attn_flops_fraction", 0, 2);
  const pairs = c.get("window_pair_fraction");
  if (pairs !== null) num(pairs, "cost.window_pair_fraction", 0, 1);
  if (num(c.get("cond_fraction"), "cost.cond_fraction", 0, 1) === 0) fail("cost.cond_fraction: must be > 0");
  return c;
}

function strategy(v, where) {
  if (typeof v !== "string") fail(`${where}: expected a strategy name, got ${kind(v)}`);
  if (!STRATEGY_SET.has(v)) fail(`${where}: unknown strategy ${JSON.stringify(v).slice(0, 60)}`);
  return v;
}

/** Plan._checked_grid: rows of `layers` cells, a cell a strategy or `heads` strategies; the cell cap. */
function checkGrid(grid, layers, heads) {
  if (!Array.isArray(grid)) fail(`grid: expected an array of steps, got ${kind(grid)}`);
  if (grid.length < 1 || grid.length > MAX_DIM) fail(`grid: must have between 1 and ${MAX_DIM} steps`);
  if (grid.length * layers > MAX_CELLS) fail(`grid: more than ${MAX_CELLS} cells`);
  let cellsLeft = MAX_CELLS - grid.length * layers;
  return grid.map((row, s) => {
    if (!Array.isArray(row)) fail(`grid step ${s}: expected an array of layers, got ${kind(row)}`);
    if (row.length !== layers) fail(`grid step ${s}: has ${row.length} layers, model.num_layers is ${layers}`);
    return row.map((cell, l) => {
      if (!Array.isArray(cell)) return [strategy(cell, `grid step ${s}, layer ${l}`)];
      cellsLeft -= cell.length - 1;
      if (cellsLeft < 0) fail(`grid: head-wise cells make more than ${MAX_CELLS} cells`);
      if (cell.length !== heads) fail(`grid step ${s}, layer ${l}: a head-wise cell needs ${heads} strategies`);
      return cell.map((h, i) => strategy(h, `grid step ${s}, layer ${l}, head ${i}`));
    });
  });
}

/** plan/resample.py's history_gaps, with each strategy's own rule (StrategySpec.gap, via the vocabulary): output
 * reuse never at step 0; a residual strategy only after a FULL step in its layer (per head). */
function checkHistory(raw, grid, heads) {
  for (let l = 0; l < grid[0].length; l++) {
    const hasFull = new Array(heads).fill(false);
    for (let s = 0; s < grid.length; s++) {
      const where = `grid step ${s}, layer ${l}`;
      const gap = (x, ready) => {
        if (s === 0 && FIRST_STEP_BANNED.has(x)) return `${x} at step 0 has no earlier output to reuse`;
        return NEEDS_FULL.has(x) && !ready ? `${x} needs an earlier FULL step in its layer` : null;
      };
      if (!Array.isArray(raw[s][l])) {
        const x = grid[s][l][0];
        const why = gap(x, hasFull.every(Boolean));
        if (why) fail(`${where}: ${why}`);
        if (x === "FULL") hasFull.fill(true);
        continue;
      }
      grid[s][l].forEach((x, h) => {
        const why = gap(x, hasFull[h]);
        if (why) fail(`${where}, head ${h}: ${why}`);
        hasFull[h] = hasFull[h] || x === "FULL";
      });
    }
  }
}

/** A Map (and Floats) from the reader as plain data for display; only validated keys reach here. */
function plain(v) {
  if (v instanceof Float) return v.value;
  if (Array.isArray(v)) return v.map(plain);
  if (v instanceof Map) return Object.fromEntries([...v].map(([k, x]) => [k, plain(x)]));
  return v;
}

function checkPlan(data) {
  if (!(data instanceof Map)) fail(`a plan must be a JSON object, got ${kind(data)}`);
  if (!data.has("format")) fail(`not a DiTFastAttn plan: no 'format' key (expected "${FORMAT}")`);
  if (data.get("format") !== FORMAT) fail("not a DiTFastAttn plan: another format");
  if (!data.has("version")) fail("plan: missing key 'version'");
  const version = data.get("version");
  if (typeof version !== "number") fail(`version: expected an integer, got ${kind(version)}`);
  if (!VERSIONS.includes(version)) fail(`unsupported plan version; this build reads ${VERSIONS.join(", ")}`);
  const d = keys(data, "plan", ["format", "version", "model", "calibration", "steps", "grid", "cost"]);
  const steps = int(d.get("steps"), "steps", 1, MAX_DIM);
  const rawGrid = d.get("grid");
  if (Array.isArray(rawGrid) && rawGrid.length !== steps) {
    fail(`grid: has ${rawGrid.length} steps (rows), 'steps' says ${steps}`);
  }
  const calibration = d.get("calibration") === null ? null : checkCalibration(d.get("calibration"));
  const model = checkModel(d.get("model"));
  const cost = checkCost(d.get("cost"));
  const layers = model.get("num_layers");
  const heads = model.get("num_heads");
  const cells = checkGrid(rawGrid, layers, heads);
  if (calibration !== null && calibration.get("steps") !== steps) {
    fail(`calibration.steps is ${calibration.get("steps")} but the grid has ${steps} steps`);
  }
  checkHistory(rawGrid, cells, heads);
  const flops = cost.get("attn_flops_fraction");
  return {
    family: model.get("family"),
    steps,
    layers,
    heads,
    headwise: rawGrid.some((row) => row.some(Array.isArray)),
    grid: cells,
    flops: flops instanceof Float ? flops.value : flops,
    calibration: calibration === null ? null : plain(calibration),
  };
}

/**
 * Read plan text as the server does (Plan.from_json). Returns {plan} or {error}; never throws, never
 * evaluates anything. `plan.grid[s][l]` is the list of strategies of a cell (one per head when
 * head-wise; `plan.headwise` says whether any cell is, `plan.heads` is model.num_heads).
 */
export function parsePlan(text) {
  if (typeof text !== "string") return { error: "no plan" };
  if (text.length > MAX_TEXT_CHARS) {
    // The server counts code points; a surrogate pair is one.
    const pairs = text.match(/[\uD800-\uDBFF][\uDC00-\uDFFF]/g)?.length ?? 0;
    if (text.length - pairs > MAX_TEXT_CHARS) return { error: `plan too large: ${text.length} characters` };
  }
  const body = text.startsWith("\uFEFF") ? text.slice(1) : text;
  if (!/[^ \t\n\r]/.test(body)) return { error: "no plan" };
  try {
    return { plan: checkPlan(readJson(body)) };
  } catch (e) {
    if (e instanceof PlanError) return { error: e.message };
    if (e instanceof SyntaxError) return { error: `not JSON: ${e.message}` };
    if (e instanceof RangeError) return { error: "not JSON: too large to read" };
    throw e;
  }
}
