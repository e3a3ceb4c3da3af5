"""``slotlib bench``: training throughput of the reference data path against the fast one, in one process.

Two pipelines train the same model (same parameters, same initial weights) for N optimiser
steps after a warm-up, with the training loop's own step function (:func:`slotlib.train.train_step`):

``reference``  the reference code's data path: each tile a PIL image decoded from its JPEG, the
               training transforms on PIL (RandomResizedCrop to ``image_size``, flip, rotation 15,
               ColorJitter 0.2), a DataLoader with worker processes, fp32, NCHW, batch 32.
``loader``     ``pipeline: loader``, slotlib's per-tile path before the fast one: the uint8 cache,
               per-tile transforms in a DataLoader (``num_workers`` from the parameters), with
               the fast path's precision and memory format (not timed unless asked for).
``fast``       ``pipeline: fast``: the uint8 tiles on the device, augmented there a batch at a
               time (slotlib.device_data); bf16 autocast and channels_last on CUDA; optionally
               ``torch.compile``.

Only training steps are timed (CUDA events on a GPU, the wall clock with a device sync on the
CPU), repeated ``repeats`` times: the report gives the mean and spread of images/s, the ratio
fast/reference and the peak memory (CUDA: allocated, reset per pipeline; CPU: the process's
resident high-water mark, which only grows and leaves out DataLoader workers).
"""

from __future__ import annotations

import dataclasses
import itertools
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from .config import Config

PIPELINES = ("reference", "fast")
CHOICES = ("reference", "loader", "fast")


class JpegTiles(torch.utils.data.Dataset):
    """The reference's dataset: ``(transform(PIL image), label)``, decoding the JPEG on every access.

    Falls back to PIL images made from the uint8 cache when the JPEGs are not on this machine
    (then the decode cost is missing and the reference looks faster than it is; ``source`` says so).
    """

    def __init__(self, ds, indices: np.ndarray, transform) -> None:
        self.ds, self.indices, self.transform = ds, np.asarray(indices), transform
        self.source = "jpeg" if (Path(ds.root) / ds.paths[int(self.indices[0])]).exists() else "cache"

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        from PIL import Image

        j = int(self.indices[i])
        if self.source == "jpeg":
            with Image.open(Path(self.ds.root) / self.ds.paths[j]) as f:
                image = f.convert("RGB")
        else:
            image = Image.fromarray(np.asarray(self.ds.images[j]))
        return self.transform(image), int(self.ds.labels[j])


def reference_transform(image_size: int, mean, std):
    """The reference recipe on PIL images (torchvision.transforms semantics)."""
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomResizedCrop(image_size), v2.RandomHorizontalFlip(), v2.RandomRotation(15),
                       v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2), v2.PILToTensor(),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))])


def reference_loader(ds, indices, config: Config, mean, std, workers: int, device: torch.device):
    dataset = JpegTiles(ds, indices, reference_transform(config.data.image_size, mean, std))
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.data.batch_size, shuffle=True, drop_last=True,
                                         num_workers=workers, pin_memory=device.type == "cuda",
                                         persistent_workers=workers > 0,
                                         generator=torch.Generator().manual_seed(config.train.seed))
    return loader, dataset.source


def forever(loader) -> Iterator:
    """Batches without end, epoch after epoch."""
    while True:
        yield from loader


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return kb / 1024 if sys.platform.startswith("linux") else kb / 2**20


class Timer:
    """Device time of the enclosed work: CUDA events on a GPU, a synced wall clock elsewhere."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> "Timer":
        if self.device.type == "cuda":
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.end.record()
            self.end.synchronize()
            self.seconds = self.start.elapsed_time(self.end) / 1000
        else:
            self.seconds = time.perf_counter() - self.t0


def run_pipeline(pipeline: str, config: Config, ds, splits, *, steps: int, warmup: int, repeats: int,
                 stage: int, workers: int, compile: bool) -> dict[str, Any]:
    """Time ``repeats`` x ``steps`` training steps of one pipeline; returns its figures."""
    from .data import normalization
    from .device_data import make_device_loaders
    from .model import SlotClassifier
    from .train import (Experiment, StagePlan, autocast_dtype, make_optimizer, resolve_device, set_stage,
                        train_mode, train_step, tune_for_device)

    device = resolve_device(config.train.device)
    cuda = device.type == "cuda"
    if pipeline == "reference":  # the reference: fp32, NCHW, no compile
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, precision="fp32"))
    mean, std = normalization(config.model.backbone)
    torch.manual_seed(config.train.seed)
    model = SlotClassifier(config.model, num_classes=len(ds.classes), pretrained=False)
    # the reference trains plain fp32 NCHW; the others as `slotlib train` does
    model = model.to(device) if pipeline == "reference" else tune_for_device(model, device)
    if pipeline == "fast":
        loader = make_device_loaders(ds, {"train": splits["train"]}, image_size=config.data.image_size,
                                     batch_size=config.data.batch_size, mean=mean, std=std, seed=config.train.seed,
                                     device=device, channels_last=cuda, drop_last_train=True)["train"]
        source = "device"
    elif pipeline == "loader":
        from .data import make_loaders
        loader = make_loaders(ds, {"train": splits["train"]}, image_size=config.data.image_size,
                              batch_size=config.data.batch_size, mean=mean, std=std,
                              num_workers=config.data.num_workers, seed=config.train.seed,
                              drop_last_train=True)["train"]
        source = "cache"
    else:
        loader, source = reference_loader(ds, splits["train"], config, mean, std, workers, device)
    exp = Experiment(config, Path(tempfile.gettempdir()), ds, splits, {"train": loader}, model, device, mean, std,
                     progress=False)
    plan = StagePlan(stage, 1, config.train.stage1_lr if stage == 1 else config.train.stage2_lr, stage == 1)
    params = set_stage(model, plan.freeze_backbone)
    optimizer, _ = make_optimizer(params, plan, config)
    train_mode(model, plan.freeze_backbone)
    step_model = torch.compile(model) if compile and pipeline == "fast" else model
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    batches = forever(loader)

    scaler = torch.amp.GradScaler(device.type) if autocast_dtype(config.train.precision, device) is torch.float16 \
        else None

    def run(n: int) -> torch.Tensor:
        finite = torch.ones((), dtype=torch.bool, device=device)
        for images, target in itertools.islice(batches, n):
            finite &= train_step(exp, step_model, optimizer, params, images, target, scaler).finite
        return finite

    wall = time.perf_counter()
    run(warmup)  # worker start-up, cuDNN autotuning, compilation
    warm_seconds = time.perf_counter() - wall
    rates = []
    for _ in range(repeats):
        with Timer(device) as t:
            finite = run(steps)
        rates.append(steps * config.data.batch_size / t.seconds)
    return {"pipeline": pipeline, "images_per_second": statistics.mean(rates),
            "images_per_second_std": statistics.stdev(rates) if len(rates) > 1 else 0.0,
            "runs": [round(r, 1) for r in rates], "warmup_seconds": round(warm_seconds, 2),
            "peak_memory_mb": round(peak_memory_mb(device), 1),
            "memory_kind": "cuda max allocated" if cuda else "process max RSS (cumulative)",
            "precision": {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[
                autocast_dtype(config.train.precision, device)],
            "channels_last": cuda and pipeline != "reference", "compile": compile and pipeline == "fast",
            "data_source": source,
            "workers": workers if pipeline == "reference" else config.data.num_workers if pipeline == "loader" else 0,
            "finite": bool(finite)}


def bench(config: Config, *, pipelines: tuple[str, ...] = PIPELINES, steps: int = 20, warmup: int = 5,
          repeats: int = 3, stage: int = 2, workers: int = 4, compile: bool = False) -> dict[str, Any]:
    """Load the data once, then time each pipeline in turn; returns everything ``--json`` prints."""
    from .data import load_eurosat, split_indices
    from .train import describe_device, resolve_device, versions

    dc = config.data
    ds = load_eurosat(dc.data_root, per_class_limit=dc.per_class_limit)
    splits = split_indices(ds, dc.split, split_seed=dc.split_seed, split_fractions=dc.split_fractions)
    device = resolve_device(config.train.device)
    results = [run_pipeline(p, config, ds, splits, steps=steps, warmup=warmup, repeats=repeats, stage=stage,
                            workers=workers, compile=compile) for p in pipelines]
    out = {"device": describe_device(device), "torch_threads": torch.get_num_threads(),
           "backbone": config.model.backbone, "head": config.model.head, "image_size": dc.image_size,
           "batch_size": dc.batch_size, "stage": stage, "steps": steps, "warmup": warmup, "repeats": repeats,
           "python": platform.python_version(), "versions": versions(), "results": results}
    by = {r["pipeline"]: r["images_per_second"] for r in results}
    if "reference" in by and "fast" in by:
        out["speedup"] = by["fast"] / by["reference"]
    return out


def format_bench(result: dict[str, Any]) -> str:
    lines = [f"{result['backbone']} + {result['head']}, {result['image_size']} px, batch {result['batch_size']}, "
             f"stage {result['stage']}, {result['steps']} steps x {result['repeats']} after {result['warmup']} "
             f"warm-up, on {result['device']}",
             f"{'pipeline':10s} {'images/s':>16s} {'peak MB':>9s}  details"]
    for r in result["results"]:
        details = f"{r['precision']}, data from {r['data_source']}"
        if r["workers"]:
            details += f", {r['workers']} workers"
        if r["channels_last"]:
            details += ", channels_last"
        if r["compile"]:
            details += ", compiled"
        if not r["finite"]:
            details += ", NON-FINITE LOSS"
        rate = f"{r['images_per_second']:.1f} +- {r['images_per_second_std']:.1f}"
        lines.append(f"{r['pipeline']:10s} {rate:>16s} {r['peak_memory_mb']:9.0f}  {details}")
    if "speedup" in result:
        lines.append(f"fast / reference: {result['speedup']:.2f}x")
    return "\n".join(lines)
