"""Locate and bootstrap a real ComfyUI checkout for tests, headless and on a CPU-only torch.

The pack must run inside a real ComfyUI, so the integration tests import ComfyUI itself rather than a mock.
ComfyUI is not installable from PyPI in a usable form, hence the checkout lookup: ``COMFYUI_PATH`` first,
then the ComfyUI tree that holds this repo under ``custom_nodes/`` (the normal install layout).

Headless bootstrap (see the hooks reference, section 6):

* ``torchvision`` is imported at module level by ``comfy.model_base`` (Cosmos) and ``nodes`` (Cascade), but
  the PyPI wheel matching a CPU torch is a CUDA build that fails to load, so a stub module is installed.
  It needs a real ``ModuleSpec`` because ``transformers`` calls ``importlib.util.find_spec`` on it.
* ``comfy.model_management`` asserts CUDA at import unless ``comfy.cli_args.args.cpu`` is set first; ComfyUI
  only parses ``sys.argv`` when ``comfy.options.enable_args_parsing()`` was called, so pytest's argv is safe.
* The checkout goes first on ``sys.path``: this repo has a ``nodes/`` package that would otherwise shadow
  ComfyUI's ``nodes.py`` whenever the repo root is on the path (``python -m pytest`` puts the cwd there).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.machinery
import importlib.util
import logging
import os
import sys
import types
from pathlib import Path

logger = logging.getLogger(__name__)

#: Oldest ComfyUI with both ``comfy_api.latest`` and ``optimized_attention_override``.
MIN_COMFYUI_VERSION: tuple[int, int, int] = (0, 3, 64)

#: pip packages that a CPU-only ComfyUI import (comfy.sample, supported_models, nodes, comfy_api) needs.
MINIMAL_DEPS: tuple[str, ...] = (
    "numpy", "einops", "safetensors", "psutil", "tqdm", "pyyaml", "scipy", "torchsde",
    "transformers", "sentencepiece", "pillow", "av",
)

#: Package name under which :func:`load_pack` imports this repo when loading it with importlib.
PACK_MODULE_NAME = "comfyui_ditfastattn"

REPO_ROOT = Path(__file__).resolve().parent.parent

ENABLE_HINT = (
    "set COMFYUI_PATH to a ComfyUI {min} (or newer) source checkout and install its minimal deps with "
    "`pip install {deps}` (do NOT `pip install -r requirements.txt`: it pulls torchvision and a CUDA torch)"
).format(min=".".join(map(str, MIN_COMFYUI_VERSION)), deps=" ".join(MINIMAL_DEPS))


class ComfyUIUnavailable(RuntimeError):
    """ComfyUI cannot be located or imported; the message says why and how to enable it."""


_state: dict[str, object] = {"root": None, "error": None}


def is_comfyui_checkout(path: Path) -> bool:
    """Whether ``path`` looks like a ComfyUI source tree (the files the bootstrap relies on)."""
    return (path / "comfy" / "model_management.py").is_file() and (path / "nodes.py").is_file()


def find_comfyui() -> Path | None:
    """Return the ComfyUI checkout to test against, or None.

    ``COMFYUI_PATH`` wins when set (even if wrong, so a typo is reported rather than silently ignored by
    :func:`bootstrap_comfyui`). Otherwise walk up from the repo (unresolved first, so a pack symlinked into
    ``custom_nodes`` is found) looking for ``<comfy>/custom_nodes/<...>/this repo``.
    """
    env = os.environ.get("COMFYUI_PATH")
    if env:
        return Path(env).expanduser().absolute()
    for start in (Path(__file__).absolute().parent.parent, REPO_ROOT):
        for parent in start.parents:
            if parent.name == "custom_nodes" and is_comfyui_checkout(parent.parent):
                return parent.parent
    return None


def comfyui_version(root: Path) -> tuple[int, ...] | None:
    """Parse ``comfyui_version.py`` without importing it; None when absent or unparsable."""
    version_file = root / "comfyui_version.py"
    if not version_file.is_file():
        return None
    for line in version_file.read_text(encoding="utf-8").splitlines():
        if line.startswith("__version__"):
            text = line.split("=", 1)[1].strip().strip("\"'")
            try:
                return tuple(int(part) for part in text.split(".")[:3])
            except ValueError:
                return None
    return None


def install_torchvision_stub() -> None:
    """Put empty ``torchvision`` / ``torchvision.transforms`` modules in ``sys.modules``, unless one loads.

    Only module-level imports need them; the code paths that would call into torchvision (Cascade's
    EfficientNet, Cosmos ``padding_mask`` resizing) are never reached by the tiny test models.
    """
    if "torchvision" in sys.modules:
        return
    try:
        import torchvision  # noqa: F401

        return
    except Exception:  # the CUDA wheel raises RuntimeError/OSError, not only ImportError
        sys.modules.pop("torchvision", None)
    for name in ("torchvision", "torchvision.transforms"):
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, is_package=True)
        module.__path__ = []
        sys.modules[name] = module
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]


def _check_nodes_module(root: Path) -> None:
    """Fail loudly if ``nodes`` was already imported from somewhere else (e.g. this repo's ``nodes/``)."""
    mod = sys.modules.get("nodes")
    if mod is None:
        return
    origin = Path(getattr(mod, "__file__", "") or "").absolute()
    if root not in origin.parents:
        raise ComfyUIUnavailable(
            f"module 'nodes' was already imported from {origin}, not from ComfyUI at {root}; "
            "bootstrap ComfyUI before anything imports the pack's nodes package"
        )


def bootstrap_comfyui(path: Path | None = None) -> Path:
    """Make ``import comfy...`` work headless on CPU and return the ComfyUI root. Idempotent.

    Raises :class:`ComfyUIUnavailable` (with the reason and :data:`ENABLE_HINT`) when ComfyUI is missing, too
    old, or one of its imports fails; the failure is remembered so later calls fail fast.
    """
    if _state["root"] is not None:
        return _state["root"]  # type: ignore[return-value]
    if _state["error"] is not None:
        raise ComfyUIUnavailable(str(_state["error"]))
    try:
        root = _bootstrap(path)
    except ComfyUIUnavailable as exc:
        _state["error"] = str(exc)
        raise
    _state["root"] = root
    return root


def _bootstrap(path: Path | None) -> Path:
    """Do the work of :func:`bootstrap_comfyui`; every failure becomes :class:`ComfyUIUnavailable`."""
    root = path if path is not None else find_comfyui()
    if root is None:
        raise ComfyUIUnavailable(f"ComfyUI not found (COMFYUI_PATH is unset); to enable: {ENABLE_HINT}")
    root = Path(root).absolute()
    if not is_comfyui_checkout(root):
        raise ComfyUIUnavailable(f"{root} is not a ComfyUI checkout; to enable: {ENABLE_HINT}")
    version = comfyui_version(root)
    if version is not None and version < MIN_COMFYUI_VERSION:
        raise ComfyUIUnavailable(
            f"ComfyUI at {root} is {'.'.join(map(str, version))}, too old; to enable: {ENABLE_HINT}"
        )
    if str(root) in sys.path:
        sys.path.remove(str(root))
    sys.path.insert(0, str(root))
    _check_nodes_module(root)
    install_torchvision_stub()
    try:
        import comfy.cli_args  # parses an empty argv: comfy.options.args_parsing is left False

        comfy.cli_args.args.cpu = True  # must precede comfy.model_management, which asserts CUDA otherwise
        import comfy.model_management
        import comfy.model_patcher
        import comfy.sample
        import comfy.supported_models
    except Exception as exc:  # any import error means "not usable here", which tests must turn into a skip
        raise ComfyUIUnavailable(
            f"importing ComfyUI from {root} failed ({type(exc).__name__}: {exc}); to enable: {ENABLE_HINT}"
        ) from exc
    logger.info("ComfyUI %s bootstrapped from %s", version, root)
    return root


def require_comfyui() -> Path:
    """Bootstrap ComfyUI or skip the calling test with a message that says how to enable it."""
    import pytest

    try:
        return bootstrap_comfyui()
    except ComfyUIUnavailable as exc:
        pytest.skip(str(exc))
        raise  # unreachable: pytest.skip raises; keeps type checkers happy


def load_pack(module_name: str = PACK_MODULE_NAME, *, via_comfyui: bool = False) -> types.ModuleType:
    """Import this repo as a custom node pack, the way ComfyUI does.

    ``via_comfyui=True`` calls ``nodes.load_custom_node`` on the repo folder, which also registers the V3
    nodes (``comfy_entrypoint``) in ``nodes.NODE_CLASS_MAPPINGS``; the module then lives in ``sys.modules``
    under the folder path, as in ComfyUI. Otherwise the folder is imported with importlib as the package
    ``module_name`` (relative imports inside the pack work either way). ComfyUI is bootstrapped first.
    """
    bootstrap_comfyui()
    if via_comfyui:
        import nodes

        ok = asyncio.run(nodes.load_custom_node(str(REPO_ROOT), module_parent="custom_nodes"))
        if not ok:
            raise ImportError(f"nodes.load_custom_node failed for {REPO_ROOT} (see the ComfyUI log)")
        return sys.modules[str(REPO_ROOT).replace(".", "_x_")]
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(
        module_name, REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot build an import spec for {REPO_ROOT / '__init__.py'}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def pack_module(pack: types.ModuleType, name: str) -> types.ModuleType:
    """A submodule of the pack as ComfyUI imported it (e.g. ``"nodes.apply"``), never a top-level copy."""
    return importlib.import_module(f"{pack.__name__}.{name}")
