"""Scripts that drive the pack from outside (they may import the ComfyUI host; ``ditfa_core`` never does)."""
