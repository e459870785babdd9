"""What every benchmark suite shares: the machine description, markdown tables, the JSON file."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ditfa_core.plan.io import write_atomic


def cpu_name() -> str:
    """The CPU model (Linux), else whatever platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when torch sees a GPU, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def environment(device: torch.device) -> dict[str, Any]:
    """Everything a reader needs to compare two runs: device, driver/CUDA, torch, threads."""
    env: dict[str, Any] = {
        "device": device.type,
        "device_name": cpu_name(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
        "driver": None,
        "capability": None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["device_name"] = props.name
        env["capability"] = f"{props.major}.{props.minor}"
        env["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        env["driver"] = _nvidia_driver()
    return env


def _nvidia_driver() -> str | None:
    """The NVIDIA kernel driver version, read from /proc (no nvidia-smi subprocess)."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    first = text.splitlines()[0] if text else ""
    words = [w for w in first.split() if w[:1].isdigit() and "." in w]
    return words[0] if words else first or None


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """``columns`` is (row key, header) pairs; missing keys print as ``-``."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(row.get(key)) for key, _ in columns) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def write_json(path: str | Path, result: dict[str, Any]) -> None:
    """Write ``result`` as JSON atomically (the pack's one writer): a killed run never leaves half a file."""
    write_atomic(path, json.dumps(result, indent=2, default=str) + "\n")
