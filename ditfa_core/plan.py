"""The plan file: which strategy each attention layer uses at each step, as one strict JSON document.

Plans travel inside workflows shared on the internet, so a plan is untrusted input. The official
code stores plans with ``torch.save`` (a pickle, i.e. code execution on load) and ties them to one
step count; here a plan is parsed by the JSON parser only, every field is type- and range-checked
with a message that names the field, and a plan made at one step count runs at any other by
mapping steps along the schedule. The format is documented in ``plans/README.md``.
"""

from __future__ import annotations

import calendar
import json
import logging
import math
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .flops import plan_flops_fraction
from .strategies import Strategy

log = logging.getLogger(__name__)

FORMAT = "ditfastattn-plan"
VERSION = 1
SUPPORTED_VERSIONS: tuple[int, ...] = (1,)
MAX_TEXT_BYTES = 8 * 1024 * 1024
"""Plans larger than this are refused before parsing (a 10,000-step plan of 100 layers fits)."""
MAX_DIM = 10_000
"""Upper bound on steps, layers and heads: beyond any real model, low enough to bound memory."""
MAX_INT = 2**31 - 1
"""Upper bound on every other integer (token counts, grid and latent sizes, radii)."""
MAX_CELLS = 250_000
"""Upper bound on grid cells, a head-wise cell counting one per head (1,000 steps x 250 layers): with
``MAX_ITEMS`` it keeps reading or refusing any plan text well under a second and a few tens of MB."""
MAX_ITEMS = MAX_CELLS + 256
"""Upper bound on JSON strings and on ``,`` outside strings in a plan text, checked before parsing."""
MAX_DEPTH = 16
"""Upper bound on nested arrays and objects (a plan needs 4), checked before parsing."""
MAX_QUOTE = 60
"""Characters of a plan's value quoted in an error message; the rest is elided."""
WINDOW_KINDS = ("band", "nbhd")
BLANK = " \t\n\r\f\v"
"""What counts as blank in a string field (an explicit set, so the front end applies the same rule)."""

Cell = Strategy | tuple[Strategy, ...]
"""One grid cell: a strategy for the whole layer, or one strategy per head (head-wise plans)."""
Grid = tuple[tuple[Cell, ...], ...]

_STRATEGY_NAMES = ", ".join(s.value for s in Strategy)
_BY_NAME: dict[str, Strategy] = {s.value: s for s in Strategy}


class PlanError(ValueError):
    """A plan that cannot be read, is malformed, or does not fit the model; the message says where."""


# -- field checks shared by the dataclasses (programmatic construction) and the JSON reader --------


def _kind(value: Any) -> str:
    """The JSON name of a value's type, for error messages a plan author understands."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _quote(value: Any) -> str:
    """``repr(value)`` for an error message, at most ``MAX_QUOTE`` characters: a plan from a shared
    workflow may hold a 7 MB string or a 4,000-digit integer, which must not be copied (or, past
    Python's digit limit, converted) into the message."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**18:
        return f"an integer of about {int(abs(value).bit_length() * math.log10(2)) + 1} digits"
    if isinstance(value, (list, tuple, dict)):
        return f"an {_kind(value)} of {len(value)} items"
    text = repr(value)
    return text if len(text) <= MAX_QUOTE else f"{text[:MAX_QUOTE]}... ({len(text)} characters)"


def _int(value: Any, where: str, lo: int, hi: int = MAX_INT) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PlanError(f"{where}: expected an integer, got {_kind(value)}")
    if value < lo or value > hi:
        raise PlanError(f"{where}: must be between {lo} and {hi}, got {_quote(value)}")
    return value


def _num(value: Any, where: str, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PlanError(f"{where}: expected a number, got {_kind(value)}")
    try:
        value = float(value)
    except OverflowError:
        raise PlanError(f"{where}: must be finite, got {_quote(value)}") from None
    if not math.isfinite(value):
        raise PlanError(f"{where}: must be finite, got {value}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise PlanError(f"{where}: must be {bound}, got {value}")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise PlanError(f"{where}: expected a string, got {_kind(value)}")
    if not value.strip(BLANK):
        raise PlanError(f"{where}: must not be empty")
    return value


def _ints(value: Any, where: str, length: int | None, lo: int) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)):
        raise PlanError(f"{where}: expected an array of integers, got {_kind(value)}")
    if length is not None and len(value) != length:
        raise PlanError(f"{where}: expected {length} integers, got {len(value)}")
    if not value or len(value) > 8:
        raise PlanError(f"{where}: expected 1 to 8 integers, got {len(value)}")
    return tuple(_int(v, f"{where}[{i}]", lo) for i, v in enumerate(value))


def _set(obj: object, name: str, value: Any) -> None:
    """Store a normalised value on a frozen dataclass (lists from JSON become tuples, ints floats)."""
    object.__setattr__(obj, name, value)


# -- the document's parts ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """The model a plan was calibrated on: what must match before its grid means anything.

    ``num_layers`` counts the compressible attention layers (the grid's columns), not blocks.
    The token layout (image tokens, text tokens, image grid (t, h, w)) depends on resolution and
    prompt length, so ``check_fits`` compares it only in strict mode.
    """

    family: str
    num_layers: int
    num_heads: int
    n_image_tokens: int
    n_text_tokens: int = 0
    grid: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        _str(self.family, "model.family")
        _int(self.num_layers, "model.num_layers", 1, MAX_DIM)
        _int(self.num_heads, "model.num_heads", 1, MAX_DIM)
        _int(self.n_image_tokens, "model.n_image_tokens", 1)
        _int(self.n_text_tokens, "model.n_text_tokens", 0)
        if self.grid is not None:
            grid = _ints(self.grid, "model.grid", 3, 1)
            if math.prod(grid) != self.n_image_tokens:
                raise PlanError(
                    f"model.grid: {list(grid)} holds {_quote(math.prod(grid))} tokens but "
                    f"model.n_image_tokens is {self.n_image_tokens}"
                )
            _set(self, "grid", grid)

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "n_image_tokens": self.n_image_tokens,
            "n_text_tokens": self.n_text_tokens,
            "grid": list(self.grid) if self.grid is not None else None,
        }

    @classmethod
    def from_dict(cls, data: Any) -> ModelInfo:
        return cls(**_keys(data, "model", tuple(cls.__dataclass_fields__)))


@dataclass(frozen=True)
class WindowSetting:
    """The window WA-RS used during calibration; mirrors ``windows.WindowSpec`` field for field.

    ``fraction`` is the window area as a share of the image tokens (paper §4.1: 1/8); ``radius``,
    when given, overrides it (an int, or (rt, rh, rw) for an ``nbhd`` window).
    """

    kind: str = "band"
    fraction: float = 1 / 8
    radius: int | tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.kind not in WINDOW_KINDS:
            raise PlanError(
                f"calibration.window.kind: expected one of {', '.join(WINDOW_KINDS)}, got {_quote(self.kind)}"
            )
        _set(self, "fraction", _num(self.fraction, "calibration.window.fraction", 0.0, 1.0))
        if self.fraction == 0.0:
            raise PlanError("calibration.window.fraction: must be > 0")
        if isinstance(self.radius, (list, tuple)):
            if self.kind == "band":
                raise PlanError("calibration.window.radius: a band window takes one integer, got an array")
            _set(self, "radius", _ints(self.radius, "calibration.window.radius", 3, 0))
        elif self.radius is not None:
            _int(self.radius, "calibration.window.radius", 0)

    def to_dict(self) -> dict[str, Any]:
        radius = list(self.radius) if isinstance(self.radius, tuple) else self.radius
        return {"kind": self.kind, "fraction": self.fraction, "radius": radius}

    @classmethod
    def from_dict(cls, data: Any) -> WindowSetting:
        return cls(**_keys(data, "calibration.window", tuple(cls.__dataclass_fields__)))


@dataclass(frozen=True)
class Calibration:
    """How a plan was found, so a reader can judge it and reproduce it.

    ``steps`` is the sampler's step count during calibration and equals the grid's rows.
    ``resolution`` is (width, height) in pixels and ``latent_shape`` the latent tensor's shape, either
    may be unknown (null). ``generations`` is the search cost in uncompressed generations (the paper
    quotes about layers x 4; design target <= 3). ``created`` is an ISO 8601 time.
    """

    steps: int
    sampler: str
    scheduler: str
    cfg: float
    delta: float
    window: WindowSetting
    search: str
    seconds: float
    generations: float
    created: str
    tool_version: str
    resolution: tuple[int, int] | None = None
    latent_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        _int(self.steps, "calibration.steps", 1, MAX_DIM)
        _str(self.sampler, "calibration.sampler")
        _str(self.scheduler, "calibration.scheduler")
        _set(self, "cfg", _num(self.cfg, "calibration.cfg"))
        _set(self, "delta", _num(self.delta, "calibration.delta", 0.0))
        if not isinstance(self.window, WindowSetting):
            raise PlanError(f"calibration.window: expected a WindowSetting, got {_kind(self.window)}")
        _str(self.search, "calibration.search")
        _set(self, "seconds", _num(self.seconds, "calibration.seconds", 0.0))
        _set(self, "generations", _num(self.generations, "calibration.generations", 0.0))
        _str(self.created, "calibration.created")
        if not _is_iso_time(self.created):
            raise PlanError(f"calibration.created: not an ISO 8601 time: {_quote(self.created)} (write e.g. "
                            "2025-01-02T03:04:05+00:00)")
        _str(self.tool_version, "calibration.tool_version")
        if self.resolution is not None:
            _set(self, "resolution", _ints(self.resolution, "calibration.resolution", 2, 1))
        if self.latent_shape is not None:
            _set(self, "latent_shape", _ints(self.latent_shape, "calibration.latent_shape", None, 1))

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "sampler": self.sampler,
            "scheduler": self.scheduler,
            "cfg": self.cfg,
            "resolution": list(self.resolution) if self.resolution is not None else None,
            "latent_shape": list(self.latent_shape) if self.latent_shape is not None else None,
            "delta": self.delta,
            "window": self.window.to_dict(),
            "search": self.search,
            "seconds": self.seconds,
            "generations": self.generations,
            "created": self.created,
            "tool_version": self.tool_version,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Calibration:
        d = _keys(data, "calibration", tuple(cls.__dataclass_fields__))
        return cls(**{**d, "window": WindowSetting.from_dict(d["window"])})


@dataclass(frozen=True)
class Cost:
    """What the plan saves: attention FLOPs relative to an all-FULL run (``flops.plan_flops_fraction``).

    ``window_pair_fraction`` (the window's share of the N x N pairs at the calibration layout) and
    ``cond_fraction`` (the batch share ASC computes) are the assumptions behind the number; the
    pair fraction is null when the plan has no windowed cells to price.
    """

    attn_flops_fraction: float
    window_pair_fraction: float | None = None
    cond_fraction: float = 0.5

    def __post_init__(self) -> None:
        # At most 2: a FULL step that also refreshes the residual costs 1 + a window of at most 1.
        fraction = _num(self.attn_flops_fraction, "cost.attn_flops_fraction", 0.0, 2.0)
        _set(self, "attn_flops_fraction", fraction)
        if self.window_pair_fraction is not None:
            pairs = _num(self.window_pair_fraction, "cost.window_pair_fraction", 0.0, 1.0)
            _set(self, "window_pair_fraction", pairs)
        _set(self, "cond_fraction", _num(self.cond_fraction, "cost.cond_fraction", 0.0, 1.0))
        if self.cond_fraction == 0.0:
            raise PlanError("cost.cond_fraction: must be > 0")

    @classmethod
    def estimate(cls, grid: Sequence[Sequence[Cell]], window_pair_fraction: float,
                 cond_fraction: float = 0.5) -> Cost:
        """The cost of ``grid`` under the engine's accounting (residual refreshes included)."""
        return cls(plan_flops_fraction(grid, window_pair_fraction, cond_fraction), window_pair_fraction,
                   cond_fraction)

    def to_dict(self) -> dict[str, Any]:
        return {
            "attn_flops_fraction": self.attn_flops_fraction,
            "window_pair_fraction": self.window_pair_fraction,
            "cond_fraction": self.cond_fraction,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Cost:
        return cls(**_keys(data, "cost", tuple(cls.__dataclass_fields__)))


def _keys(data: Any, where: str, allowed: Sequence[str]) -> dict[str, Any]:
    """``data`` as a dict holding exactly the keys ``allowed``: a typo must not pass silently."""
    if not isinstance(data, dict):
        raise PlanError(f"{where}: expected an object, got {_kind(data)}")
    missing = [k for k in allowed if k not in data]
    if missing:
        raise PlanError(f"{where}: missing key(s) {', '.join(map(repr, missing))}")
    extra = sorted(k for k in data if k not in allowed)
    if extra:
        shown = ", ".join(_quote(k) for k in extra[:5])
        shown += f" and {len(extra) - 5} more" if len(extra) > 5 else ""
        raise PlanError(f"{where}: unexpected key(s) {shown}; allowed: {', '.join(allowed)}")
    return data


_ISO_TIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.[0-9]{3}(?:[0-9]{3})?)?)?"
    r"(?:Z|[+-]([0-9]{2}):([0-9]{2}))?)?"
)


def _is_iso_time(text: str) -> bool:
    """``YYYY-MM-DD[(T| )HH:MM[:SS[.fff[fff]]][Z|+HH:MM|-HH:MM]]``, a real date and time: what Python's
    ``isoformat`` and JavaScript's ``toISOString`` write; the front end checks the same rule."""
    m = _ISO_TIME.fullmatch(text)
    if m is None:
        return False
    year, month, day, hour, minute, second, oh, om = (int(g) if g else 0 for g in m.groups())
    return (year >= 1 and 1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]
            and hour <= 23 and minute <= 59 and second <= 59 and oh <= 23 and om <= 59)


def _strategy(value: Any, where: str) -> Strategy:
    """Exact canonical names only: a plan is data, so a near miss is reported, not guessed."""
    if isinstance(value, Strategy):
        return value
    if not isinstance(value, str):
        raise PlanError(f"{where}: expected a strategy name, got {_kind(value)}")
    try:
        return Strategy(value)
    except ValueError:
        pass
    try:
        hint = f" (did you mean {Strategy.parse(value).value!r}?)" if len(value) <= 20 else ""
    except ValueError:
        hint = ""
    raise PlanError(f"{where}: unknown strategy {_quote(value)}{hint}; expected one of {_STRATEGY_NAMES}")


Gap = tuple[int, int, int | None, str]


def _history_gaps(grid: Sequence[Sequence[Cell]], heads: int) -> list[Gap]:
    """Cells that cannot run as written: (step, layer, head or None, why).

    AST reuses the layer's output of an earlier step, so it cannot open a plan. WA-RS adds the
    residual of the layer's most recent FULL step, so it needs a FULL step before it (per head for
    head-wise cells). A plan with such cells is refused.
    """
    found: list[Gap] = []
    for layer in range(len(grid[0])):
        has_full = [False] * heads
        all_full = False
        for step, row in enumerate(grid):
            cell = row[layer]
            if isinstance(cell, Strategy):
                why = cell.gap(step, all_full)
                if why:
                    found.append((step, layer, None, why))
                if cell is Strategy.FULL:
                    has_full, all_full = [True] * heads, True
                continue
            for head, strategy in enumerate(cell):
                why = strategy.gap(step, has_full[head])
                if why:
                    found.append((step, layer, head, why))
                has_full[head] = has_full[head] or strategy is Strategy.FULL
            all_full = all(has_full)
    return found


def _remap_lane(column: Sequence[Strategy], rows: Sequence[int]) -> list[Strategy]:
    """One layer's (or head's) strategies for a run whose step s uses plan row ``rows[s]``.

    A WA-RS cell at row r adds the residual of the FULL step its plan row refers to: the last FULL
    row f before r. The engine adds the residual of the most recent FULL step of the run, so the
    cell keeps WA-RS only when that step stood for f (it ran row f, or it was a WA-RS cell with the
    same source f made FULL); otherwise it runs FULL, which stands for f from then on.
    """
    source: list[int | None] = []
    last = None
    for r, strategy in enumerate(column):
        source.append(last)
        if strategy is Strategy.FULL:
            last = r
    out, ran = [], None   # the plan row the run's most recent FULL step stands for
    for r in rows:
        strategy = column[r]
        if strategy.adds_residual and ran != source[r]:
            out.append(Strategy.FULL)
            ran = source[r]
            continue
        if strategy is Strategy.FULL:
            ran = r
        out.append(strategy)
    return out


def _cell_name(step: int, layer: int, head: int | None = None) -> str:
    return f"grid step {step}, layer {layer}" + (f", head {head}" if head is not None else "")


# -- the plan ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """A compression plan: the model it fits, how it was found, its steps x layers strategy grid, its cost.

    The constructor validates everything (a calibrator cannot build a plan the loader would refuse)
    and normalises the grid to tuples of ``Strategy``. A cell is one ``Strategy`` or a tuple of
    ``num_heads`` strategies (head-wise, DiTFastAttnV2).
    """

    model: ModelInfo
    grid: Grid
    cost: Cost
    calibration: Calibration | None = None
    _resampled: dict[int, Grid] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        if not isinstance(self.model, ModelInfo):
            raise PlanError(f"model: expected a ModelInfo, got {_kind(self.model)}")
        if not isinstance(self.cost, Cost):
            raise PlanError(f"cost: expected a Cost, got {_kind(self.cost)}")
        if self.calibration is not None and not isinstance(self.calibration, Calibration):
            raise PlanError(f"calibration: expected a Calibration or null, got {_kind(self.calibration)}")
        _set(self, "grid", self._checked_grid(self.grid))
        if self.calibration is not None and self.calibration.steps != self.steps:
            raise PlanError(
                f"calibration.steps is {self.calibration.steps} but the grid has {self.steps} steps"
            )
        bad = _history_gaps(self.grid, self.model.num_heads)
        if bad:
            step, layer, head, why = bad[0]
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise PlanError(f"{_cell_name(step, layer, head)}: {why}{more}")

    def _checked_grid(self, grid: Any) -> Grid:
        if not isinstance(grid, (list, tuple)):
            raise PlanError(f"grid: expected an array of steps, got {_kind(grid)}")
        if not 1 <= len(grid) <= MAX_DIM:
            raise PlanError(f"grid: must have between 1 and {MAX_DIM} steps, got {len(grid)}")
        layers, heads = self.model.num_layers, self.model.num_heads
        if len(grid) * layers > MAX_CELLS:
            raise PlanError(f"grid: {len(grid)} steps x {layers} layers is more than {MAX_CELLS:,} cells")
        cells_left = MAX_CELLS - len(grid) * layers
        rows = []
        for step, row in enumerate(grid):
            if not isinstance(row, (list, tuple)):
                raise PlanError(f"grid step {step}: expected an array of layers, got {_kind(row)}")
            if len(row) != layers:
                raise PlanError(f"grid step {step}: has {len(row)} layers, model.num_layers is {layers}")
            cells: list[Cell] = []
            for layer, cell in enumerate(row):
                if isinstance(cell, (list, tuple)):
                    cells_left -= len(cell) - 1
                    if cells_left < 0:
                        raise PlanError(f"grid: head-wise cells make more than {MAX_CELLS:,} cells")
                    if len(cell) != heads:
                        raise PlanError(
                            f"{_cell_name(step, layer)}: a head-wise cell needs {heads} strategies "
                            f"(model.num_heads), got {len(cell)}"
                        )
                    cells.append(tuple(_strategy(s, _cell_name(step, layer, h)) for h, s in enumerate(cell)))
                else:   # the common case first: an exact name, without building a location string
                    known = _BY_NAME.get(cell) if isinstance(cell, str) else None
                    cells.append(known if known is not None else _strategy(cell, _cell_name(step, layer)))
            rows.append(tuple(cells))
        return tuple(rows)

    # -- shape ------------------------------------------------------------------------------------

    @property
    def steps(self) -> int:
        return len(self.grid)

    @property
    def num_layers(self) -> int:
        return self.model.num_layers

    @property
    def is_headwise(self) -> bool:
        """Whether any cell holds per-head strategies (DiTFastAttnV2's head-wise plans)."""
        return any(not isinstance(cell, Strategy) for row in self.grid for cell in row)

    # -- constructors and serialisation -------------------------------------------------------------

    @classmethod
    def full(cls, num_steps: int, model_info: ModelInfo, calibration: Calibration | None = None) -> Plan:
        """All FULL: the identity plan (no compression), e.g. a starting point or an overhead check."""
        _int(num_steps, "steps", 1, MAX_DIM)
        grid = ((Strategy.FULL,) * model_info.num_layers,) * num_steps
        return cls(model_info, grid, Cost(1.0), calibration)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "model": self.model.to_dict(),
            "calibration": self.calibration.to_dict() if self.calibration is not None else None,
            "steps": self.steps,
            "grid": [[c.value if isinstance(c, Strategy) else [s.value for s in c] for c in row]
                     for row in self.grid],
            "cost": self.cost.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Any) -> Plan:
        """A plan from an already parsed JSON value (e.g. embedded in a workflow); validates it all."""
        if not isinstance(data, dict):
            raise PlanError(f"a plan must be a JSON object, got {_kind(data)}")
        if "format" not in data:
            raise PlanError(f"not a DiTFastAttn plan: no 'format' key (expected {FORMAT!r})")
        if data["format"] != FORMAT:
            raise PlanError(f"not a DiTFastAttn plan: format is {_quote(data['format'])}, "
                            f"expected {FORMAT!r}")
        if "version" not in data:
            raise PlanError("plan: missing key 'version'")
        version = data["version"]
        if isinstance(version, bool) or not isinstance(version, int):
            raise PlanError(f"version: expected an integer, got {_kind(version)}")
        if version not in SUPPORTED_VERSIONS:
            raise PlanError(f"unsupported plan version {_quote(version)}; this build reads version(s) "
                            f"{', '.join(map(str, SUPPORTED_VERSIONS))}")
        d = _keys(data, "plan", ("format", "version", "model", "calibration", "steps", "grid", "cost"))
        steps = _int(d["steps"], "steps", 1, MAX_DIM)
        grid = d["grid"]
        if isinstance(grid, list) and len(grid) != steps:
            raise PlanError(f"grid: has {len(grid)} steps (rows), 'steps' says {steps}")
        calibration = Calibration.from_dict(d["calibration"]) if d["calibration"] is not None else None
        return cls(ModelInfo.from_dict(d["model"]), grid, Cost.from_dict(d["cost"]), calibration)

    def to_json(self) -> str:
        """The plan as JSON text: one field per line, one grid row per line, short arrays inline,
        so that a plan reads like a table and diffs show which steps changed."""
        return _dump(self.to_dict(), "") + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Plan:
        """Parse and validate plan text; raises ``PlanError`` for anything but a valid plan."""
        if len(text) > MAX_TEXT_BYTES:
            unit = "bytes" if isinstance(text, bytes) else "characters"
            raise PlanError(f"plan too large: {len(text)} {unit}, the limit is {MAX_TEXT_BYTES} (8 MiB)")
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8-sig")
            except UnicodeDecodeError as e:
                raise PlanError(f"not JSON: not UTF-8 text ({e})") from None
        elif text.startswith("\ufeff"):
            text = text[1:]
        _check_shape(text)
        try:
            data = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float,
                              object_pairs_hook=_unique_keys)
        except PlanError:
            raise
        except RecursionError:
            raise PlanError("not JSON: nested too deeply") from None
        except ValueError as e:  # JSONDecodeError, and ints beyond Python's digit limit
            raise PlanError(f"not JSON: {e}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Plan:
        """Read a plan file; the size is checked before the text is read or parsed."""
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size > MAX_TEXT_BYTES:
                    raise PlanError(f"plan too large: {size} bytes, the limit is {MAX_TEXT_BYTES} (8 MiB)")
                data = f.read(MAX_TEXT_BYTES + 1)
            return cls.from_json(data)
        except PlanError as e:
            raise PlanError(f"{os.fspath(path)}: {e}") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically (temp file in the same folder, then ``os.replace``): a crash or a full disk
        leaves the old plan intact instead of a truncated file that a later load would refuse. The file
        gets the user's umask like any other (mkstemp's 0600 would hide a plan from its co-workers)."""
        path = os.fspath(path)
        text = self.to_json()
        tmp = os.path.join(os.path.dirname(path) or ".", f".plan-{secrets.token_hex(6)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        log.info("saved plan to %s (%s)", path, self.summary())

    # -- fitting and step mapping ------------------------------------------------------------------------

    def check_fits(self, strict: bool = True, **actual: Any) -> None:
        """Raise ``PlanError`` listing every difference between this plan's ``model`` and ``actual``.

        ``actual`` holds any of ModelInfo's fields as measured on the model and run (family, num_layers,
        num_heads; n_image_tokens, n_text_tokens, grid); a field not given (or None) is not compared.
        Family, layer count and head count must always match: the grid's columns (and head-wise cells)
        are meaningless on another model. ``strict`` also requires the calibration's token layout
        (resolution, prompt length); without it a different layout is accepted and logged, since the
        strategies transfer reasonably across resolutions of one model.
        """
        unknown = set(actual) - set(ModelInfo.__dataclass_fields__)
        if unknown:
            raise TypeError(f"check_fits: unknown field(s) {sorted(unknown)}")
        ours = self.model
        problems, layout = [], []
        for name, label in (("family", "family"), ("num_layers", "layers"), ("num_heads", "heads"),
                            ("n_image_tokens", "n_image_tokens"), ("n_text_tokens", "n_text_tokens"),
                            ("grid", "grid")):
            theirs = actual.get(name)
            if theirs is None:
                continue
            a, b = getattr(ours, name), theirs
            if name == "grid":
                a, b = tuple(a) if a is not None else None, tuple(b)
            same = a.casefold() == b.casefold() if name == "family" else a == b
            if not same:
                (problems if name in ("family", "num_layers", "num_heads") else layout).append(
                    f"{label}: plan has {a!r}, model has {b!r}" if name == "family"
                    else f"{label}: plan has {a}, model has {b}")
        if strict and layout:
            raise PlanError("plan does not fit the model: " + "; ".join(problems + layout) + " (strict mode "
                            "compares the token layout too; set mode to 'adapt' to run it at another "
                            "resolution or prompt length)")
        if problems:
            raise PlanError("plan does not fit the model: " + "; ".join(problems))
        if layout:
            log.info("plan calibrated on another token layout, used as is: %s", "; ".join(layout))

    def plan_step(self, step: int, total_steps: int) -> int:
        """The plan row for ``step`` of a ``total_steps`` run: position along the schedule,
        ``min(S - 1, floor(step * S / total_steps))``; step 0 always maps to row 0."""
        _check_step(step, total_steps)
        return min(self.steps - 1, step * self.steps // total_steps)

    def resampled(self, total_steps: int) -> Grid:
        """The grid of a ``total_steps`` run: row ``plan_step(s, total_steps)`` for each step s, except
        that a WA-RS cell whose residual source (the last FULL row before it) the run skipped runs
        FULL instead (``_remap_lane``; per head for head-wise cells)."""
        cached = self._resampled.get(total_steps)
        if cached is not None:
            return cached
        _check_step(0, total_steps)
        rows = [self.plan_step(s, total_steps) for s in range(total_steps)]
        columns = []
        for layer in range(self.num_layers):
            cells = [row[layer] for row in self.grid]
            if all(isinstance(c, Strategy) for c in cells):
                columns.append(_remap_lane(cells, rows))
                continue
            lanes = [_remap_lane([c if isinstance(c, Strategy) else c[h] for c in cells], rows)
                     for h in range(self.model.num_heads)]
            column = []
            for s, r in enumerate(rows):
                cell = tuple(lane[s] for lane in lanes)
                column.append(cell[0] if isinstance(cells[r], Strategy) and len(set(cell)) == 1 else cell)
            columns.append(column)
        grid = tuple(tuple(column[s] for column in columns) for s in range(total_steps))
        if len(self._resampled) >= 8:
            self._resampled.clear()
        self._resampled[total_steps] = grid
        return grid

    def cell_at(self, step: int, layer: int, total_steps: int) -> Cell:
        """The cell (per-layer strategy or per-head tuple) for ``step`` of a ``total_steps`` run."""
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer {layer} outside the plan's {self.num_layers} layers")
        _check_step(step, total_steps)
        return self.resampled(total_steps)[step][layer]

    def strategy_at(self, step: int, layer: int, total_steps: int) -> Strategy:
        """The per-layer strategy for ``step`` of a ``total_steps`` run (see ``resampled``)."""
        cell = self.cell_at(step, layer, total_steps)
        if not isinstance(cell, Strategy):
            raise PlanError(f"{_cell_name(self.plan_step(step, total_steps), layer)} is head-wise; "
                            "read it with cell_at")
        return cell

    def summary(self) -> str:
        """One line for logs and the UI: shape, share of each strategy, FLOPs fraction."""
        counts = {s: 0.0 for s in Strategy}
        headwise = 0
        for row in self.grid:
            for cell in row:
                if isinstance(cell, Strategy):
                    counts[cell] += 1.0
                else:
                    headwise += 1
                    for s in cell:
                        counts[s] += 1.0 / len(cell)
        total = self.steps * self.num_layers
        shares = ", ".join(f"{s.value} {100 * n / total:.1f}%" for s, n in counts.items() if n)
        extra = f"; {headwise} head-wise cells" if headwise else ""
        return (f"{self.model.family} plan, {self.steps} steps x {self.num_layers} layers: {shares}{extra}; "
                f"attention FLOPs {100 * self.cost.attn_flops_fraction:.1f}% of full")


def _dump(value: Any, indent: str) -> str:
    """JSON with one object field per line and arrays inline, except the plan's grid, which gets
    one step (row) per line."""
    if not isinstance(value, dict):
        return json.dumps(value)
    inner = indent + "  "
    items = []
    for key, item in value.items():
        if key == "grid" and not indent:
            text = "[\n" + ",\n".join(f"{inner}  {json.dumps(row)}" for row in item) + f"\n{inner}]"
        else:
            text = _dump(item, inner)
        items.append(f"{inner}{json.dumps(key)}: {text}")
    return "{\n" + ",\n".join(items) + f"\n{indent}}}"


def _check_step(step: int, total_steps: int) -> None:
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be an integer >= 1, got {total_steps!r}")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < total_steps:
        raise ValueError(f"step must be an integer in [0, {total_steps}), got {step!r}")


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def _check_shape(text: str) -> None:
    """Refuse, before parsing, a text with more than ``MAX_ITEMS`` strings or ``,`` separators or
    nested deeper than ``MAX_DEPTH``: bounds on the parser's time and memory that do not depend on
    the interpreter's stack (the front end's reader counts the same way)."""
    rest, strings = _JSON_STRING.subn("", text)
    if strings > MAX_ITEMS or rest.count(",") > MAX_ITEMS:
        raise PlanError(f"plan too large: more than {MAX_ITEMS:,} strings or values")
    brackets = _NOT_BRACKET.sub("", rest).encode("ascii")
    if brackets:
        b = torch.frombuffer(bytearray(brackets), dtype=torch.uint8)
        step = torch.where((b == ord("[")) | (b == ord("{")), 1, -1)
        if int(torch.cumsum(step, 0, dtype=torch.int32).max()) > MAX_DEPTH:
            raise PlanError(f"not JSON: nested deeper than {MAX_DEPTH} levels")


def _refuse_constant(name: str) -> float:
    raise PlanError(f"not a finite number: {name} (NaN and Infinity are not allowed in a plan)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise PlanError(f"not a finite number: {text}")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Duplicate keys would let two readers see two different plans in one file; refuse them."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise PlanError(f"duplicate key {_quote(key)}")
        out[key] = value
    return out

