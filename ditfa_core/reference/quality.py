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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..heatmap import COST_UNIT
from ..metrics import rel_l1
from ..schedule import Grid
from ..windows import WindowSpec
from .classifier import (
    NOT_A_DIGIT,
    NUM_DIGITS,
    DigitClassifier,
    FeatureStats,
    accuracy_by_class,
    frechet_distance,
)
from .fastattn import generate
from .model import DiT
from .sampling import initial_noise

Progress = Callable[[int, int], None]
BATCH = 100
"""Images per sampling batch: bounds memory for any set size; the images do not depend on it."""


@dataclass(frozen=True)
class EvalSet:
    """What every configuration of one comparison samples: ``n`` images, labels cycling 0-9, and one
    initial noise tensor drawn from ``seed`` for the whole set, so every configuration (and any batch
    size) starts each image from the same noise."""

    n: int
    steps: int = 20
    cfg: float = 4.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 1 or self.steps < 1:
            raise ValueError(f"an evaluation set needs n >= 1 and steps >= 1; got {self}")

    @property
    def labels(self) -> Tensor:
        return torch.arange(self.n) % NUM_DIGITS

    def noise(self, model: DiT) -> Tensor:
        size = (model.config.image_size,) * 2
        return initial_noise(self.n, model.config.in_channels, size, self.seed)


@dataclass
class Samples:
    """One configuration's images of an :class:`EvalSet` and what they cost in attention."""

    images: Tensor          # (n, 1, 32, 32) float32 in [-1, 1]
    flops_fraction: float   # attention FLOPs actually run / uncompressed, over the whole set
    fallbacks: int          # cells the engine had to compute FULL instead of the plan's strategy


def sample_set(model: DiT, evalset: EvalSet, grid: Grid | None = None, *, window: WindowSpec | None = None,
               progress: Progress | None = None, batch: int = BATCH) -> Samples:
    """Sample ``evalset`` with ``grid`` (None: uncompressed) in batches of ``batch`` images;
    ``progress(done, total)`` counts sampling steps over all batches."""
    labels, noise = evalset.labels, evalset.noise(model)
    starts = range(0, evalset.n, batch)
    total = len(starts) * evalset.steps
    runs = []
    for b, start in enumerate(starts):
        step_progress = None if progress is None else (
            lambda done, _steps, b=b: progress(b * evalset.steps + done, total))
        runs.append(generate(model, labels[start:start + batch], grid, steps=evalset.steps, cfg=evalset.cfg,
                             window=window, noise=noise[start:start + batch], progress=step_progress))
    full = sum(r.stats.full_flops for r in runs)
    return Samples(torch.cat([r.images.cpu() for r in runs]),
                   sum(r.stats.flops for r in runs) / full if full else 1.0,
                   sum(r.stats.fallbacks for r in runs))


@dataclass
class Scores:
    """Per-sample judgements of one configuration, kept per sample so that comparisons can be paired."""

    correct: np.ndarray      # (n,) bool: classified as the requested digit
    not_digit: np.ndarray    # (n,) bool: judged not a digit
    features: np.ndarray     # (n, 64) float64 classifier features (for FID)
    labels: np.ndarray       # (n,) int64 requested digits

    @classmethod
    def of(cls, classifier: DigitClassifier, images: Tensor, labels: Tensor) -> Scores:
        predicted, features = classifier.judge(images)
        predicted, labels_np = predicted.cpu().numpy(), torch.as_tensor(labels).cpu().numpy()
        return cls(predicted == labels_np, predicted == NOT_A_DIGIT, features.double().cpu().numpy(),
                   labels_np)

    def fid(self, real: FeatureStats, index: np.ndarray | None = None) -> float:
        f = self.features if index is None else self.features[index]
        return frechet_distance(FeatureStats(f.mean(axis=0), np.cov(f, rowvar=False), len(f)), real)

    def per_class(self) -> list[float]:
        return accuracy_by_class(self.correct, self.labels)


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
class Versus:
    """A configuration against another compressed one on the same :class:`EvalSet` (e.g. a head-wise plan
    against the layer-wise plan of the same attention FLOPs): ``comparison`` is :func:`compare` with the
    baseline in the raw role, so its deltas are this configuration minus the baseline, paired."""

    baseline: str
    baseline_flops: float
    comparison: Comparison


@dataclass
class Row:
    """One line of the quality table (paper Table 1 in miniature)."""

    name: str
    flops: float
    comparison: Comparison
    search_cost: float | None = None      # model forwards per sampling evaluation during the search
    search_seconds: float | None = None
    versus: Versus | None = None


HEADER = ["config", "attention FLOPs", "class accuracy [95% CI]", "Δ accuracy vs raw [95% CI]", "not a digit",
          "FID", "Δ FID vs raw [95% CI]", "rel-L1 vs raw", f"search cost ({COST_UNIT})", "search time (s)"]


def cells(row: Row) -> list[str]:
    c = row.comparison
    cost = "-" if row.search_cost is None else f"{row.search_cost:.2f}"
    seconds = "-" if row.search_seconds is None else f"{row.search_seconds:.0f}"
    return [row.name, f"{100 * row.flops:.1f}%", c.accuracy.format(100),
            c.accuracy_delta.format(100, signed=True), f"{100 * c.not_digit:.1f}%", f"{c.fid:.2f}",
            c.fid_delta.format(1, 2, signed=True), f"{c.rel_l1:.4f}", cost, seconds]


def markdown(rows: Sequence[Row], floor: dict[str, float] | None = None, header: bool = True) -> str:
    """The table as markdown; ``floor`` (``real_floor()``) adds what real held-out digits score."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)] if header else []
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    if floor:
        real = [f"real digits (held-out, n={int(floor['n'])})", "-", f"{100 * floor['accuracy']:.1f}%", "-",
                f"{100 * floor['not_a_digit_rate']:.1f}%", f"{floor['fid']:.2f}", "-", "-", "-", "-"]
        lines.append("| " + " | ".join(real) + " |")
    return "\n".join(lines)


VERSUS_HEADER = ["config", "baseline", "attention FLOPs (config / baseline)",
                 "Δ accuracy vs baseline [95% CI]", "Δ FID vs baseline [95% CI]", "rel-L1 vs baseline"]


def versus_markdown(rows: Sequence[Row]) -> str:
    """The rows that have a :class:`Versus` as a markdown table of paired differences to their baseline."""
    lines = ["| " + " | ".join(VERSUS_HEADER) + " |", "|" + "---|" * len(VERSUS_HEADER)]
    for r in rows:
        if r.versus is not None:
            c = r.versus.comparison
            lines.append("| " + " | ".join([
                r.name, r.versus.baseline, f"{100 * r.flops:.1f}% / {100 * r.versus.baseline_flops:.1f}%",
                c.accuracy_delta.format(100, signed=True), c.fid_delta.format(1, 2, signed=True),
                f"{c.rel_l1:.4f}"]) + " |")
    return "\n".join(lines)


class PairedEvaluator:
    """Samples the uncompressed model once, then scores configurations against it, paired.

    ``progress(label)`` makes the progress callback of each sampling phase (e.g. the CLI's lines).
    """

    def __init__(self, model: DiT, classifier: DigitClassifier, evalset: EvalSet,
                 window: WindowSpec | None = None, progress: Callable[[str], Progress] | None = None,
                 resamples: int = 1000) -> None:
        if classifier.real_stats is None:
            raise ValueError("the classifier has no real-digit statistics; load it with load_classifier()")
        self.model, self.classifier, self.evalset, self.window = model, classifier, evalset, window
        self.progress, self.resamples = progress, resamples
        self.raw_samples = self.sample("raw samples", None)
        self.raw = Scores.of(classifier, self.raw_samples.images, evalset.labels)

    def sample(self, label: str, grid: Grid | None) -> Samples:
        bar = self.progress(label) if self.progress else None
        return sample_set(self.model, self.evalset, grid, window=self.window, progress=bar)

    def row(self, name: str, grid: Grid | None = None, *, search_cost: float | None = None,
            search_seconds: float | None = None) -> Row:
        """Sample ``grid`` (None: the raw row) and score it against the raw samples."""
        samples = self.raw_samples if grid is None else self.sample(f"{name} samples", grid)
        return self.score(name, samples, search_cost=search_cost, search_seconds=search_seconds)

    def score(self, name: str, samples: Samples, *, search_cost: float | None = None,
              search_seconds: float | None = None, baseline: tuple[str, Samples] | None = None) -> Row:
        """Score already drawn samples of this evaluation set against the raw samples and, when given, also
        against ``baseline`` = (its name, its samples of this set), paired the same way."""
        scores = Scores.of(self.classifier, samples.images, self.evalset.labels)
        row = Row(name, samples.flops_fraction, self._compare(self.raw, self.raw_samples, scores, samples),
                  search_cost, search_seconds)
        if baseline is not None:
            base_name, base = baseline
            base_scores = Scores.of(self.classifier, base.images, self.evalset.labels)
            row.versus = Versus(base_name, base.flops_fraction,
                                self._compare(base_scores, base, scores, samples))
        return row

    def _compare(self, base: Scores, base_samples: Samples, scores: Scores, samples: Samples) -> Comparison:
        return compare(base, scores, self.classifier.real_stats,
                       rel_l1_value=rel_l1(base_samples.images, samples.images), resamples=self.resamples)
