"""DiTFastAttn engine: attention compression for Diffusion Transformers, host-free.

This package never imports ComfyUI. The ComfyUI adapter (``nodes/``) translates the host's
world into the small vocabulary defined here: strategies, window patterns, call contexts, run
state, plans.
"""

__version__ = "0.1.0"
