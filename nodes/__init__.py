"""The ComfyUI adapter of DiTFastAttn: node classes and the hooks that feed ComfyUI's attention calls
to the engine in ``ditfa_core``.

Everything here may import ComfyUI (lazily where a module must stay importable without it); the engine
never does. This package is imported relatively from the pack's root, never as a top-level ``nodes``
(that name is ComfyUI's own module).
"""
