"""The caches of one sampling run: residuals, outputs and the CFG partner output.

Every tensor is stored with a signature (rows, heads, tokens, head dim, dtype, token layout), so a
cache written for one batch size, resolution or text length is never read for another: a lookup
whose signature differs drops the stale entry and misses. The run owner calls ``clear()`` when the
run ends (in a ``finally``), and the bytes held are counted so the host can report them.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from dataclasses import dataclass

import torch

from .windows import TokenLayout

log = logging.getLogger(__name__)

Signature = tuple[Hashable, ...]


def signature(x: torch.Tensor, layout: TokenLayout) -> Signature:
    """What must match for a cached tensor to stand in for ``x``'s computation."""
    return (*x.shape, x.dtype, layout)


@dataclass
class Entry:
    """A cached (B, H, N, D) tensor; ``heads`` marks which heads hold a value (None: all of them),
    since a head-wise step refreshes the residual of its FULL heads only."""

    tensor: torch.Tensor
    signature: Signature
    step: int
    heads: tuple[bool, ...] | None = None


@dataclass
class PartnerEntry:
    """A conditional chunk's attention output, kept for the unconditional call of one evaluation."""

    tensor: torch.Tensor
    layout: TokenLayout
    eval_key: Hashable


class RunState:
    """Caches of one run, keyed so that layers, CFG chunks, shapes and grids cannot mix.

    ``cache_device``: where tensors rest between steps (e.g. ``torch.device("cpu")`` to spare
    GPU memory); ``None`` keeps them where they were computed.
    """

    def __init__(self, cache_device: torch.device | str | None = None) -> None:
        self.cache_device = torch.device(cache_device) if cache_device is not None else None
        self._residuals: dict[tuple[int, Hashable], Entry] = {}
        self._outputs: dict[tuple[int, Hashable], Entry] = {}
        self._partners: dict[tuple[int, Hashable], PartnerEntry] = {}

    # -- storage -----------------------------------------------------------------------------

    def _stash(self, x: torch.Tensor) -> torch.Tensor:
        if self.cache_device is None or x.device == self.cache_device:
            return x
        return x.to(self.cache_device, non_blocking=True)

    @staticmethod
    def _fetch(entry: Entry | PartnerEntry, like: torch.Tensor) -> torch.Tensor:
        t = entry.tensor
        return t if t.device == like.device else t.to(like.device, non_blocking=True)

    def _entry(self, table: dict, layer: int, key: Hashable, like: torch.Tensor, layout: TokenLayout,
               step: int) -> Entry | None:
        entry = table.get((layer, key))
        if entry is None:
            return None
        if entry.signature != signature(like, layout) or entry.step > step:
            # Another shape, grid or text length, or a step from a run that went back in time:
            # the entry can never be valid again for this key, so free it now.
            del table[(layer, key)]
            return None
        return entry

    def _get(
        self, table: dict, layer: int, key: Hashable, like: torch.Tensor, layout: TokenLayout, step: int
    ) -> torch.Tensor | None:
        entry = self._entry(table, layer, key, like, layout, step)
        return None if entry is None else self._fetch(entry, like)

    def put_residual(
        self, layer: int, key: Hashable, r: torch.Tensor, layout: TokenLayout, step: int,
        heads: list[int] | None = None, like: torch.Tensor | None = None,
    ) -> None:
        """Keep the residual ``r`` of a FULL step: of every head, or of ``heads`` only, when ``r`` is
        (B, len(heads), N, D) and ``like`` is the call's (B, H, N, D) query (the other heads keep theirs)."""
        if heads is None:
            self._residuals[(layer, key)] = Entry(self._stash(r), signature(r, layout), step)
            return
        if like is None:
            raise ValueError("a per-head residual needs ``like``, the full-shape tensor it belongs to")
        old = self._entry(self._residuals, layer, key, like, layout, step)
        if old is not None:
            t, valid = old.tensor.clone(), list(old.heads or (True,) * like.shape[1])
        else:
            t, valid = self._stash(torch.zeros_like(like)), [False] * like.shape[1]
        t[:, heads] = r.to(t.device)
        for h in heads:
            valid[h] = True
        known = None if all(valid) else tuple(valid)
        self._residuals[(layer, key)] = Entry(t, signature(like, layout), step, known)

    def residual(
        self, layer: int, key: Hashable, like: torch.Tensor, layout: TokenLayout, step: int,
        heads: list[int] | None = None,
    ) -> torch.Tensor | None:
        """The residual for ``like``'s computation (every head, or ``heads`` only), or None when any
        of those heads has none."""
        entry = self._entry(self._residuals, layer, key, like, layout, step)
        if entry is None:
            return None
        if entry.heads is not None and not all(entry.heads[h] for h in (heads or range(len(entry.heads)))):
            return None
        t = self._fetch(entry, like)
        return t if heads is None else t[:, heads]

    def put_output(self, layer: int, key: Hashable, o: torch.Tensor, layout: TokenLayout, step: int) -> None:
        self._outputs[(layer, key)] = Entry(self._stash(o), signature(o, layout), step)

    def output(
        self, layer: int, key: Hashable, like: torch.Tensor, layout: TokenLayout, step: int
    ) -> torch.Tensor | None:
        return self._get(self._outputs, layer, key, like, layout, step)

    def put_partner(
        self, layer: int, tokens: Hashable, o: torch.Tensor, layout: TokenLayout, eval_key: Hashable
    ) -> None:
        self._partners[(layer, tokens)] = PartnerEntry(self._stash(o), layout, eval_key)

    def partner(
        self, layer: int, tokens: Hashable, eval_key: Hashable, like: torch.Tensor
    ) -> PartnerEntry | None:
        """The conditional output over ``tokens`` kept at ``layer`` during evaluation ``eval_key``, on
        ``like``'s device."""
        entry = self._partners.get((layer, tokens))
        if entry is None or eval_key is None or entry.eval_key != eval_key:
            return None
        return PartnerEntry(self._fetch(entry, like), entry.layout, entry.eval_key)

    # -- bookkeeping -------------------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        """Bytes held by all cached tensors (what a user sees as extra memory)."""
        tensors = [e.tensor for e in (*self._residuals.values(), *self._outputs.values())]
        tensors += [e.tensor for e in self._partners.values()]
        seen: set[int] = set()
        total = 0
        for t in tensors:
            ptr = t.untyped_storage().data_ptr()
            if ptr not in seen:
                seen.add(ptr)
                total += t.untyped_storage().nbytes()
        return total

    def snapshot(self) -> tuple[dict, dict, dict]:
        """The cache tables as they are now; a plan search tries a forward, then ``restore``s.

        Cheap: entries are replaced on write, never mutated, so shallow copies suffice."""
        return dict(self._residuals), dict(self._outputs), dict(self._partners)

    def restore(self, snap: tuple[dict, dict, dict]) -> None:
        self._residuals, self._outputs, self._partners = (dict(t) for t in snap)

    def __len__(self) -> int:
        return len(self._residuals) + len(self._outputs) + len(self._partners)

    def clear(self) -> None:
        """Drop every cached tensor (end of a run, or a change of shape the host detected)."""
        self._residuals.clear()
        self._outputs.clear()
        self._partners.clear()
