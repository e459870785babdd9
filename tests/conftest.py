"""Fixtures shared by the real-ComfyUI tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

# Kernel choices measured by tests stay in memory (never in the user's cache file).
os.environ.setdefault("DITFA_KERNEL_CACHE", "")

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the harness sits next to this file

from comfy_host import bootstrap_comfyui, load_pack, pack_module, require_comfyui


@pytest.fixture(scope="module")
def pack() -> ModuleType:
    """The pack imported as ComfyUI imports it; skips with the enabling steps where ComfyUI is absent."""
    require_comfyui()
    return load_pack()


@pytest.fixture
def engines(pack: ModuleType, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every FastAttention the Apply node builds during the test (one per sampling run and thread)."""
    apply = pack_module(pack, "nodes.apply")
    made: list[Any] = []

    class Recording(apply.FastAttention):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(apply, "FastAttention", Recording)
    return made


@pytest.fixture
def unload_models() -> Any:
    """After the test, ComfyUI's loaded models are unloaded (so tiny models do not pile up in its cache)."""
    yield
    try:
        bootstrap_comfyui()
    except Exception:
        return
    import comfy.model_management

    comfy.model_management.unload_all_models()
