"""One optimiser step, one epoch, one evaluation: the inner loops of a training stage.

Stage 1 trains the head on a frozen backbone (kept in eval mode, so BatchNorm statistics stay
put); stage 2 fine-tunes everything. An epoch in which the head learned nothing is a
:class:`~slotlib.classify.losses.HeadCollapseError`.

Nothing here takes the run's :class:`~slotlib.classify.experiment.Experiment`: a step takes the model,
the batch, the optimiser and an :class:`Objective` (device, autocast, loss), so ``slotlib bench``
times the very step the training loop runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import Config
from ..data.transforms import test_time_views
from ..heads import head_class
from ..runtime import NonFiniteLossError, autocast_dtype, channels_last, sync
from .losses import COLLAPSE_SPREAD, SATURATED_SHARE, HeadCollapseError, classification_loss, logit_spread
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
    ``batchnorm`` is ``config.train.stage2_batchnorm``, which the Config resolves: never 'auto'."""
    if batchnorm not in ("train", "frozen"):
        raise ValueError(f"batchnorm must be 'train' or 'frozen' (the Config resolves 'auto'), got {batchnorm!r}")
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


@dataclass(frozen=True)
class Objective:
    """How a batch goes through the model and is scored: the run's device, memory layout, autocast and loss."""

    device: torch.device
    amp_dtype: torch.dtype | None = None    # autocast dtype, None: fp32
    label_smoothing: float = 0.0
    mixup: Callable | None = None           # timm Mixup: (images, target) -> (mixed images, soft target), training only

    @classmethod
    def of(cls, config: Config, device: torch.device, num_classes: int | None = None) -> "Objective":
        t = config.train
        mixup = None
        if (t.mixup_alpha or t.cutmix_alpha) and num_classes:
            from timm.data import Mixup   # label smoothing moves into its soft targets

            mixup = Mixup(mixup_alpha=t.mixup_alpha, cutmix_alpha=t.cutmix_alpha, label_smoothing=t.label_smoothing,
                          num_classes=num_classes)
        return cls(device, autocast_dtype(t.precision, device), t.label_smoothing, mixup)

    def forward(self, model: Callable, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images on the device (a no-op for the fast pipeline), channels_last where the model is, through
        the model under autocast: (logits [B,K], attn [B,S,N])."""
        fmt = torch.channels_last if channels_last(self.device) else torch.preserve_format
        images = images.to(self.device, non_blocking=True, memory_format=fmt)
        dtype = self.amp_dtype or torch.float32
        with torch.autocast(self.device.type, dtype=dtype, enabled=self.amp_dtype is not None):
            return model(images)

    def __call__(self, model: Callable, images: torch.Tensor, target: torch.Tensor):
        """The training objective of a batch: (target on the device, logits, loss, attn). ``model.head``
        (a compiled model passes it through) adds its own loss terms."""
        target = target.to(self.device, non_blocking=True)
        logits, attn = self.forward(model, images)                      # [B,K], [B,S,N]
        loss, _ = classification_loss(logits, target, attn, model.head, self.label_smoothing)
        return target, logits, loss, attn

    def train_batch(self, model: Callable, images: torch.Tensor, target: torch.Tensor):
        """As a call, with Mixup/CutMix on the batch first when ``mixup`` is set (timm's needs an even batch:
        an odd one trains unmixed). The target returned stays the hard one, for the training accuracy."""
        if self.mixup is None or images.shape[0] % 2:
            return self(model, images, target)
        images = images.to(self.device, non_blocking=True).clone()   # timm mixes in place: never a cached batch
        target = target.to(self.device, non_blocking=True)
        images, soft = self.mixup(images, target)                    # soft [B,K], label smoothing included
        logits, attn = self.forward(model, images)
        loss, _ = classification_loss(logits, soft, attn, model.head)
        return target, logits, loss, attn


@dataclass
class Step:
    """What one optimiser step leaves behind, all on the device: reading it is what costs a sync."""

    loss: torch.Tensor       # [] the batch's mean loss
    correct: torch.Tensor    # [] right predictions in the batch
    n: int                   # images in the batch
    finite: torch.Tensor     # [] bool: loss (and gradient norm, when clipped without a scaler) finite
    spread: torch.Tensor     # [B] each sample's largest minus smallest class logit
    diagnostics: dict[str, torch.Tensor]  # the head's figures of this batch's attention (Head.diagnostics)


def train_step(model: Callable, images: torch.Tensor, target: torch.Tensor, optimizer: torch.optim.Optimizer,
               objective: Objective, *, grad_clip: float | None = None,
               scaler: torch.amp.GradScaler | None = None) -> Step:
    """Forward, backward, clip, optimiser step. No host sync (the training loop and the benchmark share it)."""
    target, logits, loss, attn = objective.train_batch(model, images, target)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    finite = torch.isfinite(loss.detach())
    if grad_clip is not None:
        trained = [p for group in optimizer.param_groups for p in group["params"]]
        norm = torch.nn.utils.clip_grad_norm_(trained, grad_clip)
        if scaler is None:  # the fp16 scaler skips non-finite steps itself
            finite = finite & torch.isfinite(norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return Step(loss.detach(), (logits.argmax(1) == target).sum(), target.shape[0], finite, logit_spread(logits),
                model.head.diagnostics(attn))


@dataclass
class EpochResult:
    loss: float
    acc: float
    seconds: float
    images: int
    spread_mean: float = float("nan")       # mean over samples of the largest minus the smallest logit
    spread_max: float = float("nan")        # its largest value in the epoch
    diagnostics: dict[str, tuple[float, float]] = field(default_factory=dict)  # the head's: (mean, min) per batch

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


# Batches between host syncs in the training loop: the progress bar and the finiteness check.
# Everything else stays on the device, so the GPU never waits for Python.
SYNC_EVERY = 25


def train_one_epoch(model: Callable, batches: Iterable, optimizer: torch.optim.Optimizer, objective: Objective,
                    plan: StagePlan, epoch: int, *, grad_clip: float | None = None,
                    scaler: torch.amp.GradScaler | None = None, progress: bool = True,
                    after_step: Callable[[], Any] | None = None) -> EpochResult:
    """One pass over ``batches``; ``after_step`` runs after each optimiser step (the weights' moving average)."""
    device = objective.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    first_bad = torch.zeros((), device=device, dtype=torch.long)  # first batch whose loss or gradient was not finite
    bad_loss = torch.zeros((), device=device)
    spread_sum = torch.zeros((), device=device)
    spread_max = torch.zeros((), device=device)
    diag_sum: dict[str, torch.Tensor] = {}
    diag_min: dict[str, torch.Tensor] = {}
    seen = batches_done = 0
    bar = tqdm(batches, desc=f"{plan.name} epoch {epoch}", leave=False, disable=not progress, unit="batch")
    sync(device)
    start = time.perf_counter()
    for batch, (images, target) in enumerate(bar, 1):
        step = train_step(model, images, target, optimizer, objective, grad_clip=grad_clip, scaler=scaler)
        if after_step is not None:
            after_step()
        new_bad = (first_bad == 0) & ~step.finite
        first_bad = torch.where(new_bad, batch, first_bad)
        bad_loss = torch.where(new_bad, step.loss.float(), bad_loss)
        loss_sum += step.loss * step.n
        correct += step.correct
        spread_sum += step.spread.sum()
        spread_max = torch.maximum(spread_max, step.spread.max())
        for name, value in step.diagnostics.items():
            diag_sum[name] = diag_sum.get(name, 0) + value
            diag_min[name] = torch.minimum(diag_min[name], value) if name in diag_min else value
        seen += step.n
        batches_done += 1
        if batch % SYNC_EVERY == 0 or batch == len(bar):
            # The only host sync of the loop. A non-finite step has already updated the weights, but
            # the run stops here, before any checkpoint is written: nothing is skipped or saved.
            if first_bad.item():
                raise NonFiniteLossError(f"loss or gradient norm became non-finite (loss {bad_loss.item()}) in "
                                         f"{plan.name}, epoch {epoch}, batch {first_bad.item()}; lower the "
                                         f"learning rate or set 'grad_clip'")
            if progress:
                elapsed = time.perf_counter() - start
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.3f}",
                                img_s=f"{seen / elapsed:.0f}")
    sync(device)
    seconds = time.perf_counter() - start
    diagnostics = {name: (float(diag_sum[name]) / batches_done, float(diag_min[name])) for name in diag_sum}
    return EpochResult(loss_sum.item() / seen, correct.item() / seen, seconds, seen, spread_sum.item() / seen,
                       spread_max.item(), diagnostics)


def collapse_of(config: Config, plan: StagePlan, epoch: int, result: EpochResult) -> HeadCollapseError | None:
    """The error for an epoch in which the head learned nothing (see slotlib.classify.losses), or None."""
    head = config.model.head
    saturated_min = result.diagnostics.get("saturated", (None, None))[1]
    if result.spread_max < COLLAPSE_SPREAD:
        kind = "equal_logits"
        what = (f"every class's logit was equal on every training batch (largest spread {result.spread_max:.1e}, "
                f"under {COLLAPSE_SPREAD:g})")
    elif saturated_min is not None and saturated_min > SATURATED_SHARE:
        kind = "saturated_attention"
        what = (f"its attention was saturated on every training batch (at least {saturated_min:.1%} of the "
                f"weights at 0 or 1, where they pass no gradient)")
    else:
        return None
    advice = head_class(head).collapse_advice(config.head_params, f"{plan.name}_lr")
    message = f"the {head} head collapsed in {plan.name}, epoch {epoch}: {what}; {advice}"
    return HeadCollapseError(message, {"stage": plan.index, "epoch": epoch, "kind": kind, "message": message})


@torch.no_grad()
def evaluate(model: SlotClassifier, batches: Iterable, objective: Objective, tta: str = "none",
             step_model: Callable | None = None) -> dict[str, Any]:
    """Loss, accuracy, the confusion matrix (rows: true class, columns: predicted) and each tile's
    predicted class in the batches' order (``predicted``, a numpy array).

    ``step_model``: what runs the batches (a compiled ``model``; default ``model`` itself).
    ``tta`` other than 'none': the prediction is the argmax of the class probabilities averaged over the
    views of :func:`~slotlib.data.transforms.test_time_views`; the loss stays the plain view's objective,
    and ``acc_plain`` is the plain view's accuracy from the same pass (what the views add)."""
    run = step_model or model
    device = objective.device
    was_training = model.training
    model.eval()
    k = model.num_classes
    confusion = torch.zeros(k, k, dtype=torch.long, device=device)
    loss_sum = torch.zeros((), device=device)
    plain_right = torch.zeros((), dtype=torch.long, device=device)
    predicted = []
    for images, target in batches:
        target, logits, loss, _ = objective(run, images, target)
        loss_sum += loss * target.shape[0]
        if tta != "none":
            plain_right += (logits.argmax(1) == target).sum()
            views = test_time_views(images, tta)
            probs = logits.float().softmax(1)
            for view in views[1:]:   # the first view is the batch itself, whose logits are above
                probs += objective.forward(run, view)[0].float().softmax(1)
            logits = probs / len(views)
        predicted.append(logits.argmax(1))
        confusion += torch.bincount(target * k + predicted[-1], minlength=k * k).view(k, k)
    model.train(was_training)
    confusion = confusion.cpu()
    n = int(confusion.sum())
    result = {"loss": loss_sum.item() / n, "acc": float(confusion.diag().sum()) / n, "confusion": confusion.tolist(),
              "predicted": torch.cat(predicted).cpu().numpy()}
    return result if tta == "none" else {**result, "acc_plain": plain_right.item() / n}
