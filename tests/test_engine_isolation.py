"""The engine never imports the host: every ``ditfa_core`` module imports with ComfyUI blocked, and no
``ditfa_core`` source names a host module, even in a function body that an import would not run.

The engine is pure torch so that it can be tested, benchmarked and used without ComfyUI; only the
adapter (``nodes/``) may touch the host. Our own adapter package is also called ``nodes``, so the host's
``nodes`` module cannot be blocked by name; the adapter's own imports (``comfy_api``) are.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "ditfa_core"
HOST = ("comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "server")
"""The host's top-level modules (ComfyUI 0.3.64 and 2026)."""

_CHILD = """
import importlib, importlib.abc, json, pkgutil, sys

class BlockHost(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in HOST:
            raise ImportError(f"host module {fullname!r} imported (blocked by the isolation test)",
                              name=fullname)
        return None

sys.meta_path.insert(0, BlockHost())
try:
    import comfy_api
    sys.exit("the blocker let comfy_api through")
except ImportError as e:
    assert "blocked by the isolation test" in str(e), e
import ditfa_core

results = {"ditfa_core": None}
def failed(name):
    results[name] = f"{type(sys.exc_info()[1]).__name__}: {sys.exc_info()[1]}"
for info in pkgutil.walk_packages(ditfa_core.__path__, "ditfa_core.", onerror=failed):
    try:
        importlib.import_module(info.name)
        results.setdefault(info.name, None)
    except Exception:
        failed(info.name)
print(json.dumps(results))
"""


def _engine_files() -> dict[str, Path]:
    """Module name -> source file for every module of the ``ditfa_core`` package tree."""
    found = {}
    for path in sorted(ENGINE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if all((ROOT.joinpath(*parts[:i]) / "__init__.py").is_file() for i in range(1, len(parts))):
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


FILES = _engine_files()




@pytest.fixture(scope="module")
def imported() -> dict[str, str | None]:
    """Every module ``pkgutil.walk_packages`` finds, imported in one fresh interpreter with the host
    blocked: module name -> None, or the error its import raised."""
    code = f"HOST = {set(HOST)!r}\n{_CHILD}"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("name", FILES)
def test_imports_with_the_host_blocked(name: str, imported: dict[str, str | None]) -> None:
    assert name in imported, f"{name} was not reached by pkgutil.walk_packages (its package failed?)"
    assert imported[name] is None, f"{name} cannot be imported without ComfyUI: {imported[name]}"


def _host_names(tree: ast.AST) -> list[str]:
    """Host modules a source names: ``import``/``from`` statements anywhere (function bodies too) and
    ``importlib.import_module("...")`` or ``find_spec("...")`` calls with a literal name."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("import_module", "find_spec")):
            names.append(node.args[0].value)
    return [n for n in names if n.partition(".")[0] in HOST]


@pytest.mark.parametrize("name", list(FILES))
def test_source_names_no_host_module(name: str) -> None:
    found = sorted(set(_host_names(ast.parse(FILES[name].read_text(encoding="utf-8")))))
    assert not found, f"{name} imports the host ({', '.join(found)}): move that code to nodes/ or tools/"


def test_the_walk_and_the_file_list_agree(imported: dict[str, str | None]) -> None:
    """Both tests above cover the same modules: none skipped because a package hid its children."""
    assert sorted(imported) == sorted(FILES)
