"""The machine a run is on: device, precision, seeds, library versions, and the error that stops any run."""

from __future__ import annotations

import os
import platform
import random
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .config import ConfigError


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf: the run stops, nothing is skipped or re-rolled."""


GPU_MEMORY_FRACTION_ENV = "SLOTLIB_GPU_MEMORY_FRACTION"


def resolve_device(name: str) -> torch.device:
    """The device a run uses; on CUDA, capped to ``$SLOTLIB_GPU_MEMORY_FRACTION`` of the GPU's memory when
    set (the Ray backend sets it to 1/K when K cells share a GPU)."""
    device = _resolve_device(name)
    fraction = os.environ.get(GPU_MEMORY_FRACTION_ENV)
    if device.type == "cuda" and fraction:
        torch.cuda.set_per_process_memory_fraction(float(fraction), device)
    return device


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"parameter 'device' is {name!r} but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"{device.type}: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None means plain fp32. 'auto' is bf16 on CUDA and fp32 elsewhere."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def versions() -> dict[str, str]:
    import timm
    import torchvision

    from . import __version__
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__, "numpy": np.__version__, "slotlib": __version__}


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def channels_last(device: torch.device) -> bool:
    """Whether images and weights go channels_last: on CUDA, and on the CPU, where oneDNN's convolutions
    are faster in that layout (mobilenetv2_100, 64 px, batch 32, 2 cores: 147 -> 165 training images/s)."""
    return device.type in ("cuda", "cpu")


def denormals_flushed() -> bool:
    """Whether the CPU now flushes denormal floats to zero (torch has a setter but no getter)."""
    return (torch.tensor([1e-39]) * 1.0).item() == 0.0


@contextmanager
def flushing_denormals() -> Iterator[None]:
    """Flush denormal floats to zero inside the block, then put back whatever the caller had set.

    Saturated softmaxes leave denormal values whose CPU arithmetic is several times slower; flushing
    changes only values under 1e-38."""
    before = denormals_flushed()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)
