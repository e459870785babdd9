"""Where plans live on disk: the pack's shipped ``plans/`` and ``models/ditfa_plans`` (where plans are
saved), registered with ComfyUI's folder_paths so that extra_model_paths.yaml can add more.

Plans and file names come from workflows shared on the internet: every name is resolved by ComfyUI's
``get_full_path`` (which normalises away ``..``) and must then lie, links resolved, inside one of the
registered folders; a save never overwrites and never leaves the save folder.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from ..ditfa_core.plan import Plan, PlanError

log = logging.getLogger(__name__)

FOLDER = "ditfa_plans"
EXTENSIONS = {".json"}
SHIPPED = Path(__file__).resolve().parent.parent / "plans"
_PREFIX = re.compile(r"^[\w\-. ]{1,100}$")


def register() -> None:
    """Add the plans folders (models/ditfa_plans first: it is where saves go), keeping any paths a
    user's extra_model_paths.yaml registered under the same name."""
    import folder_paths

    paths, _ = folder_paths.folder_names_and_paths.get(FOLDER, ([], set()))
    wanted = [os.path.join(folder_paths.models_dir, FOLDER), *[p for p in paths], str(SHIPPED)]
    folder_paths.folder_names_and_paths[FOLDER] = (list(dict.fromkeys(wanted)), set(EXTENSIONS))


def list_plans() -> list[str]:
    import folder_paths

    return folder_paths.get_filename_list(FOLDER)


def _inside(path: str, folders: list[str]) -> bool:
    real = os.path.realpath(path)
    return any(os.path.commonpath([real, os.path.realpath(f)]) == os.path.realpath(f) for f in folders)


def load_plan(name: str) -> Plan:
    """The plan file ``name`` from the plans folders; PlanError for anything outside them or invalid."""
    import folder_paths

    path = folder_paths.get_full_path(FOLDER, name)
    if path is None or not _inside(path, folder_paths.get_folder_paths(FOLDER)):
        raise PlanError(f"no plan named {name!r} in the plans folders ({FOLDER})")
    return Plan.load(path)


def save_plan(plan: Plan, prefix: str) -> str:
    """Write ``plan`` as ``<prefix>_<n>.json`` in the save folder with the first free n; returns the
    file name. Exclusive creation: an existing file is never replaced, even by a concurrent save."""
    import folder_paths

    if not _PREFIX.match(prefix) or prefix.strip(". ") == "":
        raise PlanError(f"filename prefix {prefix!r}: use letters, digits, spaces, '-', '_' or '.', "
                        "no folders")
    folder = folder_paths.get_folder_paths(FOLDER)[0]
    os.makedirs(folder, exist_ok=True)
    text = plan.to_json()
    for n in range(1, 100_000):
        name = f"{prefix}_{n:05d}.json"
        path = os.path.join(folder, name)
        if not _inside(path, [folder]):
            raise PlanError(f"filename prefix {prefix!r} leaves the plans folder")
        try:
            with open(path, "x", encoding="utf-8") as f:
                f.write(text)
        except FileExistsError:
            continue
        log.info("DiTFastAttn: saved plan to %s (%s)", path, plan.summary())
        return name
    raise PlanError(f"no free file name for prefix {prefix!r} in {folder}")
