"""Reference DiT samples as files: MNIST-style uint8 arrays and a class-by-row PNG grid.

The sampler works in [-1, 1] with -1 = background (``data.load_digits`` maps MNIST's 0..255 to
[-1, 1]); files use MNIST's own convention, 0 = background and 255 = ink, so any MNIST tool reads them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..plan.io import write_atomic

GAP = 2
"""Pixels between digits in the grid."""


def to_uint8(images: Tensor) -> np.ndarray:
    """(b, 1, H, W) float in [-1, 1] -> (b, H, W) uint8, 0 = background, 255 = ink (as in MNIST)."""
    pixels = (images.detach().float().cpu().clamp(-1.0, 1.0) + 1.0) * 127.5
    return pixels.round().to(torch.uint8).squeeze(1).numpy()


def grid_image(images: np.ndarray, labels: np.ndarray, scale: int = 2) -> np.ndarray:
    """Arrange (b, H, W) uint8 digits one row per class present (in class order), in sample order.

    Returns an (rows * (H + GAP) * scale, cols * (W + GAP) * scale) uint8 array; gaps are mid-grey so
    the black digit backgrounds stay apart.
    """
    classes = np.unique(labels)
    cols = max(int((labels == c).sum()) for c in classes)
    h, w = images.shape[1:]
    out = np.full((len(classes) * (h + GAP), cols * (w + GAP)), 128, dtype=np.uint8)
    for r, c in enumerate(classes):
        for j, img in enumerate(images[labels == c]):
            out[r * (h + GAP):r * (h + GAP) + h, j * (w + GAP):j * (w + GAP) + w] = img
    return out.repeat(scale, axis=0).repeat(scale, axis=1)


def write_samples(images: Tensor, labels: Tensor, path: Path) -> Path:
    """Write ``path`` (.npz with ``images`` uint8 (b, H, W) and ``labels`` int64 (b,)) and its grid PNG
    beside it (same name, .png); each is written atomically (``write_atomic``), so an
    interrupted run leaves no half-written file. Returns the PNG's path. Needs Pillow for the PNG."""
    from PIL import Image

    pixels, classes = to_uint8(images), labels.detach().cpu().long().numpy()
    png = path.with_suffix(".png")
    image = Image.fromarray(grid_image(pixels, classes))
    write_atomic(path, lambda fh: np.savez_compressed(fh, images=pixels, labels=classes))
    write_atomic(png, lambda fh: image.save(fh, format="PNG"))
    return png
