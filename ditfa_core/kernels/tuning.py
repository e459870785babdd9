"""Which window kernel runs a pattern: measured once per device, dtype, pattern (hence N) and head dim.

No fixed order is right everywhere: on a CPU the banded kernel wins bands from N ~ 1k but its best
tile depends on N, and ``blocked``'s tile size trades wasted pairs against calls; on a GPU flash-attn,
torch's FA2 window and compiled Flex trade places with the window and head dim. So the first call of
a shape times every candidate on its own tensors (one warm-up, then the best of ``REPEATS`` runs) and
keeps the fastest (a candidate whose warm-up takes 3x the best time so far is not timed, and one
twice as slow is not timed again); the choice is cached in memory and in a JSON file, so a process
pays for it once per machine.

Overrides, in order: ``windowed_attention(backend=...)``; the environment variable
``DITFA_WINDOW_BACKEND`` (``name[:tile][@threads]``, e.g. ``blocked:128`` or ``banded:32@1``);
``DITFA_KERNEL_TUNE=0`` turns measuring off (the static order of ``select_backend`` is used).
``DITFA_KERNEL_CACHE`` names the cache file (default ``~/.cache/ditfastattn/kernel_choices.json``;
empty: memory only).
Shapes under ``MIN_TOKENS`` tokens are not measured (the static order is within noise there).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..windows import AttentionPattern

log = logging.getLogger(__name__)

MIN_TOKENS = 1024
REPEATS = 2
# The tile-size argument worth trying per backend: query tokens per tile, or for ``tiled`` the MiB of
# gathered keys per call (its tiles are the pattern's own).
CPU_TILES = {"banded": (32, 64, 128, 256), "blocked": (64, 128, 256), "tiled": (1, 16, 256)}


@dataclass(frozen=True)
class Choice:
    """A backend, its tile size (None: the backend's default or not tiled) and the CPU threads it
    runs on (None: torch's setting; 1: one thread, which wins when other processes load the cores,
    since each of a kernel's small parallel regions then waits for a descheduled thread)."""

    backend: str
    tile: int | None = None
    threads: int | None = None

    def __str__(self) -> str:
        return (self.backend + ("" if self.tile is None else f":{self.tile}")
                + ("" if self.threads is None else f"@{self.threads}"))

    @classmethod
    def parse(cls, text: str) -> Choice:
        """``name[:tile][@threads]``; ValueError with the expected form otherwise."""
        rest, _, threads = text.strip().partition("@")
        name, _, tile = rest.partition(":")
        if not name or (tile and not tile.isdigit()) or (threads and not threads.isdigit()):
            raise ValueError(f"a kernel choice is 'name', 'name:tile' or 'name:tile@threads' (e.g. "
                             f"'blocked:128@1'), got {text!r}")
        return cls(name, int(tile) if tile else None, int(threads) if threads else None)

    @contextlib.contextmanager
    def threads_set(self) -> Iterator[None]:
        """Run the block on this choice's CPU thread count."""
        before = torch.get_num_threads()
        if self.threads is None or self.threads == before:
            yield
            return
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)


_memory: dict[str, Choice] = {}
_lock = threading.Lock()


def cache_path() -> Path | None:
    """The JSON file of measured choices, or None (memory only)."""
    env = os.environ.get("DITFA_KERNEL_CACHE")
    if env is not None:
        return Path(env).expanduser() if env else None
    return Path.home() / ".cache" / "ditfastattn" / "kernel_choices.json"


def forced() -> Choice | None:
    """``DITFA_WINDOW_BACKEND``, when set."""
    env = os.environ.get("DITFA_WINDOW_BACKEND", "").strip()
    return Choice.parse(env) if env else None


def tuning_enabled() -> bool:
    return os.environ.get("DITFA_KERNEL_TUNE", "1").strip() not in ("0", "false", "off", "")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu{torch.get_num_threads()}t"


def shape_key(pattern: AttentionPattern, q: torch.Tensor) -> str:
    """Device (with CPU thread count), torch, dtype, the pattern (N, grid, radius, tile, global tokens), D."""
    layout = pattern.layout
    return (f"{device_name(q.device)}|torch{torch.__version__}|{str(q.dtype).removeprefix('torch.')}|"
            f"{pattern.kind}|n{layout.n_tokens}|img{layout.image_start}+{layout.n_image}|"
            f"grid{'x'.join(map(str, pattern.grid))}|r{'x'.join(map(str, pattern.radius))}"
            + ("" if pattern.tile == (1, 1, 1) else f"|tile{'x'.join(map(str, pattern.tile))}")
            + f"|d{q.shape[-1]}")


def _load(path: Path) -> dict[str, str]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _store(key: str, choice: Choice) -> None:
    path = cache_path()
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        table = _load(path)
        table[key] = str(choice)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
        tmp.replace(path)
    except OSError as exc:   # a read-only home must not stop attention
        log.debug("kernel choice not cached on disk (%s)", exc)


def cached(key: str) -> Choice | None:
    """A choice measured earlier in this process or stored on disk."""
    if key in _memory:
        return _memory[key]
    path = cache_path()
    text = _load(path).get(key) if path is not None else None
    if text is None:
        return None
    try:
        choice = _memory[key] = Choice.parse(text)
    except ValueError:
        return None
    return choice


def measure(candidates: list[Choice], run: Callable[[Choice], torch.Tensor],
            device: torch.device) -> tuple[Choice, dict[str, float]]:
    """The fastest candidate (best of ``REPEATS`` after one warm-up) and every candidate's ms."""
    times: dict[str, float] = {}
    for choice in candidates:
        try:
            t0 = time.perf_counter()
            run(choice)   # warm-up: builds the candidate's plan, compiles
            warm = time.perf_counter() - t0
            best = float("inf")
            if warm * 1e3 > 3 * min(times.values(), default=float("inf")):
                times[str(choice)] = warm * 1e3    # hopeless even allowing for its set-up: not timed
                continue
            for _ in range(REPEATS):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                run(choice)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                best = min(best, time.perf_counter() - t0)
                if best * 1e3 > 2 * min(times.values(), default=float("inf")):
                    break   # clearly slower than the best so far: no need for a second look
        except Exception as exc:   # e.g. a compiler error: this candidate cannot run this shape here
            log.warning("window kernel candidate %s failed, skipped: %s: %s", choice, type(exc).__name__, exc)
            continue
        times[str(choice)] = best * 1e3
    if not times:
        raise ValueError("no window kernel candidate could run")
    fastest = min(times, key=times.__getitem__)
    return Choice.parse(fastest), times


def choose(key: str, candidates: list[Choice], run: Callable[[Choice], torch.Tensor],
           device: torch.device) -> Choice:
    """The cached choice for ``key``, else the measured one (then cached)."""
    with _lock:
        choice = cached(key)
        if choice is not None:
            return choice
        choice, times = measure(candidates, run, device)
        _memory[key] = choice
        _store(key, choice)
    log.info("window kernel for %s: %s (ms: %s)", key, choice,
             ", ".join(f"{name} {ms:.2f}" for name, ms in sorted(times.items(), key=lambda kv: kv[1])))
    return choice
