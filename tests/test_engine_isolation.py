"""The engine never imports the host: every ``ditfa_core`` module imports with comfy blocked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import importlib, importlib.abc, pkgutil, sys

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("comfy", "comfy_api", "comfy_extras", "folder_paths"):
            raise ImportError(f"ditfa_core imported the host module {name}")
        return None

sys.meta_path.insert(0, Blocked())
import ditfa_core
names = [m.name for m in pkgutil.walk_packages(ditfa_core.__path__, "ditfa_core.")
         if not m.name.endswith("__main__")]
for name in names:
    importlib.import_module(name)
print(len(names))
"""


def test_every_engine_module_imports_without_the_host() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) > 20
