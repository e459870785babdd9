"""Plan text in and out, and the one atomic writer every file the pack writes goes through.

Reading: plans travel inside workflows shared on the internet, so the text is bounded (size, item count,
nesting) before the JSON parser runs, then parsed by the JSON parser only, refusing NaN, Infinity and
duplicate keys. Writing: one field per line and one grid row per line, so a plan reads like a table and
diffs show which steps changed; files (plans, heatmap PNGs, sample sets, weights, tables) appear whole or
not at all.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
from collections.abc import Callable
from typing import Any, BinaryIO

import torch

from .fields import MAX_DEPTH, MAX_ITEMS, MAX_TEXT_BYTES, PlanError, _quote

Payload = str | bytes | Callable[[BinaryIO], object]
"""What ``write_atomic`` writes: text (as UTF-8), bytes, or a function that writes to a binary file."""


def parse_text(text: str | bytes) -> Any:
    """The JSON value of a plan text (bytes as UTF-8, an optional BOM dropped); ``PlanError`` for text that
    is too large, too deep, not JSON, or holds NaN, Infinity or a duplicate key."""
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
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float,
                          object_pairs_hook=_unique_keys)
    except PlanError:
        raise
    except RecursionError:
        raise PlanError("not JSON: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, and ints beyond Python's digit limit
        raise PlanError(f"not JSON: {e}") from None


def read_limited(path: str | os.PathLike[str]) -> bytes:
    """A plan file's bytes; the size is checked before anything is read (``PlanError``; ``OSError`` as
    ``open`` raises it)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_TEXT_BYTES:
            raise PlanError(f"plan too large: {size} bytes, the limit is {MAX_TEXT_BYTES} (8 MiB)")
        return f.read(MAX_TEXT_BYTES + 1)


def format_text(document: dict[str, Any]) -> str:
    """A plan document as JSON text ending in a newline: one field per line, short arrays inline and
    one grid row per line."""
    return _dump(document, "") + "\n"


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


def write_atomic(path: str | os.PathLike[str], data: Payload, *, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` whole or not at all: a temporary file in the same folder, flushed to
    disk, then renamed, so a crash, a full disk or Ctrl-C leaves the old file (or none) instead of a
    truncated one. The file gets the user's umask like any other (mkstemp's 0600 would hide a plan from
    co-workers). ``exclusive`` never replaces an existing file, even one created concurrently: it raises
    ``FileExistsError`` instead."""
    path = os.fspath(path)
    folder, name = os.path.split(path)
    tmp = os.path.join(folder or ".", f".{name[:100]}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path, exclusive)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _publish(tmp: str, path: str, exclusive: bool) -> None:
    """Give the finished ``tmp`` the name ``path``. Exclusively: a hard link fails if the name is taken;
    where links are not supported (FAT, some network shares) the name is reserved with ``O_EXCL`` first,
    so a concurrent writer can at worst see an empty file for an instant, never a partial one."""
    if not exclusive:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        os.replace(tmp, path)


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
