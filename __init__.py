"""ComfyUI entry point of the DiTFastAttn node pack.

ComfyUI imports this folder as a package and looks for ``comfy_entrypoint`` (V3 nodes) and
``WEB_DIRECTORY``. Outside ComfyUI (tests, the command line) importing it must stay cheap and
must not fail, so the node module is imported only when ComfyUI's API is present.
"""

WEB_DIRECTORY = "./web"

try:
    import comfy_api.latest  # noqa: F401  (probe: are we inside ComfyUI?)
except ImportError:
    __all__ = ["WEB_DIRECTORY"]
else:
    from .nodes.extension import comfy_entrypoint

    __all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
