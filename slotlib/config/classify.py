"""The classifier's parameters (train.ipynb): DataConfig, ModelConfig, TrainConfig, and Config holding the three.

Every parameter has one flat name (the names a papermill ``parameters`` cell uses, see
``DESIGN.md``), a default, a type and a one-line help text, grouped into one frozen dataclass per
concern.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Mapping

from .fields import ConfigError, coerce, did_you_mean, param, require, type_hints, where_suffix

HEADS = ("scouter", "slot", "linear")


SCOUTER_NORMS = ("none", "scouter")


TOKEN_NORMS = ("auto", "group", "none")


SLOT_SCORES = ("per_class", "shared")


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
STAGE2_BATCHNORMS = ("auto", "train", "frozen")


PIPELINES = ("fast", "loader")


TTAS = ("none", "flip", "dihedral")


OUTPUT_STRIDES = (None, 32, 16, 8)


SLOTVIT_PREFIX = "slotvit_"   # slotlib's own ViT backbones (classify/vit_variants.py): no pretrained weights
MIN_TOKENS = 4   # tokens per side the auto output_stride keeps at least


@dataclass(frozen=True)
class DataConfig:
    data_root: str | None = param(None, "folder holding eurosat/2750 (default: $EUROSAT_ROOT, else ./data)")
    split: str = param("random", "'random', or a split file: CoOp JSON or torchgeo eurosat-{train,val,test}.txt")
    split_seed: int = param(42, "seed of the random split")
    split_fractions: tuple[float, float, float] = param((0.7, 0.15, 0.15), "train/val/test fractions of the random split")
    per_class_limit: int | None = param(None, "keep the first N tiles of each class, for quick runs; null keeps all")
    image_size: int = param(224, "input size in pixels: tiles are 64 px and are resized to this")
    eval_size: int | None = param(None, "input size in pixels for validation, test and the attention maps; null: "
                                        "image_size (a network trained on crops of a tile sees its objects larger "
                                        "than in the whole tile resized to image_size: README, 'Evaluation size')")
    batch_size: int = param(32, "images per optimiser step")
    augment: bool = param(True, "random resized crop, flip, rotation 15 deg, colour jitter 0.2 on training tiles")
    crop_scale: float = param(0.08, "smallest area fraction the random resized crop keeps (torchvision's and the "
                                 "reference's 0.08 leaves 18 x 18 px of a 64 px tile)")
    dihedral: bool = param(False, "also turn training tiles by a random multiple of 90 deg: with the flip, all 8 "
                               "symmetries of the square (overhead tiles have no up)")
    num_workers: int = param(0, "DataLoader worker processes; 0 loads in the training process")
    pipeline: str = param("fast", "'fast' (tiles on the training device, batched augmentation there) or 'loader' "
                               "(per-tile transforms in a DataLoader)")

    def __post_init__(self) -> None:
        fr = self.split_fractions
        require(all(f > 0 for f in fr) and math.isclose(sum(fr), 1.0, abs_tol=1e-6),
                 "split_fractions", fr, "three positive fractions that sum to 1")
        require(self.per_class_limit is None or self.per_class_limit >= 3,
                 "per_class_limit", self.per_class_limit, "null or an integer >= 3 (one tile each for train, val, test)")
        require(16 <= self.image_size <= 1024, "image_size", self.image_size, "an integer in [16, 1024]")
        require(self.eval_size is None or 16 <= self.eval_size <= 1024, "eval_size", self.eval_size,
                 "null (image_size) or an integer in [16, 1024]")
        require(0.0 < self.crop_scale <= 1.0, "crop_scale", self.crop_scale, "a number in (0, 1]")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        require(self.num_workers >= 0, "num_workers", self.num_workers, "an integer >= 0")
        require(self.pipeline in PIPELINES, "pipeline", self.pipeline, f"one of {', '.join(PIPELINES)}")
        require(self.split == "random" or bool(self.split.strip()), "split", self.split,
                 "'random' or the path of a split file")

    @property
    def eval_px(self) -> int:
        """The input size of validation, test and attention maps."""
        return self.image_size if self.eval_size is None else self.eval_size


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = param("mobilevitv2_075", "any timm model that supports features_only")
    pretrained: bool = param(True, "load the backbone's ImageNet weights from the timm hub")
    pretrained_file: str | None = param(None, "load backbone weights from this local file instead of the hub")
    feature_stride: int | None = param(None, "feature level to attend over, by its stride; null takes the deepest level")
    output_stride: int | None = param(None, "stride of the deepest features, by dilating the backbone's last stages "
                                         "(timm output_stride): 32, 16 or 8; null keeps the backbone's own unless "
                                         "that leaves fewer than 4 x 4 tokens, then the largest that does not "
                                         "(7 x 7 at 224 px; 4 x 4, not 2 x 2, at 64 px)")
    head: str = param("scouter", "'scouter' (SCOUTER, sigmoid), 'slot' (Locatello, softmax over slots) or 'linear'")
    hidden_dim: int = param(128, "channels after the 1x1 projection: the slot dimension D")
    slots_per_class: int = param(1, "slots per class; a class's logit sums its slots")
    slot_iters: int = param(5, "slot-attention iterations")
    dropout: float = param(0.1, "dropout on the projected feature tokens before the head")
    drop_path: float = param(0.0, "stochastic depth rate inside the backbone")
    scouter_sign: int = param(1, "+1 for SCOUTER+ (evidence for a class), -1 for SCOUTER- (evidence against)")
    area_power: float = param(1.0, "the area loss is mean(attention) ** area_power")
    scouter_norm: str = param("none", "SCOUTER's slot-token dot products: 'none' (scaled dot products, trains) or "
                                   "'scouter' (the authors': each slot's row over its signed sum, times the total; "
                                   "saturates the sigmoid and stalls)")
    scouter_logit_scale: float = param(16.0, "SCOUTER's class logit is this times the channel mean of its slot's "
                                             "attention-weighted tokens (the authors: 1, which learns slower than "
                                             "the linear head: README, 'Slot heads')")
    token_norm: str = param("auto", "after the 1x1 projection and ReLU: 'group' (GroupNorm over channels and "
                                 "positions), 'none', or 'auto' (none for scouter, whose logits read each token's "
                                 "channel mean, which GroupNorm centres; group otherwise)")
    slot_score: str = param("per_class", "slot head's class score: 'per_class' (slot k scored by class k's own linear "
                                      "layer) or 'shared' (one linear layer for every slot; stalls near chance)")

    def __post_init__(self) -> None:
        require(self.head in HEADS, "head", self.head, f"one of {', '.join(HEADS)}")
        require(self.hidden_dim >= 4 and self.hidden_dim % 4 == 0, "hidden_dim", self.hidden_dim,
                 "a positive multiple of 4 (the sine position encoding splits it into x/y and sin/cos)")
        require(self.slots_per_class >= 1, "slots_per_class", self.slots_per_class, "an integer >= 1")
        require(self.slot_iters >= 1, "slot_iters", self.slot_iters, "an integer >= 1")
        require(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "a number in [0, 1)")
        require(0.0 <= self.drop_path < 1.0, "drop_path", self.drop_path, "a number in [0, 1)")
        require(self.scouter_sign in (1, -1), "scouter_sign", self.scouter_sign, "1 (SCOUTER+) or -1 (SCOUTER-)")
        require(self.area_power > 0, "area_power", self.area_power, "a number > 0")
        require(self.scouter_norm in SCOUTER_NORMS, "scouter_norm", self.scouter_norm,
                 f"one of {', '.join(SCOUTER_NORMS)}")
        require(self.scouter_logit_scale > 0, "scouter_logit_scale", self.scouter_logit_scale, "a number > 0")
        require(self.token_norm in TOKEN_NORMS, "token_norm", self.token_norm, f"one of {', '.join(TOKEN_NORMS)}")
        require(self.slot_score in SLOT_SCORES, "slot_score", self.slot_score, f"one of {', '.join(SLOT_SCORES)}")
        require(self.feature_stride is None or self.feature_stride >= 1, "feature_stride", self.feature_stride,
                 "null or a stride the backbone's feature_info offers (e.g. 8, 16, 32)")
        require(self.output_stride in OUTPUT_STRIDES, "output_stride", self.output_stride,
                 "null (auto), 32, 16 or 8")
        require(self.output_stride is None or self.feature_stride is None, "output_stride", self.output_stride,
                 "null when feature_stride is set (pick a shallower level or a dilated deepest one, not both)")
        require(bool(self.backbone.strip()), "backbone", self.backbone, "a timm model name")
        require(not (self.backbone.startswith(SLOTVIT_PREFIX) and self.starts_pretrained),
                "pretrained", self.pretrained, f"false for '{self.backbone}' (the {SLOTVIT_PREFIX}* backbones have "
                "no pretrained weights: they train from scratch)")

    @property
    def starts_pretrained(self) -> bool:
        """Whether the backbone starts from pretrained weights (the hub's, or pretrained_file's)."""
        return self.pretrained or self.pretrained_file is not None


@dataclass(frozen=True)
class TrainConfig:
    lambda_area: float = param(0.05, "weight of SCOUTER's area loss (scouter head only)")
    stage1_epochs: int = param(55, "epochs with the backbone frozen, training the head (0 skips stage 1)")
    stage1_lr: float = param(4e-4, "AdamW learning rate of stage 1")
    stage2_epochs: int = param(45, "epochs fine-tuning everything")
    stage2_lr: float = param(1e-4, "AdamW learning rate of stage 2")
    stage2_batchnorm: str = param("auto", "the backbone's BatchNorm in stage 2: 'train' (batch statistics, running "
                                          "averages updated, as the reference), 'frozen' (the pretrained running "
                                          "statistics, kept as in inference: the features do not jump when "
                                          "fine-tuning starts on small batches) or 'auto' (frozen when the backbone "
                                          "starts from pretrained weights, train when from scratch, whose running "
                                          "statistics were never estimated: README, 'Slot heads')")
    weight_decay: float = param(0.01, "AdamW weight decay")
    grad_clip: float | None = param(1.0, "clip the gradient norm to this; null turns clipping off")
    label_smoothing: float = param(0.0, "label smoothing of the cross-entropy")
    tta: str = param("none", "test-time augmentation of the final evaluation of the best weights (the per-epoch "
                             "validation that picks them stays plain): 'none', 'flip' (2 views) or 'dihedral' (the 8 "
                             "symmetries of the square); class probabilities are averaged over the views")
    seed: int = param(0, "seed for python, numpy, torch and every generator")
    precision: str = param("auto", "'auto' (bf16 autocast on CUDA, fp32 elsewhere), 'fp32', 'bf16' or 'fp16'")
    compile: bool = param(False, "torch.compile the model")
    device: str = param("auto", "'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:N' or 'mps'")
    explain_tiles: int = param(200, "test tiles for the explanation metrics (area, deletion/insertion AUC); 0 skips them")
    heatmap_tiles: int = param(2, "test tiles per class whose per-class attention maps the run writes to maps.npz "
                                  "for the report's heatmaps; 0 writes none")

    def __post_init__(self) -> None:
        require(self.lambda_area >= 0, "lambda_area", self.lambda_area, "a number >= 0")
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
        require(self.tta in TTAS, "tta", self.tta, f"one of {', '.join(TTAS)}")
        require(self.precision in PRECISIONS, "precision", self.precision, f"one of {', '.join(PRECISIONS)}")
        require(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device) is not None, "device", self.device,
                 "'auto', 'cpu', 'mps', 'cuda' or 'cuda:N'")
        require(self.explain_tiles >= 0, "explain_tiles", self.explain_tiles, "an integer >= 0")
        require(self.heatmap_tiles >= 0, "heatmap_tiles", self.heatmap_tiles, "an integer >= 0")


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


def _fields() -> dict[str, tuple[str, dataclasses.Field]]:
    """Flat name -> (section, dataclass field), in declaration order."""
    out: dict[str, tuple[str, dataclasses.Field]] = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            out[f.name] = (section, f)
    return out


FIELDS = _fields()


DEFAULTS: dict[str, Any] = {name: f.default for name, (_, f) in FIELDS.items()}


HELP: dict[str, str] = {name: f.metadata["help"] for name, (_, f) in FIELDS.items()}


# Parameters that say where things are on this machine, not what is computed: left out of the
# cell hash so the same grid gives the same ids everywhere.
LOCAL_ONLY = ("data_root", "num_workers")


# Parameters added after cell ids were in use, with the value that computes what was computed
# before they existed: at that value they stay out of the hash, so adding a parameter does not
# orphan the cell folders of a grid already run (or half run). Any other value is hashed.
HASH_NEUTRAL: dict[str, Any] = {"crop_scale": 0.08, "dihedral": False, "heatmap_tiles": 2, "stage2_batchnorm": "train",
                                 "scouter_logit_scale": 1.0, "eval_size": None, "tta": "none"}


# Parameters that only one head reads, by that head: for the other heads they stay out of the hash,
# so changing such a parameter's default does not rename (orphan) the cells of heads it never touched.
ONE_HEAD_ONLY: dict[str, str] = {"scouter_logit_scale": "scouter"}


@dataclass(frozen=True)
class Config:
    """The resolved configuration of one run."""

    data: DataConfig
    model: ModelConfig
    train: TrainConfig

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None = None, *, where: str = "") -> "Config":
        """Validate flat ``params`` (overrides of the defaults) into a Config."""
        params = dict(params or {})
        unknown = sorted(set(params) - set(FIELDS))
        if unknown:
            raise ConfigError(f"unknown parameter '{unknown[0]}'{where_suffix(where)}{did_you_mean(unknown[0], FIELDS)}; "
                              f"valid names: {', '.join(FIELDS)}")
        merged = {**DEFAULTS, **params}
        if merged["data_root"] is None:
            merged["data_root"] = os.environ.get("EUROSAT_ROOT") or "./data"
        hints = {name: type_hints(SECTIONS[section])[name] for name, (section, _) in FIELDS.items()}
        values = {name: coerce(name, merged[name], hints[name], where) for name in FIELDS}
        try:
            return cls(**{section: SECTIONS[section](**{n: values[n] for n, (s, _) in FIELDS.items() if s == section})
                          for section in SECTIONS})
        except ConfigError as err:
            raise ConfigError(f"{err}{where_suffix(where)}" if where else str(err)) from None

    @property
    def stage2_batchnorm(self) -> str:
        """'train' or 'frozen': the train section's stage2_batchnorm with 'auto' resolved for the backbone."""
        choice = self.train.stage2_batchnorm
        if choice != "auto":
            return choice
        return "frozen" if self.model.starts_pretrained else "train"

    def to_params(self) -> dict[str, Any]:
        """Flat name -> value, YAML/JSON friendly (tuples become lists)."""
        out: dict[str, Any] = {}
        for section in SECTIONS:
            for name, value in dataclasses.asdict(getattr(self, section)).items():
                out[name] = list(value) if isinstance(value, tuple) else value
        return out

    def digest(self) -> str:
        """Short hash of every parameter that changes what is computed."""
        head = self.model.head
        # 'auto' is hashed as what it resolves to: the cells it computes as 'train' or 'frozen' did keep their ids
        params = {k: v for k, v in {**self.to_params(), "stage2_batchnorm": self.stage2_batchnorm}.items()
                  if k not in LOCAL_ONLY and not (k in HASH_NEUTRAL and v == HASH_NEUTRAL[k])
                  and ONE_HEAD_ONLY.get(k, head) == head}
        return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
