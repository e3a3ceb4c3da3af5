"""Two-stage training: one stage loop called twice, evaluation, checkpoints, resume, run files.

Stage 1 trains the head on a frozen backbone (kept in eval mode, so BatchNorm statistics stay
put); the best stage-1 weights are then restored and stage 2 fine-tunes everything at a lower
learning rate. The best validation accuracy over both stages wins; the test set is evaluated
once, at the end, on those weights.

A run writes one folder (see DESIGN.md, "One cell's folder"), every file atomically:
``params.yaml``, ``history.csv``, ``metrics.json``, ``best.pt`` and ``last.pt``.

Randomness: every epoch re-seeds torch, numpy, python and the loader's shuffle generator from
(seed, stage, epoch), so the random stream of an epoch does not depend on what ran before it in
this process; a resumed run therefore repeats an uninterrupted one exactly (on CPU).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import random
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml
from torch import nn
from tqdm.auto import tqdm

from .config import LOCAL_ONLY, Config, ConfigError
from .grid import read_metrics
from .losses import (COLLAPSE_SPREAD, SATURATED_SHARE, SATURATION_MARGIN, HeadCollapseError, NonFiniteLossError,
                     logit_spread, saturated_share, slot_classification_loss)
from .model import SlotClassifier
from .runfiles import _UMASK, resolve_device, save_torch_atomic, write_atomic, write_csv, write_json  # noqa: F401 (re-exported)

HISTORY_COLUMNS = ("stage", "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds",
                   "images_per_second", "logit_spread", "attn_saturated")


# --------------------------------------------------------------------------- run files

def write_history(path: Path, rows: list[dict]) -> None:
    write_csv(path, rows, HISTORY_COLUMNS)


@contextlib.contextmanager
def run_lock(out_dir: Path, wait_s: float = 15.0):
    """Exclusive lock on a run folder, so two processes never train into it at once.

    Waits a little: a kernel orphaned by a killed grid needs about a second to notice and exit.
    """
    import fcntl

    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".lock", "w") as handle:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ConfigError(f"another process is training in {out_dir}; wait for it or stop it") from None
                time.sleep(0.2)
        yield


# --------------------------------------------------------------------------- environment

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def epoch_seed(seed: int, stage: int, epoch: int) -> int:
    """A distinct, reproducible seed for each (run seed, stage, epoch)."""
    return (seed * 1_000_003 + stage * 10_007 + epoch) % 2**31


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


# --------------------------------------------------------------------------- the experiment

@dataclass
class Experiment:
    """Everything one run needs, prepared before training so a notebook can show it first."""

    config: Config
    out_dir: Path
    data: Any            # slotlib.data.EuroSAT
    splits: dict[str, np.ndarray]
    loaders: dict[str, Any]  # DataLoader ('loader' pipeline) or device_data.DeviceLoader ('fast')
    model: SlotClassifier
    device: torch.device
    mean: tuple[float, ...]
    std: tuple[float, ...]
    split_fingerprint: str = ""
    progress: bool = True

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.data.classes)


def prepare(config: Config, out_dir: str | os.PathLike, *, progress: bool = True,
            pretrained: bool | None = None) -> Experiment:
    """Check the run folder, load data, build the model. Raises ConfigError on bad input first.

    ``pretrained=False`` skips fetching backbone weights (when a checkpoint will be loaded anyway).
    """
    from . import data as eurosat

    out_dir = Path(out_dir)
    check_run_folder(config, out_dir)
    device = resolve_device(config.train.device)
    dc = config.data
    ds = eurosat.load_eurosat(dc.data_root, per_class_limit=dc.per_class_limit)
    try:
        splits = eurosat.split_indices(ds, dc.split, split_seed=dc.split_seed, split_fractions=dc.split_fractions)
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(f"parameter 'split': {err}") from None
    empty = [name for name, idx in splits.items() if len(idx) == 0]
    if empty:
        raise ConfigError(f"the '{empty[0]}' split is empty with these parameters; raise 'per_class_limit' "
                          f"or change 'split_fractions'")
    mean, std = eurosat.normalization(config.model.backbone)
    if dc.pipeline == "fast":
        from .device_data import make_device_loaders
        loaders = make_device_loaders(ds, splits, image_size=dc.image_size, batch_size=dc.batch_size, mean=mean,
                                      std=std, augment=dc.augment, seed=config.train.seed, device=device,
                                      channels_last=channels_last(device), crop_scale=dc.crop_scale,
                                      dihedral=dc.dihedral)
    else:
        loaders = eurosat.make_loaders(ds, splits, image_size=dc.image_size, batch_size=dc.batch_size, mean=mean,
                                       std=std, augment=dc.augment, num_workers=dc.num_workers,
                                       seed=config.train.seed, crop_scale=dc.crop_scale, dihedral=dc.dihedral)
    seed_everything(config.train.seed)
    model = tune_for_device(SlotClassifier(config.model, num_classes=len(ds.classes), pretrained=pretrained,
                                           image_size=dc.image_size), device)
    split_fp = json.dumps({k: v.tolist() for k, v in splits.items()})
    return Experiment(config, out_dir, ds, splits, loaders, model, device, mean, std,
                      hashlib.sha256(split_fp.encode()).hexdigest()[:16], progress)


def channels_last(device: torch.device) -> bool:
    """Whether images and weights go channels_last: on CUDA, and on the CPU, where oneDNN's convolutions
    are faster in that layout (mobilenetv2_100, 64 px, batch 32, 2 cores: 147 -> 165 training images/s)."""
    return device.type in ("cuda", "cpu")


def tune_for_device(model: nn.Module, device: torch.device) -> nn.Module:
    """The model on ``device``, channels_last where that is faster; on CUDA cuDNN autotuning and TF32."""
    model = model.to(device)
    if channels_last(device):
        model = model.to(memory_format=torch.channels_last)
    if device.type != "cuda":
        return model
    torch.backends.cudnn.benchmark = True           # fixed input size: let cuDNN pick its fastest kernels
    torch.backends.cuda.matmul.allow_tf32 = True    # fp32 matmuls outside autocast
    torch.backends.cudnn.allow_tf32 = True
    return model


def check_run_folder(config: Config, out_dir: Path) -> None:
    """Refuse a folder that holds a run of different parameters, before anything is written."""
    path = out_dir / "params.yaml"
    if not path.exists():
        return
    old = yaml.safe_load(path.read_text()) or {}
    try:
        old_cfg = Config.from_params(old)
    except ConfigError as err:
        raise ConfigError(f"{path} holds parameters this version cannot read ({err}); use another output folder") from None
    if old_cfg.digest() != config.digest():
        new, there = config.to_params(), old_cfg.to_params()
        first = next((k for k in new if k not in LOCAL_ONLY and there.get(k) != new[k]), "?")
        raise ConfigError(f"{out_dir} already holds a run with different parameters ('{first}': "
                          f"{there.get(first)!r} there, {new.get(first)!r} now); "
                          f"use another output folder or delete that one")


# --------------------------------------------------------------------------- one stage

@dataclass
class StagePlan:
    index: int          # 1 or 2
    epochs: int
    lr: float
    freeze_backbone: bool

    @property
    def name(self) -> str:
        return f"stage{self.index}"


def stage_plans(config: Config) -> list[StagePlan]:
    t = config.train
    plans = [StagePlan(1, t.stage1_epochs, t.stage1_lr, True), StagePlan(2, t.stage2_epochs, t.stage2_lr, False)]
    return [p for p in plans if p.epochs > 0]


def set_stage(model: SlotClassifier, freeze_backbone: bool) -> list[nn.Parameter]:
    """requires_grad for the stage; returns the parameters the optimiser trains."""
    model.backbone.requires_grad_(not freeze_backbone)
    return model.head_parameters() if freeze_backbone else list(model.parameters())


def train_mode(model: SlotClassifier, freeze_backbone: bool) -> None:
    model.train()
    if freeze_backbone:
        model.backbone.eval()  # frozen: BatchNorm running statistics and dropout stay as in inference


def make_optimizer(params: list[nn.Parameter], plan: StagePlan, config: Config):
    optimizer = torch.optim.AdamW(params, lr=plan.lr, weight_decay=config.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=plan.epochs)
    return optimizer, scheduler


@dataclass
class EpochResult:
    loss: float
    acc: float
    seconds: float
    images: int
    spread_mean: float = float("nan")       # mean over samples of the largest minus the smallest logit
    spread_max: float = float("nan")        # its largest value in the epoch
    saturated_mean: float | None = None     # SCOUTER: mean share of saturated attention weights per batch
    saturated_min: float | None = None      # and its smallest value in the epoch

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


# Batches between host syncs in the training loop: the progress bar and the finiteness check.
# Everything else stays on the device, so the GPU never waits for Python.
SYNC_EVERY = 25


def to_device(exp: Experiment, images: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch on the run's device (a no-op for the fast pipeline), channels_last where the model is."""
    fmt = torch.channels_last if channels_last(exp.device) else torch.preserve_format
    return (images.to(exp.device, non_blocking=True, memory_format=fmt),
            target.to(exp.device, non_blocking=True))


def forward_loss(exp: Experiment, model: Callable, images: torch.Tensor, target: torch.Tensor):
    """Batch to the device, forward under the run's autocast, the training objective: (target, logits, loss, attn)."""
    cfg, device = exp.config, exp.device
    images, target = to_device(exp, images, target)
    dtype = autocast_dtype(cfg.train.precision, device)
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        logits, attn = model(images)                                    # [B,K], [B,S,N]
    loss, _ = slot_classification_loss(logits, target, attn, head=cfg.model.head, lambda_area=cfg.train.lambda_area,
                                       area_power=cfg.model.area_power, label_smoothing=cfg.train.label_smoothing)
    return target, logits, loss, attn


@dataclass
class Step:
    """What one optimiser step leaves behind, all on the device: reading it is what costs a sync."""

    loss: torch.Tensor       # [] the batch's mean loss
    correct: torch.Tensor    # [] right predictions in the batch
    n: int                   # images in the batch
    finite: torch.Tensor     # [] bool: loss (and gradient norm, when clipped without a scaler) finite
    spread: torch.Tensor     # [B] each sample's largest minus smallest class logit
    saturated: torch.Tensor | None  # [] share of saturated sigmoid attention weights (SCOUTER), else None


def train_step(exp: Experiment, step_model: Callable, optimizer, trained: list[nn.Parameter],
               images: torch.Tensor, target: torch.Tensor, scaler: torch.amp.GradScaler | None) -> Step:
    """Forward, backward, clip, optimiser step. No host sync (the training loop and the benchmark share it)."""
    target, logits, loss, attn = forward_loss(exp, step_model, images, target)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    finite = torch.isfinite(loss.detach())
    if exp.config.train.grad_clip is not None:
        norm = torch.nn.utils.clip_grad_norm_(trained, exp.config.train.grad_clip)
        if scaler is None:  # the fp16 scaler skips non-finite steps itself
            finite = finite & torch.isfinite(norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    saturated = saturated_share(attn) if exp.config.model.head == "scouter" else None
    return Step(loss.detach(), (logits.argmax(1) == target).sum(), target.shape[0], finite, logit_spread(logits),
                saturated)


def train_one_epoch(exp: Experiment, step_model: Callable, optimizer, plan: StagePlan, epoch: int,
                    scaler: torch.amp.GradScaler | None) -> EpochResult:
    device = exp.device
    trained = [p for group in optimizer.param_groups for p in group["params"]]
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    first_bad = torch.zeros((), device=device, dtype=torch.long)  # first batch whose loss or gradient was not finite
    bad_loss = torch.zeros((), device=device)
    spread_sum = torch.zeros((), device=device)
    spread_max = torch.zeros((), device=device)
    sat_sum = torch.zeros((), device=device)
    sat_min = torch.ones((), device=device)
    seen = batches = 0
    bar = tqdm(exp.loaders["train"], desc=f"{plan.name} epoch {epoch}", leave=False, disable=not exp.progress,
               unit="batch")
    sync(device)
    start = time.perf_counter()
    for batch, (images, target) in enumerate(bar, 1):
        step = train_step(exp, step_model, optimizer, trained, images, target, scaler)
        new_bad = (first_bad == 0) & ~step.finite
        first_bad = torch.where(new_bad, batch, first_bad)
        bad_loss = torch.where(new_bad, step.loss.float(), bad_loss)
        loss_sum += step.loss * step.n
        correct += step.correct
        spread_sum += step.spread.sum()
        spread_max = torch.maximum(spread_max, step.spread.max())
        if step.saturated is not None:
            sat_sum += step.saturated
            sat_min = torch.minimum(sat_min, step.saturated)
        seen += step.n
        batches += 1
        if batch % SYNC_EVERY == 0 or batch == len(bar):
            # The only host sync of the loop. A non-finite step has already updated the weights, but
            # the run stops here, before any checkpoint is written: nothing is skipped or saved.
            if first_bad.item():
                raise NonFiniteLossError(f"loss or gradient norm became non-finite (loss {bad_loss.item()}) in "
                                         f"{plan.name}, epoch {epoch}, batch {first_bad.item()}; lower the "
                                         f"learning rate or set 'grad_clip'")
            if exp.progress:
                elapsed = time.perf_counter() - start
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.3f}",
                                img_s=f"{seen / elapsed:.0f}")
    sync(device)
    seconds = time.perf_counter() - start
    scouter = exp.config.model.head == "scouter"
    return EpochResult(loss_sum.item() / seen, correct.item() / seen, seconds, seen, spread_sum.item() / seen,
                       spread_max.item(), sat_sum.item() / batches if scouter else None,
                       sat_min.item() if scouter else None)


def collapse_of(exp: Experiment, plan: StagePlan, epoch: int, result: EpochResult) -> HeadCollapseError | None:
    """The error for an epoch in which the head learned nothing (see slotlib.losses), or None."""
    model = exp.config.model
    if result.spread_max < COLLAPSE_SPREAD:
        kind = "equal_logits"
        what = (f"every class's logit was equal on every training batch (largest spread {result.spread_max:.1e}, "
                f"under {COLLAPSE_SPREAD:g})")
    elif result.saturated_min is not None and result.saturated_min > SATURATED_SHARE:
        kind = "saturated_attention"
        what = (f"its attention was saturated on every training batch (at least {result.saturated_min:.1%} of the "
                f"weights within {SATURATION_MARGIN:g} of 0 or 1, where the sigmoid passes no gradient)")
    else:
        return None
    if model.head == "scouter" and model.scouter_norm == "scouter":
        advice = "set scouter_norm: none (the authors' rescaling saturates the sigmoid)"
    elif model.head == "slot" and model.slot_score == "shared":
        advice = "set slot_score: per_class"
    else:
        advice = (f"lower {plan.name}_lr" + (" or lambda_area" if model.head == "scouter" else "")
                  + ", or attend over a larger token map (output_stride: null or 16, or a larger image_size)")
    message = f"the {model.head} head collapsed in {plan.name}, epoch {epoch}: {what}; {advice}"
    return HeadCollapseError(message, {"stage": plan.index, "epoch": epoch, "kind": kind, "message": message})


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate(exp: Experiment, model: Callable, split: str) -> dict[str, Any]:
    """Loss, accuracy and the confusion matrix (rows: true class, columns: predicted)."""
    device = exp.device
    was_training = exp.model.training
    exp.model.eval()
    k = len(exp.class_names)
    confusion = torch.zeros(k, k, dtype=torch.long, device=device)
    loss_sum = torch.zeros((), device=device)
    for images, target in exp.loaders[split]:
        target, logits, loss, _ = forward_loss(exp, model, images, target)
        loss_sum += loss * target.shape[0]
        confusion += torch.bincount(target * k + logits.argmax(1), minlength=k * k).view(k, k)
    exp.model.train(was_training)
    confusion = confusion.cpu()
    n = int(confusion.sum())
    return {"loss": loss_sum.item() / n, "acc": float(confusion.diag().sum()) / n, "confusion": confusion.tolist()}


# --------------------------------------------------------------------------- the run

@dataclass
class RunState:
    """What last.pt holds besides weights and optimiser: where the run is and the best so far."""

    stage: int = 0             # stage of the last finished epoch (0: nothing done)
    epoch: int = 0             # last finished epoch within that stage
    best_val_acc: float = -1.0
    best_stage: int = 0
    best_epoch: int = 0
    stage1_best_val_acc: float | None = None
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    train_images: int = 0


def fit(exp: Experiment) -> dict[str, Any]:
    """Train both stages (resuming from last.pt when present), test once, write the run folder.

    Returns metrics.json's content. A run already ``done`` is not redone.
    """
    with run_lock(exp.out_dir):
        return _fit_locked(exp)


def _fit_locked(exp: Experiment) -> dict[str, Any]:
    out, cfg = exp.out_dir, exp.config
    done = read_metrics(out)
    if done and done.get("status") == "done" and (out / "best.pt").exists():
        return done
    write_atomic(out / "params.yaml", yaml.safe_dump(cfg.to_params(), sort_keys=False))
    wall_start = time.perf_counter()
    state, resume = load_resume(exp)
    base = {"cell_id": out.name, "params": cfg.to_params(), "n_params": exp.model.parameter_counts()["n_params"],
            "device": describe_device(exp.device), "versions": versions(), "git_sha": git_sha(),
            "data_fingerprint": exp.data.fingerprint, "split_fingerprint": exp.split_fingerprint}
    wall_before = resume.get("wall_seconds", 0.0) if resume else 0.0

    def write_metrics(status: str, **extra) -> dict:
        metrics = {"status": status, **base, "epochs_done": len(state.history),
                   "best_val_acc": state.best_val_acc if state.best_stage else None,
                   "best_stage": state.best_stage or None, "best_epoch": state.best_epoch or None,
                   "stage1_best_val_acc": state.stage1_best_val_acc,
                   "train_images_per_second": (state.train_images / state.train_seconds
                                               if state.train_seconds else None),
                   "wall_seconds": wall_before + time.perf_counter() - wall_start,
                   "peak_gpu_memory_mb": (round(torch.cuda.max_memory_allocated(exp.device) / 2**20, 1)
                                          if exp.device.type == "cuda" else None),
                   "error": None, **extra}
        write_json(out / "metrics.json", metrics)
        return metrics

    try:
        write_metrics("running")
        step_model = torch.compile(exp.model) if cfg.train.compile else exp.model
        for plan in stage_plans(cfg):
            finished = plan.index < state.stage or (plan.index == state.stage and state.epoch >= plan.epochs)
            if not finished:
                run_stage(exp, step_model, plan, state, resume if plan.index == state.stage else None,
                          lambda: write_metrics("running"), wall_before, wall_start)
            if plan.index == 1 and state.stage == 1 and cfg.train.stage2_epochs:
                # stage 2 starts from the best stage-1 weights
                exp.model.load_state_dict(torch.load(out / "best.pt", weights_only=True, map_location=exp.device))
        exp.model.load_state_dict(torch.load(out / "best.pt", weights_only=True, map_location=exp.device))
        test = evaluate(exp, step_model, "test")
        per_class = {name: (row[i] / sum(row) if sum(row) else None)
                     for i, (name, row) in enumerate(zip(exp.class_names, test["confusion"]))}
        explanation = {}
        if cfg.train.explain_tiles:
            from .explain import explain_split
            explanation = explain_split(exp, "test", cfg.train.explain_tiles, seed=cfg.train.seed)
        return write_metrics("done", test_acc=test["acc"], test_loss=test["loss"], per_class_test_acc=per_class,
                             test_confusion=test["confusion"], class_names=list(exp.class_names), **explanation)
    except KeyboardInterrupt:
        raise  # status stays "running": last.pt resumes it
    except HeadCollapseError as err:
        write_metrics("failed", error=f"{type(err).__name__}: {err}", collapse=err.info)
        raise
    except Exception as err:
        write_metrics("failed", error=f"{type(err).__name__}: {err}")
        raise


def run_stage(exp: Experiment, step_model: Callable, plan: StagePlan, state: RunState, resume: dict | None,
              on_epoch: Callable[[], Any], wall_before: float, wall_start: float) -> None:
    cfg, out = exp.config, exp.out_dir
    params = set_stage(exp.model, plan.freeze_backbone)
    optimizer, scheduler = make_optimizer(params, plan, cfg)
    scaler = torch.amp.GradScaler(exp.device.type) if autocast_dtype(cfg.train.precision, exp.device) is torch.float16 else None
    first = 1
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        if scaler is not None and resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        first = state.epoch + 1
    epochs = tqdm(range(first, plan.epochs + 1), desc=plan.name, initial=first - 1, total=plan.epochs,
                  disable=not exp.progress, unit="epoch")
    for epoch in epochs:
        seed = epoch_seed(cfg.train.seed, plan.index, epoch)
        seed_everything(seed)
        exp.loaders["train"].generator.manual_seed(seed)
        train_mode(exp.model, plan.freeze_backbone)
        lr = optimizer.param_groups[0]["lr"]
        result = train_one_epoch(exp, step_model, optimizer, plan, epoch, scaler)
        val = evaluate(exp, step_model, "val")
        scheduler.step()
        state.history.append({"stage": plan.index, "epoch": epoch, "train_loss": result.loss,
                              "train_acc": result.acc, "val_loss": val["loss"], "val_acc": val["acc"], "lr": lr,
                              "seconds": round(result.seconds, 3),
                              "images_per_second": round(result.images_per_second, 1),
                              "logit_spread": round(result.spread_mean, 6),
                              "attn_saturated": "" if result.saturated_mean is None else round(result.saturated_mean, 4)})
        state.stage, state.epoch = plan.index, epoch
        state.train_seconds += result.seconds
        state.train_images += result.images
        if val["acc"] > state.best_val_acc:
            state.best_val_acc, state.best_stage, state.best_epoch = val["acc"], plan.index, epoch
            save_torch_atomic(exp.model.state_dict(), out / "best.pt")
        if plan.index == 1:
            state.stage1_best_val_acc = max(state.stage1_best_val_acc or 0.0, val["acc"])
        write_history(out / "history.csv", state.history)
        save_torch_atomic({"digest": cfg.digest(), "model": exp.model.state_dict(),
                           "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                           "scaler": scaler.state_dict() if scaler is not None else None,
                           "state": state.__dict__,
                           "wall_seconds": wall_before + time.perf_counter() - wall_start}, out / "last.pt")
        on_epoch()
        collapse = collapse_of(exp, plan, epoch, result)
        if collapse is not None:  # recorded in history.csv (the row above) and metrics.json (fit)
            raise collapse
        epochs.set_postfix(train_acc=f"{result.acc:.3f}", val_acc=f"{val['acc']:.3f}",
                           best=f"{state.best_val_acc:.3f}")


def load_resume(exp: Experiment) -> tuple[RunState, dict | None]:
    """RunState and the checkpoint from last.pt, or a fresh state. Refuses a checkpoint of other parameters."""
    path = exp.out_dir / "last.pt"
    if not path.exists():
        return RunState(), None
    ckpt = torch.load(path, weights_only=True, map_location=exp.device)
    if ckpt.get("digest") != exp.config.digest():
        raise ConfigError(f"{path} was written by a run with different parameters (digest {ckpt.get('digest')}, "
                          f"now {exp.config.digest()}); use another output folder or delete it")
    exp.model.load_state_dict(ckpt["model"])
    state = RunState(**ckpt["state"])
    return state, ckpt


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"{device.type}: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def train(config: Config, out_dir: str | os.PathLike, *, progress: bool = True) -> dict[str, Any]:
    """prepare + fit: one run in-process (the CLI's and the notebook's code path)."""
    return fit(prepare(config, out_dir, progress=progress))

