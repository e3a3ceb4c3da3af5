"""``slotlib bench``: training throughput of the reference data path against the fast one, in one process.

Two pipelines train the same model (same parameters, same initial weights) for N optimiser
steps after a warm-up, with the training loop's own step function (:func:`slotlib.classify.steps.train_step`):

``reference``  the reference code's data path: each tile a PIL image decoded from its JPEG, the
               training transforms on PIL (RandomResizedCrop to ``image_size``, flip, rotation 15,
               ColorJitter 0.2), a DataLoader with worker processes, fp32, NCHW, batch 32.
``loader``     ``pipeline: loader``, slotlib's per-tile path before the fast one: the uint8 cache,
               per-tile transforms in a DataLoader (``num_workers`` from the parameters), with
               the fast path's precision and memory format (not timed unless asked for).
``fast``       ``pipeline: fast``: the uint8 tiles on the device, augmented there a batch at a
               time (slotlib.data.device); bf16 autocast on CUDA, channels_last on CUDA and CPU.
``compiled``   ``fast`` with the model under ``torch.compile`` (``compile: true``).

One process can time several heads and batch sizes (every combination, the data loaded once).
Only training steps are timed, data path included (CUDA events on a GPU, the wall clock with a
device sync on the CPU), repeated ``repeats`` times: the report gives the mean and spread of
images/s, the ratio to the reference and the peak memory (CUDA: allocated by this process, reset
per run, plus the whole device's memory in use after the warm-up; CPU: the process's resident
high-water mark, which only grows and leaves out DataLoader workers). A run that fails (out of
memory, a compiler error) is reported with its error and the others still run.

``profile`` steps more per run go through ``torch.profiler``: the operators and kernels that took
the most device time, for finding what bounds a step.

Several processes can share one GPU, as grid cells do: ``ready_dir`` and ``peers`` make each one
wait after its warm-up until ``peers`` processes are ready, so their timed steps overlap
(benchmarks/cells_per_gpu.py).
"""

from __future__ import annotations

import gc
import itertools
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..config import Config
from .bench_format import speedups
from .bench_reference import forever, reference_loader

DEFAULT_PIPELINES = ("reference", "fast")   # what `slotlib bench` times unless --pipeline says otherwise


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


def wait_for_peers(ready_dir: str | os.PathLike, peers: int, timeout_s: float = 900.0) -> None:
    """Mark this process ready in ``ready_dir`` and wait until ``peers`` processes have."""
    from ..config import ConfigError

    folder = Path(ready_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{platform.node()}-{os.getpid()}-{time.monotonic_ns()}").touch()
    deadline = time.monotonic() + timeout_s
    while sum(1 for _ in folder.iterdir()) < peers:
        if time.monotonic() > deadline:
            raise ConfigError(f"--peers {peers}: only {sum(1 for _ in folder.iterdir())} processes became ready in "
                              f"{ready_dir} within {timeout_s:.0f} s")
        time.sleep(0.05)


def device_memory_used_mb(device: torch.device) -> float | None:
    """Memory in use on the whole GPU (every process, CUDA contexts included); None off CUDA."""
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    return round((total - free) / 2**20, 1)


def top_ops(prof, device: torch.device, n: int = 15) -> dict[str, Any]:
    """The ``n`` operators and kernels that took the most self time on the device (CPU time off CUDA)."""
    on_gpu = device.type == "cuda"

    def self_us(e) -> float:  # the attribute was renamed from *_cuda_* to *_device_* in torch 2.4
        if not on_gpu:
            return e.self_cpu_time_total
        return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0)

    events = [e for e in prof.key_averages() if self_us(e) > 0]
    total = sum(self_us(e) for e in events)
    events.sort(key=self_us, reverse=True)
    return {"clock": "device" if on_gpu else "cpu", "total_ms": round(total / 1000, 3),
            "top": [{"name": e.key[:90], "calls": e.count, "self_ms": round(self_us(e) / 1000, 3),
                     "share": round(self_us(e) / total, 4) if total else 0.0} for e in events[:n]]}


def run_pipeline(pipeline: str, config: Config, ds, splits, *, steps: int, warmup: int, repeats: int,
                 stage: int, workers: int, barrier=None, profile: int = 0) -> dict[str, Any]:
    """Time ``repeats`` x ``steps`` training steps of one pipeline; returns its figures.

    ``barrier``, if given, is called between the warm-up and the timed steps. ``profile`` > 0
    runs that many more steps under ``torch.profiler`` afterwards (untimed) and adds the operators
    that took the most device time.
    """
    compile = pipeline == "compiled"
    from ..data.transforms import normalization
    from ..runtime import resolve_device
    from ..runtime import channels_last
    from .experiment import split_loaders, tune_for_device
    from .model import SlotClassifier
    from .steps import Objective, StagePlan, make_optimizer, set_stage, train_mode, train_step

    device = resolve_device(config.train.device)
    cuda = device.type == "cuda"
    if pipeline == "reference":  # the reference: fp32, NCHW, no compile
        config = config.with_params(precision="fp32")
    mean, std = normalization(config.model.backbone)
    torch.manual_seed(config.train.seed)
    model = SlotClassifier(config.model, num_classes=len(ds.classes), pretrained=False,
                           image_size=config.data.image_size, head_params=config.head_params)
    # the reference trains plain fp32 NCHW; the others as `slotlib train` does
    model = model.to(device) if pipeline == "reference" else tune_for_device(model, device)
    if pipeline == "reference":
        loader, source = reference_loader(ds, splits["train"], config, mean, std, workers, device)
    else:   # the training loader of `slotlib train`, built where the run builds it
        kind = "loader" if pipeline == "loader" else "fast"
        loader = split_loaders(config.with_params(pipeline=kind), ds, {"train": splits["train"]}, device, mean, std,
                               drop_last_train=True)["train"]
        source = "cache" if kind == "loader" else "device"
    plan = StagePlan(stage, 1, config.train.stage1_lr if stage == 1 else config.train.stage2_lr, stage == 1)
    params = set_stage(model, plan.freeze_backbone)
    optimizer, _ = make_optimizer(params, plan, config)
    train_mode(model, plan.freeze_backbone, config.train.stage2_batchnorm)
    step_model = torch.compile(model) if compile else model
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    batches = forever(loader)
    objective = Objective.of(config, device, model.num_classes)   # the step training runs, Mixup included
    scaler = torch.amp.GradScaler(device.type) if objective.amp_dtype is torch.float16 else None

    def run(n: int) -> torch.Tensor:
        finite = torch.ones((), dtype=torch.bool, device=device)
        for images, target in itertools.islice(batches, n):
            finite &= train_step(step_model, images, target, optimizer, objective, grad_clip=config.train.grad_clip,
                                 scaler=scaler).finite
        return finite

    wall = time.perf_counter()
    run(warmup)  # worker start-up, cuDNN autotuning, compilation
    warm_seconds = time.perf_counter() - wall
    if barrier is not None:
        barrier()
    in_use = device_memory_used_mb(device)
    rates = []
    for _ in range(repeats):
        with Timer(device) as t:
            finite = run(steps)
        rates.append(steps * config.data.batch_size / t.seconds)
    profiled = None
    if profile:
        from torch.profiler import ProfilerActivity
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with torch.profiler.profile(activities=activities) as prof:
            with Timer(device):
                run(profile)
        profiled = {"steps": profile, **top_ops(prof, device)}
    return {"pipeline": pipeline, "head": config.model.head, "batch_size": config.data.batch_size,
            "images_per_second": statistics.mean(rates),
            "images_per_second_std": statistics.stdev(rates) if len(rates) > 1 else 0.0,
            "runs": [round(r, 1) for r in rates], "warmup_seconds": round(warm_seconds, 2),
            "peak_memory_mb": round(peak_memory_mb(device), 1), "device_memory_used_mb": in_use,
            "memory_kind": "cuda max allocated" if cuda else "process max RSS (cumulative)",
            "precision": {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[objective.amp_dtype],
            "channels_last": channels_last(device) and pipeline != "reference", "compile": compile,
            "data_source": source,
            "workers": workers if pipeline == "reference" else config.data.num_workers if pipeline == "loader" else 0,
            "finite": bool(finite), "error": None, "profile": profiled}


def bench(config: Config, *, pipelines: tuple[str, ...] = DEFAULT_PIPELINES, heads: tuple[str, ...] | None = None,
          batch_sizes: tuple[int, ...] | None = None, steps: int = 20, warmup: int = 5, repeats: int = 3,
          stage: int = 2, workers: int = 4, ready_dir: str | None = None, peers: int = 1,
          profile: int = 0, on_result=None) -> dict[str, Any]:
    """Load the data once, then time every head x batch size x pipeline in turn; returns what ``--json`` prints.

    ``on_result``, if given, is called with each run's figures as soon as it finishes.
    """
    from ..data.eurosat import load_eurosat
    from ..data.splits import split_indices
    from ..runtime import describe_device, resolve_device, versions

    dc = config.data
    heads = tuple(heads or (config.model.head,))
    batch_sizes = tuple(batch_sizes or (dc.batch_size,))
    ds = load_eurosat(dc.data_root, per_class_limit=dc.per_class_limit)
    splits = split_indices(ds, dc.split, split_seed=dc.split_seed, split_fractions=dc.split_fractions)
    device = resolve_device(config.train.device)
    barrier = (lambda: wait_for_peers(ready_dir, peers)) if ready_dir else None
    results = []
    for head, batch_size, pipeline in itertools.product(heads, batch_sizes, pipelines):
        cfg = config.with_params(head=head, batch_size=batch_size)
        try:
            results.append(run_pipeline(pipeline, cfg, ds, splits, steps=steps, warmup=warmup, repeats=repeats,
                                        stage=stage, workers=workers, barrier=barrier, profile=profile))
        except RuntimeError as err:  # out of memory, a compiler error: report it, time the rest
            results.append({"pipeline": pipeline, "head": head, "batch_size": batch_size,
                            "error": f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}"})
        if on_result is not None:
            on_result(results[-1])
        barrier = None  # peers meet once, before their first timed run
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out = {"device": describe_device(device), "torch_threads": torch.get_num_threads(),
           "backbone": config.model.backbone, "head": heads[0] if len(heads) == 1 else list(heads),
           "image_size": dc.image_size, "batch_size": batch_sizes[0] if len(batch_sizes) == 1 else list(batch_sizes),
           "stage": stage, "steps": steps, "warmup": warmup, "repeats": repeats, "peers": peers,
           "python": platform.python_version(), "versions": versions(), "results": results}
    out["speedups"] = speedups(results)
    if len(heads) == 1 and len(batch_sizes) == 1 and "fast" in out["speedups"].get(f"{heads[0]}/{batch_sizes[0]}", {}):
        out["speedup"] = out["speedups"][f"{heads[0]}/{batch_sizes[0]}"]["fast"]
    return out
