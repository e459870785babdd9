"""Locate and bootstrap a real ComfyUI checkout for tests, headless and on a CPU-only torch.

The pack must run inside a real ComfyUI, so the integration tests import ComfyUI itself rather than a mock.
ComfyUI is not installable from PyPI in a usable form, hence the checkout lookup: ``COMFYUI_PATH`` first,
then the ComfyUI tree that holds this repo under ``custom_nodes/`` (the normal install layout).

Headless bootstrap (see the hooks reference, section 6):

* ``torchvision`` is imported at module level by ``comfy.model_base`` (Cosmos) and ``nodes`` (Cascade), and
  ComfyUI 0.33 also imports ``torchvision.ops`` (SAM 3, BiRefNet). The PyPI wheel matching a CPU torch is a
  CUDA build whose C++ extension fails to load, so it is imported with that extension kept from loading
  (its Python parts work); where no torchvision is installed at all, a stub module is installed instead.
  The stub needs a real ``ModuleSpec`` because ``transformers`` calls ``importlib.util.find_spec`` on it.
* ``torchaudio`` (imported at module level by ComfyUI 0.33's audio encoders and Gemma 4) has no CPU wheel
  for a recent torch; a stub suffices for every model but the audio ones.
* Hosts differ in their extra dependencies: :data:`HOSTS` lists, per host variable, the packages its
  import needs, and :data:`ENABLE_HINT` names them.
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

#: What ComfyUI 0.33+ imports on top of :data:`MINIMAL_DEPS` (``comfy_kitchen`` in ``attention.py``,
#: ``comfy_aimdo`` in ``model_patcher.py``, the asset database and API layers in ``nodes``), plus the
#: torchvision wheel installed without its CUDA torch (``--no-deps``).
DEPS_2026: tuple[str, ...] = (
    "comfy-kitchen", "comfy-aimdo", "simpleeval", "blake3", "requests", "alembic", "SQLAlchemy", "filelock",
    "pydantic", "pydantic-settings", "yarl",
)

#: The host test matrix: the environment variable naming each host's checkout, and what it is. The
#: in-process real-host tests use the first variable that is set; ``tests/test_host_matrix.py`` runs them
#: again in a child process against each other host that is set.
HOSTS: dict[str, str] = {
    "COMFYUI_PATH": "a ComfyUI 0.3.64 (or newer) source checkout",
    "COMFYUI_PATH_2026": "a 2026 ComfyUI (0.33 or newer) source checkout",
}

#: Package name under which :func:`load_pack` imports this repo when loading it with importlib.
PACK_MODULE_NAME = "comfyui_ditfastattn"

REPO_ROOT = Path(__file__).resolve().parent.parent

ENABLE_HINT = (
    "set COMFYUI_PATH to a ComfyUI {min} (or newer) source checkout and install its minimal deps with "
    "`pip install {deps}`; a ComfyUI 0.33+ also needs `pip install {deps26}` and "
    "`pip install --no-deps torchvision==<the build for your torch>` (do NOT `pip install -r "
    "requirements.txt`: it pulls a CUDA torch)"
).format(min=".".join(map(str, MIN_COMFYUI_VERSION)), deps=" ".join(MINIMAL_DEPS), deps26=" ".join(DEPS_2026))


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
    env = next((os.environ[var] for var in HOSTS if os.environ.get(var)), None)
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


def _stub(name: str) -> types.ModuleType:
    """An empty package ``name`` in ``sys.modules`` (with a spec, so ``find_spec`` works on it)."""
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, is_package=True)
    module.__path__ = []
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    return module


def _import_torchvision_without_extension() -> bool:
    """Import the installed torchvision with its compiled ops kept from loading; False if that fails.

    The CUDA wheel's ``_C`` extension does not load against a CPU torch, and its fake-kernel registrations
    (``_meta_registrations``) then fail for ops that were never defined. Neither is needed headless: the
    tests never call torchvision's C++ ops.
    """
    import torch

    load_library = torch.ops.load_library

    def refuse_torchvision(path: str) -> None:
        if "torchvision" in str(path):
            raise OSError("the torchvision extension is not loaded in headless tests")
        load_library(path)

    meta = "torchvision._meta_registrations"
    sys.modules.setdefault(meta, types.ModuleType(meta))
    torch.ops.load_library = refuse_torchvision
    try:
        import torchvision
        import torchvision.ops
        import torchvision.transforms  # noqa: F401

        return True
    except Exception:  # a broken wheel raises RuntimeError/OSError, not only ImportError
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            sys.modules.pop(name)
        return False
    finally:
        torch.ops.load_library = load_library


def install_torchvision_stub() -> None:
    """Make ``import torchvision`` (and ``torchaudio``) work headless: the real torchvision when it imports
    without its extension, else empty ``torchvision`` / ``torchvision.transforms`` / ``torchvision.ops``
    modules; a stub ``torchaudio`` unless one imports.

    Only module-level imports need them; the code paths that would call into them (Cascade's EfficientNet,
    Cosmos ``padding_mask`` resizing, audio encoders) are never reached by the tiny test models.
    """
    if "torchvision" not in sys.modules and not _import_torchvision_without_extension():
        for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional",
                     "torchvision.ops"):
            _stub(name)
    if "torchaudio" not in sys.modules:
        try:
            import torchaudio  # noqa: F401
        except Exception:
            sys.modules.pop("torchaudio", None)
            for name in ("torchaudio", "torchaudio.functional", "torchaudio.transforms"):
                _stub(name)


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
