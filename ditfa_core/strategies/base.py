"""What a compression strategy is: one record that every other module asks.

A strategy says how one attention layer (or, in a head-wise plan, one head of it) computes its
output at one step (DiTFastAttn §3.2-3.4, DiTFastAttnV2 §3). Everything the pack needs to know
about it lives in its record: how its rows execute (:meth:`StrategySpec.op`), what it costs
(:meth:`~StrategySpec.cost`), which caches it reads (``adds_residual``, ``reuses_output``), when it
is legal (:meth:`~StrategySpec.gap`), how the fast search predicts its output (:meth:`~StrategySpec.
predict`), and how it is drawn (``label``, ``colour``). The flags below describe the five V1
strategies and V2's arrow attention; a strategy that needs other behaviour subclasses the record
in its own module and overrides a method.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import torch


class Op(str, enum.Enum):
    """What the engine does for one chunk of rows (and one group of heads) under a strategy.

    DENSE   the dense kernel on these rows
    WINDOW  the window kernel on these rows (plus the cached residual when the strategy adds it)
    REUSE   the output cached at this layer's last computed step
    SHARE   the output of the conditional rows over the same tokens (CFG sharing)
    """

    DENSE = "dense"
    WINDOW = "window"
    REUSE = "reuse"
    SHARE = "share"


@dataclass(frozen=True)
class Candidates:
    """Everything a probe forward knows at one layer, from which each strategy's output is predicted
    without running it (the fast search, ``search/fast.py``). Tensors are (B, H, N, D); None where the
    cache does not exist yet.

    full      the dense output O
    window    the window output W over the same rows (None when no window pass ran)
    residual  the residual O_f - W_f of the layer's most recent FULL step
    last      the layer's output at its last computed step
    share     ``share(f)`` is ``f(self)`` with each unconditional chunk's rows replaced by ``f`` of its
              conditional lender (rows of this batch, or the candidates a separate conditional call
              of the same evaluation kept); None when ``f`` gives None or some chunk has no lender
    """

    full: torch.Tensor
    window: torch.Tensor | None
    residual: torch.Tensor | None
    last: torch.Tensor | None = None
    share: Callable[[Callable[[Candidates], torch.Tensor | None]], torch.Tensor | None] | None = None


@dataclass(frozen=True)
class StrategySpec:
    """One strategy: its plan-file name and every rule that depends on it.

    name           the plan file's word for it (stable; upper case, '_' separated)
    label          the legend's words
    colour         RGB of the heatmap cell (PNG and web, via the generated vocabulary)
    order          position in the vocabulary (legends, plan summaries)
    kernel         "dense", "window" or "none": what the computing rows run
    adds_residual  the window output is corrected by the residual of the most recent FULL step
                   (WA-RS, §3.2); the FULL step computes that residual when a later step reads it
    reuses_output  the output of the last computed step is reused (AST, §3.3)
    shares_cfg     unconditional rows receive the conditional rows' output (ASC, §3.4)
    greedy_rank    position in paper Algorithm 1's candidate order (most compressive first); None
                   when the layer-wise searches do not try it
    headwise       a candidate of the head-wise search (DiTFastAttnV2)
    """

    name: str
    label: str
    colour: tuple[int, int, int]
    order: int
    kernel: str = "dense"
    adds_residual: bool = False
    reuses_output: bool = False
    shares_cfg: bool = False
    greedy_rank: int | None = None
    headwise: bool = False

    def __post_init__(self) -> None:
        if self.kernel not in ("dense", "window", "none"):
            raise ValueError(f"{self.name}: kernel must be 'dense', 'window' or 'none', got {self.kernel!r}")
        if self.reuses_output != (self.kernel == "none"):
            raise ValueError(f"{self.name}: a strategy runs no kernel exactly when it reuses an output")
        if self.adds_residual and self.kernel != "window":
            raise ValueError(f"{self.name}: only a window strategy adds the residual")

    @property
    def uses_window(self) -> bool:
        return self.kernel == "window"

    @property
    def is_full(self) -> bool:
        """Dense on every row: the uncompressed computation, and the source of residuals."""
        return self.kernel == "dense" and not self.shares_cfg

    # -- execution ---------------------------------------------------------------------------

    def op(self, unconditional: bool) -> Op:
        """What a chunk of rows runs; ``unconditional``: the chunk may borrow under CFG sharing."""
        if self.reuses_output:
            return Op.REUSE
        if self.shares_cfg and unconditional:
            return Op.SHARE
        return Op.WINDOW if self.uses_window else Op.DENSE

    # -- cost --------------------------------------------------------------------------------

    def cost(self, pair_fraction: float, cond_fraction: float = 0.5, refresh_residual: bool = False) -> float:
        """Attention FLOPs of one (step, layer) or (step, layer, head) relative to a dense call.

        ``pair_fraction``: share of the (query, key) pairs the window admits; ``cond_fraction``: share
        of the rows computed under CFG sharing (1/2 for one cond + one uncond chunk);
        ``refresh_residual``: a FULL step also runs the window pass whose residual a later step
        reads (over every row). Counting convention in ``flops.py``.
        """
        if not 0.0 <= pair_fraction <= 1.0:
            raise ValueError(f"pair_fraction must lie in [0, 1], got {pair_fraction}")
        if not 0.0 < cond_fraction <= 1.0:
            raise ValueError(f"cond_fraction must lie in (0, 1], got {cond_fraction}")
        if self.reuses_output:
            return 0.0
        base = pair_fraction if self.uses_window else 1.0
        if self.shares_cfg:
            base *= cond_fraction
        return base + (pair_fraction if refresh_residual and self.is_full else 0.0)

    # -- legality ----------------------------------------------------------------------------

    def gap(self, step: int, has_full: bool) -> str | None:
        """Why this strategy cannot run at ``step`` of a lane (a layer, or a head of one) whose earlier
        steps include a FULL one (``has_full``) or not; None when it can."""
        if step == 0 and self.reuses_output:
            return f"{self.name} at step 0 has no earlier output to reuse"
        if self.adds_residual and not has_full:
            return f"{self.name} needs an earlier FULL step in its layer (its residual comes from there)"
        return None

    # -- fast-search prediction --------------------------------------------------------------

    def predict(self, c: Candidates) -> torch.Tensor | None:
        """The output this strategy would give at a probed call (None when its cache is missing)."""
        if self.reuses_output:
            return c.last
        if self.shares_cfg:
            return c.share(self.computed) if c.share is not None else None
        return self.computed(c)

    def computed(self, c: Candidates) -> torch.Tensor | None:
        """What the computing rows output: dense, window, or window + residual."""
        if not self.uses_window:
            return c.full
        if c.window is None or (self.adds_residual and c.residual is None):
            return None
        return c.window + c.residual if self.adds_residual else c.window
