"""Paired quality measurement on the reference DiT: does a plan keep the same picture?

Every configuration (the uncompressed model, each plan) samples the *same* evaluation set: the same
labels and the same initial noise, batch by batch. Differences to the uncompressed model are therefore
paired, and their 95% intervals come from a paired bootstrap over samples (the same resampled indices
for both sides), which is far tighter than comparing two independent sets: with unpaired sets of 50,
FID differences had a standard deviation of ~33, larger than most effects a plan has.

Metrics (``classifier.py``): class accuracy with "not a digit" counted wrong, per-class accuracy, the
share judged not a digit, FID on the classifier's features against the committed real-digit statistics,
and the mean relative L1 distance of each image to its uncompressed twin (paper A.2's metric on pixels).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..metrics import rel_l1
from ..schedule import Grid
from ..windows import WindowSpec
from .classifier import NOT_A_DIGIT, NUM_DIGITS, DigitClassifier, FeatureStats, frechet_distance
from .fastattn import generate
from .model import DiT

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class EvalSet:
    """What every configuration of one comparison samples: ``n`` images, labels cycling 0-9, drawn in
    batches of ``batch`` whose initial noise is seeded ``seed + batch index`` (so any subset of batches
    can be regenerated, and every configuration sees the same noise)."""

    n: int
    steps: int = 20
    cfg: float = 4.0
    seed: int = 0
    batch: int = 100

    def __post_init__(self) -> None:
        if self.n < 2 or self.batch < 1 or self.steps < 1:
            raise ValueError(f"an evaluation set needs n >= 2, batch >= 1, steps >= 1; got {self}")

    @property
    def labels(self) -> Tensor:
        return torch.arange(self.n) % NUM_DIGITS

    def batches(self) -> list[tuple[int, Tensor]]:
        """(seed, labels) of each batch."""
        labels = self.labels
        return [(self.seed + i, labels[start:start + self.batch])
                for i, start in enumerate(range(0, self.n, self.batch))]


@dataclass
class Samples:
    """One configuration's images of an :class:`EvalSet` and what they cost in attention."""

    images: Tensor          # (n, 1, 32, 32) float32 in [-1, 1]
    flops_fraction: float   # attention FLOPs actually run / uncompressed, over the whole set
    fallbacks: int          # cells the engine had to compute FULL instead of the plan's strategy


def sample_set(model: DiT, evalset: EvalSet, grid: Grid | None = None, *, window: WindowSpec | None = None,
               progress: Progress | None = None) -> Samples:
    """Sample ``evalset`` with ``grid`` (None: uncompressed); ``progress(done, n)`` after each batch."""
    images, flops, fallbacks = [], [], 0
    for seed, labels in evalset.batches():
        run = generate(model, labels, grid, steps=evalset.steps, cfg=evalset.cfg, seed=seed, window=window)
        images.append(run.images.cpu())
        flops.append(run.stats.flops_fraction * len(labels))
        fallbacks += run.stats.fallbacks
        if progress is not None:
            progress(sum(len(x) for x in images), evalset.n)
    return Samples(torch.cat(images), sum(flops) / evalset.n, fallbacks)


@dataclass
class Scores:
    """Per-sample judgements of one configuration, kept per sample so that comparisons can be paired."""

    correct: np.ndarray      # (n,) bool: classified as the requested digit
    not_digit: np.ndarray    # (n,) bool: judged not a digit
    features: np.ndarray     # (n, 64) float64 classifier features (for FID)
    labels: np.ndarray       # (n,) int64 requested digits

    @classmethod
    def of(cls, classifier: DigitClassifier, images: Tensor, labels: Tensor) -> Scores:
        predicted = classifier.predict(images).cpu().numpy()
        labels_np = torch.as_tensor(labels).cpu().numpy()
        return cls(predicted == labels_np, predicted == NOT_A_DIGIT,
                   classifier.features(images).double().cpu().numpy(), labels_np)

    def fid(self, real: FeatureStats, index: np.ndarray | None = None) -> float:
        f = self.features if index is None else self.features[index]
        return frechet_distance(FeatureStats(f.mean(axis=0), np.cov(f, rowvar=False), len(f)), real)

    def per_class(self) -> list[float]:
        return [float(self.correct[self.labels == d].mean()) if (self.labels == d).any() else math.nan
                for d in range(NUM_DIGITS)]


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95% percentile-bootstrap interval."""

    value: float
    low: float
    high: float

    def format(self, scale: float = 1.0, digits: int = 1, signed: bool = False) -> str:
        sign = "+" if signed else ""
        v, lo, hi = (x * scale for x in (self.value, self.low, self.high))
        return f"{v:{sign}.{digits}f} [{lo:{sign}.{digits}f}, {hi:{sign}.{digits}f}]"


@dataclass
class Comparison:
    """One configuration against the uncompressed model on the same :class:`EvalSet`."""

    accuracy: Interval          # this configuration's class accuracy
    accuracy_delta: Interval    # accuracy - raw accuracy (paired)
    fid: float
    fid_delta: Interval         # FID - raw FID (paired bootstrap)
    not_digit: float
    rel_l1: float               # mean relative L1 of the images to their uncompressed twins
    per_class: list[float] = field(default_factory=list)


def _interval(value: float, draws: np.ndarray) -> Interval:
    low, high = np.percentile(draws, [2.5, 97.5])
    return Interval(float(value), float(low), float(high))


def compare(raw: Scores, other: Scores, real: FeatureStats, *, rel_l1_value: float = 0.0,
            resamples: int = 1000, seed: int = 0) -> Comparison:
    """Paired bootstrap of ``other`` against ``raw`` (same samples, same order).

    The same ``resamples`` index draws serve both sides, so noise common to both (a hard label, an
    unlucky initial noise) cancels out of the differences. Bootstrap FIDs are biased upwards (repeated
    samples shrink the covariance's rank), but the bias is the same on both sides of a difference.
    """
    n = len(raw.correct)
    if len(other.correct) != n:
        raise ValueError(f"paired comparison needs equal sample counts, got {n} and {len(other.correct)}")
    index = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    acc = other.correct[index].mean(axis=1)
    delta_acc = acc - raw.correct[index].mean(axis=1)
    fid_other, fid_raw = other.fid(real), raw.fid(real)
    delta_fid = np.array([other.fid(real, i) - raw.fid(real, i) for i in index])
    return Comparison(
        accuracy=_interval(other.correct.mean(), acc),
        accuracy_delta=_interval(other.correct.mean() - raw.correct.mean(), delta_acc),
        fid=fid_other,
        fid_delta=_interval(fid_other - fid_raw, delta_fid),
        not_digit=float(other.not_digit.mean()),
        rel_l1=rel_l1_value,
        per_class=other.per_class(),
    )


@dataclass
class Row:
    """One line of the quality table (paper Table 1 in miniature)."""

    name: str
    flops: float
    comparison: Comparison
    search_cost: float | None = None      # model forwards per sampling evaluation during the search
    search_seconds: float | None = None


HEADER = ["config", "attn FLOPs", "class acc [95% CI]", "Δ acc vs raw [95% CI]", "not a digit",
          "FID", "Δ FID vs raw [95% CI]", "rel-L1 vs raw", "search cost (forwards/eval)", "search (s)"]


def cells(row: Row) -> list[str]:
    c = row.comparison
    cost = "-" if row.search_cost is None else f"{row.search_cost:.2f}"
    seconds = "-" if row.search_seconds is None else f"{row.search_seconds:.0f}"
    return [row.name, f"{100 * row.flops:.1f}%", c.accuracy.format(100),
            c.accuracy_delta.format(100, signed=True), f"{100 * c.not_digit:.1f}%", f"{c.fid:.2f}",
            c.fid_delta.format(1, 2, signed=True), f"{c.rel_l1:.4f}", cost, seconds]


def markdown(rows: Sequence[Row], floor: dict[str, float] | None = None) -> str:
    """The table as markdown; ``floor`` (``real_floor()``) adds what real held-out digits score."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    if floor:
        real = [f"real digits (held-out, n={int(floor['n'])})", "-", f"{100 * floor['accuracy']:.1f}%", "-",
                f"{100 * floor['not_a_digit_rate']:.1f}%", f"{floor['fid']:.2f}", "-", "-", "-", "-"]
        lines.append("| " + " | ".join(real) + " |")
    return "\n".join(lines)


class PairedEvaluator:
    """Samples the uncompressed model once, then scores configurations against it, paired."""

    def __init__(self, model: DiT, classifier: DigitClassifier, evalset: EvalSet,
                 window: WindowSpec | None = None, progress: Callable[[str], Progress] | None = None,
                 resamples: int = 1000) -> None:
        if classifier.real_stats is None:
            raise ValueError("the classifier has no real-digit statistics; load it with load_classifier()")
        self.model, self.classifier, self.evalset, self.window = model, classifier, evalset, window
        self.progress, self.resamples = progress, resamples
        self.raw_samples = self._sample("raw", None)
        self.raw = Scores.of(classifier, self.raw_samples.images, evalset.labels)

    def _sample(self, name: str, grid: Grid | None) -> Samples:
        bar = self.progress(f"sample {name}") if self.progress else None
        return sample_set(self.model, self.evalset, grid, window=self.window, progress=bar)

    def row(self, name: str, grid: Grid | None = None, *, search_cost: float | None = None,
            search_seconds: float | None = None) -> Row:
        samples = self.raw_samples if grid is None else self._sample(name, grid)
        scores = self.raw if grid is None else Scores.of(self.classifier, samples.images, self.evalset.labels)
        comparison = compare(self.raw, scores, self.classifier.real_stats,
                             rel_l1_value=rel_l1(self.raw_samples.images, samples.images),
                             resamples=self.resamples)
        return Row(name, samples.flops_fraction, comparison, search_cost, search_seconds)
