"""The real-host tests against every host of the matrix (``comfy_host.HOSTS``), not only the in-process one.

One process can import one ComfyUI only, so each other host that is set runs the real-host test files in a
child pytest whose ``COMFYUI_PATH`` is that host. Skips, naming the variable to set, when a host is absent.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the harness sits next to this file

from comfy_host import HOSTS, REPO_ROOT, find_comfyui

logger = logging.getLogger(__name__)

#: The test files that need a ComfyUI (the browser end-to-end test starts its own server: run it per host).
REAL_HOST_FILES = ("tests/test_comfy_harness.py", "tests/test_comfy_nodes.py", "tests/test_comfy_2026.py",
                   "tests/test_comfy_faults.py", "tests/test_workflows_web.py", "tests/test_benchmarks.py")


@pytest.mark.slow
@pytest.mark.parametrize("var", list(HOSTS))
def test_real_host_suites_pass_on_every_host(var: str) -> None:
    path = os.environ.get(var)
    if not path:
        pytest.skip(f"{var} is unset: set it to {HOSTS[var]} to run the real-host tests against it too")
    root = Path(path).expanduser().absolute()
    if root == find_comfyui():
        pytest.skip(f"{var} is the in-process host; its real-host tests run in this session")
    env = {k: v for k, v in os.environ.items() if k not in HOSTS}
    env["COMFYUI_PATH"] = str(root)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *REAL_HOST_FILES],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=3600)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-2000:]
    logger.info("real-host tests on %s (%s): %s", root, var, summary)
    tail = f"{done.stdout[-6000:]}\n{done.stderr[-2000:]}"
    assert done.returncode == 0, f"real-host tests failed on {root}:\n{tail}"
    assert "skipped" not in summary or "passed" in summary, summary
