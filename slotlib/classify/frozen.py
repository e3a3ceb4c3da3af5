"""Heads on frozen features: the backbone's feature maps computed once, then a head trained on them.

This is stage 1 of a run (backbone frozen) without augmentation, so every head sees exactly the same
features and an epoch of a head costs seconds on a CPU: the quickest way to see whether a head learns,
how fast it starts, and how it compares with the linear head. ``benchmarks/frozen_heads.py`` and
``benchmarks/head_start.py`` use it, and so does the test that pins how fast SCOUTER starts.

Shape letters: M tiles, C backbone channels, h x w feature map, K classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config
from ..data.transforms import normalization
from .losses import classification_loss
from .model import SlotClassifier
from .steps import Objective, StagePlan, make_optimizer, train_step


@torch.no_grad()
def frozen_features(config: Config, images: np.ndarray, batch: int = 64) -> torch.Tensor:
    """The backbone's deepest feature map of uint8 tiles ``[M,H,W,3]`` resized to ``image_size``: ``[M,C,h,w]``.

    The backbone is the run's (``backbone``, its weights, ``output_stride``), in inference mode, as stage 1
    freezes it; the tiles are resized with antialiasing and normalised as the run's evaluation tiles are."""
    size = config.data.image_size
    backbone = SlotClassifier(config.model, 10, image_size=size, head_params=config.head_params).backbone.eval()
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) * 255 for v in normalization(config.model.backbone))
    tiles = torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2)                 # [M,3,H,W] uint8
    out = []
    for start in range(0, len(tiles), batch):
        x = F.interpolate(tiles[start:start + batch].float(), size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
        out.append(backbone((x - mean) / std)[-1])                                   # [b,C,h,w]
    return torch.cat(out)


class OnFeatures(nn.Module):
    """A classifier that takes the backbone's features instead of images (``SlotClassifier.from_features``)."""

    def __init__(self, model: SlotClassifier) -> None:
        super().__init__()
        self.model = model
        self.head = model.head

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.from_features(features)


@dataclass
class HeadRun:
    val_acc: list[float] = field(default_factory=list)      # after each epoch
    trace: list[dict[str, Any]] = field(default_factory=list)   # every trace_every steps (see trace_row)


def train_on_features(config: Config, feats: torch.Tensor, labels: torch.Tensor, train: torch.Tensor,
                      val: torch.Tensor, *, epochs: int = 1, trace_every: int = 0) -> HeadRun:
    """Stage 1 on frozen features: the head of ``config`` (and the projection before it) trained for ``epochs``
    with the run's optimiser (AdamW at ``stage1_lr``, cosine), gradient clipping and step function, batches of
    ``batch_size`` shuffled by ``seed``. ``trace_every`` > 0 records :func:`trace_row` every that many steps."""
    torch.manual_seed(config.train.seed)
    num_classes = int(labels.max()) + 1
    model = SlotClassifier(config.model, num_classes, pretrained=False, head_params=config.head_params)
    del model.backbone                     # the features are given: no backbone is run or trained
    model.backbone = nn.Identity()
    net = OnFeatures(model)
    params = model.head_parameters()
    plan = StagePlan(1, epochs, config.train.stage1_lr, True)
    optimizer, scheduler = make_optimizer(params, plan, config)
    objective = Objective(torch.device("cpu"), None, config.train.label_smoothing)
    gen = torch.Generator().manual_seed(config.train.seed)
    run, step = HeadRun(), 0
    bs = config.data.batch_size
    for _ in range(epochs):
        net.train()
        order = train[torch.randperm(len(train), generator=gen)]
        for start in range(0, len(order), bs):
            idx = order[start:start + bs]
            if trace_every and step % trace_every == 0:
                run.trace.append(trace_row(net, feats[idx], labels[idx], objective, step))
            train_step(net, feats[idx], labels[idx], optimizer, objective, grad_clip=config.train.grad_clip)
            step += 1
        scheduler.step()
        net.eval()
        with torch.no_grad():
            logits, _ = net(feats[val])
        run.val_acc.append((logits.argmax(1) == labels[val]).float().mean().item())
    return run


def trace_row(net: OnFeatures, feats: torch.Tensor, target: torch.Tensor, objective: Objective,
              step: int) -> dict[str, Any]:
    """What the head does on one batch, before the step: the loss and its parts, the attention's mean and
    the head's own diagnostics (SCOUTER: saturation), the spread of the class logits, and the gradient norm
    of each parameter group."""
    net.zero_grad(set_to_none=True)
    logits, attn = net(feats)
    loss, parts = classification_loss(logits, target, attn, net.head, objective.label_smoothing)
    loss.backward()
    groups: dict[str, float] = {}
    for name, p in net.model.named_parameters():
        if p.grad is not None:
            group = name.split(".")[1] if name.startswith("head.") else name.split(".")[0]
            groups[group] = groups.get(group, 0.0) + float(p.grad.pow(2).sum())
    a = attn.detach().float()
    row = {"step": step, "loss": float(loss), **{k: float(v) for k, v in parts.items()},
           "acc": float((logits.argmax(1) == target).float().mean()),
           "logit_std": float(logits.detach().float().std(1).mean()),
           "attn_mean": float(a.mean()), "attn_max": float(a.amax()),
           **{f"attn_{k}": float(v) for k, v in net.head.diagnostics(attn).items()},
           **{f"grad_{k}": v ** 0.5 for k, v in groups.items()}}
    net.zero_grad(set_to_none=True)
    return row
