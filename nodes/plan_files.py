"""Where plans live on disk: the pack's shipped ``plans/`` and ``models/ditfa_plans`` (where plans are
saved), registered with ComfyUI's folder_paths so that extra_model_paths.yaml can add more.

Plans and file names come from workflows shared on the internet. A plan file is a regular ``.json``
file reached from a registered folder without following a symbolic link: the Load list shows exactly
those (symlinked, dangling or looping entries never appear), and a name is loaded only if it is one of
them; a save never overwrites and never leaves the save folder.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from pathlib import Path

from ..ditfa_core.plan import Plan, PlanError
from ..ditfa_core.plan.io import write_atomic

log = logging.getLogger(__name__)

FOLDER = "ditfa_plans"
EXTENSIONS = {".json"}
SHIPPED = Path(__file__).resolve().parent.parent / "plans"
_PREFIX = re.compile(r"[\w\-. ]{1,100}")   # used with fullmatch: no trailing newline slips through


def register() -> None:
    """Add the plans folders (models/ditfa_plans first: it is where saves go), keeping any paths a
    user's extra_model_paths.yaml registered under the same name."""
    import folder_paths

    paths, _ = folder_paths.folder_names_and_paths.get(FOLDER, ([], set()))
    wanted = [os.path.join(folder_paths.models_dir, FOLDER), *[p for p in paths], str(SHIPPED)]
    folder_paths.folder_names_and_paths[FOLDER] = (list(dict.fromkeys(wanted)), set(EXTENSIONS))


def _plan_file(folder: str, rel: str) -> str | None:
    """``folder/rel`` when it is a regular plan file and no component below ``folder`` is a link."""
    parts = [p for p in rel.replace("\\", "/").split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        return None
    if os.path.splitext(parts[-1])[1] not in EXTENSIONS:
        return None
    path = folder
    for i, part in enumerate(parts):
        path = os.path.join(path, part)
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            return None
        if not (stat.S_ISREG(mode) if i == len(parts) - 1 else stat.S_ISDIR(mode)):
            return None   # a link, a missing entry, or something other than a directory or file
    return path


def list_plans() -> list[str]:
    """Names of the plan files in the plans folders (``_plan_file``), without following links."""
    import folder_paths

    names: set[str] = set()
    for folder in folder_paths.get_folder_paths(FOLDER):
        for dirpath, dirs, files in os.walk(folder, followlinks=False):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for f in files:
                rel = os.path.relpath(os.path.join(dirpath, f), folder).replace(os.sep, "/")
                if _plan_file(folder, rel):
                    names.add(rel)
    return sorted(names)


def _inside(path: str, folders: list[str]) -> bool:
    real = os.path.realpath(path)
    return any(os.path.commonpath([real, os.path.realpath(f)]) == os.path.realpath(f) for f in folders)


def find_plan(name: str) -> str | None:
    """The path of the plan file ``name`` (as ``list_plans`` names it), or None."""
    import folder_paths

    for folder in folder_paths.get_folder_paths(FOLDER):
        path = _plan_file(folder, name)
        if path is not None:
            return path
    return None


def load_plan(name: str) -> Plan:
    """The plan file ``name``; PlanError for a name ``list_plans`` does not list, or an invalid plan."""
    path = find_plan(name)
    if path is None:
        raise PlanError(f"no plan named {_short(name)} in the plans folders ({FOLDER}); choose one from "
                        "the list")
    return Plan.load(path)


def _short(name: str) -> str:
    text = repr(name)
    return text if len(text) <= 80 else f"{text[:80]}..."


def save_plan(plan: Plan, prefix: str) -> str:
    """Write ``plan`` as ``<prefix>_<n>.json`` in the save folder with the first free n; returns the
    file name. Atomic and exclusive (``write_atomic``): an existing file is never replaced, even by a
    concurrent save, and an interrupted save leaves no half-written plan in the Load list."""
    import folder_paths

    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix) or prefix.strip(". ") == "":
        raise PlanError(f"filename prefix {_short(prefix)}: use 1 to 100 letters, digits, spaces, '-', '_' "
                        "or '.', no folders")
    folder = folder_paths.get_folder_paths(FOLDER)[0]
    os.makedirs(folder, exist_ok=True)
    text = plan.to_json()
    for n in range(1, 100_000):
        name = f"{prefix}_{n:05d}.json"
        path = os.path.join(folder, name)
        if not _inside(path, [folder]):
            raise PlanError(f"filename prefix {prefix!r} leaves the plans folder")
        if os.path.lexists(path):   # skip taken names without writing a temporary file for each
            continue
        try:
            write_atomic(path, text, exclusive=True)
        except FileExistsError:
            continue
        log.info("DiTFastAttn: saved plan to %s (%s)", path, plan.summary())
        return name
    raise PlanError(f"no free file name for prefix {prefix!r} in {folder}")
