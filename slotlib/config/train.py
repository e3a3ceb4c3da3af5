"""The classifier's training parameters: TrainConfig, one of the sections of :class:`slotlib.config.Config`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .fields import param, require

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
STAGE2_BATCHNORMS = ("auto", "train", "frozen")
TTAS = ("none", "flip", "dihedral")


@dataclass(frozen=True)
class TrainConfig:
    stage1_epochs: int = param(55, "epochs with the backbone frozen, training the head (0 skips stage 1)")
    stage1_lr: float = param(4e-4, "AdamW learning rate of stage 1")
    stage2_epochs: int = param(45, "epochs fine-tuning everything")
    stage2_lr: float = param(1e-4, "AdamW learning rate of stage 2")
    stage2_batchnorm: str = param("auto", "the backbone's BatchNorm in stage 2: 'train' (batch statistics, running "
                                          "averages updated, as the reference), 'frozen' (the pretrained running "
                                          "statistics, kept as in inference: the features do not jump when "
                                          "fine-tuning starts on small batches) or 'auto' (frozen when the backbone "
                                          "starts from pretrained weights, train when from scratch, whose running "
                                          "statistics were never estimated: docs/results.md, 'Slot heads')",
                                  unhashed_at="train")
    weight_decay: float = param(0.01, "AdamW weight decay")
    grad_clip: float | None = param(1.0, "clip the gradient norm to this; null turns clipping off")
    label_smoothing: float = param(0.0, "label smoothing of the cross-entropy")
    mixup_alpha: float = param(0.0, "Mixup in training (timm Mixup; Zhang et al., ICLR 2018): each batch is blended "
                                    "with itself reversed, images and labels, by a weight drawn from Beta(alpha, "
                                    "alpha); 0 turns it off", unhashed_at=0.0)
    cutmix_alpha: float = param(0.0, "CutMix in training (timm Mixup; Yun et al., ICCV 2019): a box of the reversed "
                                     "batch pasted in, labels mixed by its area, its share drawn from Beta(alpha, "
                                     "alpha); 0 turns it off; with mixup_alpha too, each batch takes one of the two",
                                unhashed_at=0.0)
    ema_decay: float | None = param(None, "a moving average of the weights (timm ModelEmaV3), updated each step with "
                                          "this decay (e.g. 0.999); validation, best.pt and the test use it; null "
                                          "turns it off", unhashed_at=None)
    tta: str = param("none", "test-time augmentation of the final evaluation of the best weights (the per-epoch "
                             "validation that picks them stays plain): 'none', 'flip' (2 views) or 'dihedral' (the 8 "
                             "symmetries of the square); class probabilities are averaged over the views",
                     unhashed_at="none")
    seed: int = param(0, "seed for python, numpy, torch and every generator")
    precision: str = param("auto", "'auto' (bf16 autocast on CUDA, fp32 elsewhere), 'fp32', 'bf16' or 'fp16'")
    compile: bool = param(False, "torch.compile the model")
    device: str = param("auto", "'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:N' or 'mps'")
    explain_tiles: int = param(200, "test tiles for the explanation metrics (area, deletion/insertion AUC); 0 skips them")
    heatmap_tiles: int = param(2, "test tiles per class whose per-class attention maps the run writes to maps.npz "
                                  "for the report's heatmaps; 0 writes none", unhashed_at=2)

    def __post_init__(self) -> None:
        for stage in ("stage1", "stage2"):
            epochs, lr = getattr(self, f"{stage}_epochs"), getattr(self, f"{stage}_lr")
            require(epochs >= 0, f"{stage}_epochs", epochs, "an integer >= 0")
            require(lr > 0, f"{stage}_lr", lr, "a number > 0")
        require(self.stage1_epochs + self.stage2_epochs >= 1, "stage2_epochs", self.stage2_epochs,
                 "an integer >= 1 when stage1_epochs is 0 (at least one epoch must run)")
        require(self.stage2_batchnorm in STAGE2_BATCHNORMS, "stage2_batchnorm", self.stage2_batchnorm,
                 f"one of {', '.join(STAGE2_BATCHNORMS)}")
        require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a number >= 0")
        require(self.grad_clip is None or self.grad_clip > 0, "grad_clip", self.grad_clip, "null or a number > 0")
        require(0.0 <= self.label_smoothing < 1.0, "label_smoothing", self.label_smoothing, "a number in [0, 1)")
        for name in ("mixup_alpha", "cutmix_alpha"):
            require(getattr(self, name) >= 0, name, getattr(self, name), "a number >= 0 (0 turns it off)")
        require(self.ema_decay is None or 0 < self.ema_decay < 1, "ema_decay", self.ema_decay,
                "null or a number in (0, 1), e.g. 0.999")
        require(self.tta in TTAS, "tta", self.tta, f"one of {', '.join(TTAS)}")
        require(self.precision in PRECISIONS, "precision", self.precision, f"one of {', '.join(PRECISIONS)}")
        require(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device) is not None, "device", self.device,
                 "'auto', 'cpu', 'mps', 'cuda' or 'cuda:N'")
        require(self.explain_tiles >= 0, "explain_tiles", self.explain_tiles, "an integer >= 0")
        require(self.heatmap_tiles >= 0, "heatmap_tiles", self.heatmap_tiles, "an integer >= 0")
