"""The plan document: its parts (model, calibration, cost), its steps x layers strategy grid, and the
validation every part goes through, whether built by a calibrator or read from a file (``io``).

Every field is type- and range-checked with a message that names the field, so a calibrator cannot
build a plan the loader would refuse. The format is documented in ``plans/README.md``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..flops import plan_flops_fraction
from ..strategies import Strategy
from ..windows import KINDS
from . import io, resample
from .fields import (
    MAX_CELLS,
    MAX_DIM,
    Cell,
    Grid,
    PlanError,
    _cell_name,
    _int,
    _ints,
    _is_iso_time,
    _keys,
    _kind,
    _num,
    _quote,
    _set,
    _str,
)

log = logging.getLogger(__name__)

FORMAT = "ditfastattn-plan"
VERSION = 1
SUPPORTED_VERSIONS: tuple[int, ...] = (1,)
WINDOW_KINDS = KINDS

_STRATEGY_NAMES = ", ".join(s.value for s in Strategy)
_BY_NAME: dict[str, Strategy] = {s.value: s for s in Strategy}


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
            if self.kind == "band":   # the one flat (1-D) shape
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
        bad = resample.history_gaps(self.grid, self.model.num_heads)
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
        return io.format_text(self.to_dict())

    @classmethod
    def from_json(cls, text: str | bytes) -> Plan:
        """Parse and validate plan text; raises ``PlanError`` for anything but a valid plan."""
        return cls.from_dict(io.parse_text(text))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Plan:
        """Read a plan file; the size is checked before the text is read or parsed. A ``PlanError``
        names the file; an unreadable file raises ``OSError`` as ``open`` does."""
        try:
            return cls.from_json(io.read_limited(path))
        except PlanError as e:
            raise PlanError(f"{os.fspath(path)}: {e}") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically (``io.write_atomic``): a crash or a full disk leaves the old plan intact
        instead of a truncated file that a later load would refuse."""
        io.write_atomic(path, self.to_json())
        log.info("saved plan to %s (%s)", os.fspath(path), self.summary())

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
        return resample.plan_row(step, total_steps, self.steps)

    def resampled(self, total_steps: int) -> Grid:
        """The grid of a ``total_steps`` run: row ``plan_step(s, total_steps)`` for each step s, except
        that a WA-RS cell whose residual source (the last FULL row before it) the run skipped runs
        FULL instead (``resample.resample``; per head for head-wise cells). The last 8 are cached."""
        cached = self._resampled.get(total_steps)
        if cached is not None:
            return cached
        grid = resample.resample(self.grid, self.model.num_heads, total_steps)
        if len(self._resampled) >= 8:
            self._resampled.clear()
        self._resampled[total_steps] = grid
        return grid

    def cell_at(self, step: int, layer: int, total_steps: int) -> Cell:
        """The cell (per-layer strategy or per-head tuple) for ``step`` of a ``total_steps`` run."""
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer {layer} outside the plan's {self.num_layers} layers")
        resample.check_step(step, total_steps)
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
