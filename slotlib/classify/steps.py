"""One optimiser step, one epoch, one evaluation: the inner loops of a training stage.

Stage 1 trains the head on a frozen backbone (kept in eval mode, so BatchNorm statistics stay
put); stage 2 fine-tunes everything. An epoch in which the head learned nothing is a
:class:`~slotlib.classify.losses.HeadCollapseError`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import Config
from ..data.transforms import test_time_views
from ..runtime import NonFiniteLossError, autocast_dtype, sync
from .experiment import Experiment, channels_last
from .losses import (
    COLLAPSE_SPREAD,
    SATURATED_SHARE,
    SATURATION_MARGIN,
    HeadCollapseError,
    logit_spread,
    saturated_share,
    slot_classification_loss,
)
from .model import SlotClassifier


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


def train_mode(model: SlotClassifier, freeze_backbone: bool, batchnorm: str = "train") -> None:
    """Training mode for a stage; the frozen backbone (stage 1) stays in inference mode, and with
    ``batchnorm='frozen'`` so do the backbone's BatchNorm layers when it is fine-tuned (stage 2).
    ``batchnorm`` is the resolved choice (``Config.stage2_batchnorm``), never 'auto'."""
    if batchnorm not in ("train", "frozen"):
        raise ValueError(f"batchnorm must be 'train' or 'frozen' (Config.stage2_batchnorm resolves 'auto'), "
                         f"got {batchnorm!r}")
    model.train()
    if freeze_backbone:
        model.backbone.eval()  # frozen: BatchNorm running statistics and dropout stay as in inference
    elif batchnorm == "frozen":
        for module in model.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()  # normalise with the ImageNet running statistics and leave them as they are


def make_optimizer(params: list[nn.Parameter], plan: StagePlan, config: Config):
    """AdamW (the fused kernel where every parameter is on a CPU or CUDA device: one pass over the
    weights instead of a loop of small ops) and the stage's cosine schedule."""
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") for p in params)
    optimizer = torch.optim.AdamW(params, lr=plan.lr, weight_decay=config.train.weight_decay, fused=fused or None)
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


def forward(exp: Experiment, model: Callable, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images on the run's device (a no-op for the fast pipeline), channels_last where the model is, through
    the model under the run's autocast: (logits, attn)."""
    device = exp.device
    fmt = torch.channels_last if channels_last(device) else torch.preserve_format
    images = images.to(device, non_blocking=True, memory_format=fmt)
    dtype = autocast_dtype(exp.config.train.precision, device)
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        return model(images)                                            # [B,K], [B,S,N]


def forward_loss(exp: Experiment, model: Callable, images: torch.Tensor, target: torch.Tensor):
    """Batch to the device, forward under the run's autocast, the training objective: (target, logits, loss, attn)."""
    cfg = exp.config
    target = target.to(exp.device, non_blocking=True)
    logits, attn = forward(exp, model, images)                          # [B,K], [B,S,N]
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
    """The error for an epoch in which the head learned nothing (see slotlib.classify.losses), or None."""
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


@torch.no_grad()
def evaluate(exp: Experiment, model: Callable, split: str, tta: str = "none") -> dict[str, Any]:
    """Loss, accuracy and the confusion matrix (rows: true class, columns: predicted).

    ``tta`` other than 'none': the prediction is the argmax of the class probabilities averaged over the
    views of :func:`~slotlib.data.transforms.test_time_views`; the loss stays the plain view's objective,
    and ``acc_plain`` is the plain view's accuracy from the same pass (what the views add)."""
    device = exp.device
    was_training = exp.model.training
    exp.model.eval()
    k = len(exp.class_names)
    confusion = torch.zeros(k, k, dtype=torch.long, device=device)
    loss_sum = torch.zeros((), device=device)
    plain_right = torch.zeros((), dtype=torch.long, device=device)
    for images, target in exp.loaders[split]:
        target, logits, loss, _ = forward_loss(exp, model, images, target)
        loss_sum += loss * target.shape[0]
        if tta != "none":
            plain_right += (logits.argmax(1) == target).sum()
            views = test_time_views(images, tta)
            probs = logits.float().softmax(1)
            for view in views[1:]:   # the first view is the batch itself, whose logits are above
                probs += forward(exp, model, view)[0].float().softmax(1)
            logits = probs / len(views)
        confusion += torch.bincount(target * k + logits.argmax(1), minlength=k * k).view(k, k)
    exp.model.train(was_training)
    confusion = confusion.cpu()
    n = int(confusion.sum())
    result = {"loss": loss_sum.item() / n, "acc": float(confusion.diag().sum()) / n, "confusion": confusion.tolist()}
    return result if tta == "none" else {**result, "acc_plain": plain_right.item() / n}
