"""Parameters: defaults, validation, and the resolved configuration.

Every parameter has one flat name (the names a papermill ``parameters`` cell uses, see
``DESIGN.md``), a default, a type and a one-line help text. They are grouped into one frozen
dataclass per concern (data, model, train); :class:`Config` holds the three.

A parameters file has these keys::

    base:  {name: value, ...}        # overrides of the defaults, shared by every cell
    grid:  {name: [v1, v2], ...}     # Cartesian product: one cell per combination
    # or a list of such mappings: the cells of each product, one after the other
    # (a baseline and a few one-at-a-time changes without their cross product)
    seeds: [0, 1, 2]                 # optional: every cell repeated with these seeds
    notebook: object_discovery.ipynb # optional: the notebook a grid runs (default train.ipynb)

The notebook decides the parameter set: :class:`Config` for train.ipynb (the classifier),
:class:`DiscoveryConfig` for object_discovery.ipynb (the slot-attention autoencoder).

Everything is validated before anything runs: unknown names, wrong types, empty lists and
impossible values raise :class:`ConfigError` with one sentence naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

HEADS = ("scouter", "slot", "linear")
SCOUTER_NORMS = ("none", "scouter")
TOKEN_NORMS = ("auto", "group", "none")
SLOT_SCORES = ("per_class", "shared")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PIPELINES = ("fast", "loader")
OUTPUT_STRIDES = (None, 32, 16, 8)
MIN_TOKENS = 4   # tokens per side the auto output_stride keeps at least


class ConfigError(ValueError):
    """Bad parameters: the message is one sentence naming the key and what is valid."""


def _p(default: Any, help: str) -> Any:
    """A dataclass field carrying its one-line help text."""
    if isinstance(default, (list, dict)):
        raise TypeError("mutable defaults are not allowed")
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class DataConfig:
    data_root: str | None = _p(None, "folder holding eurosat/2750 (default: $EUROSAT_ROOT, else ./data)")
    split: str = _p("random", "'random', or a split file: CoOp JSON or torchgeo eurosat-{train,val,test}.txt")
    split_seed: int = _p(42, "seed of the random split")
    split_fractions: tuple[float, float, float] = _p((0.7, 0.15, 0.15), "train/val/test fractions of the random split")
    per_class_limit: int | None = _p(None, "keep the first N tiles of each class, for quick runs; null keeps all")
    image_size: int = _p(224, "input size in pixels: tiles are 64 px and are resized to this")
    batch_size: int = _p(32, "images per optimiser step")
    augment: bool = _p(True, "random resized crop, flip, rotation 15 deg, colour jitter 0.2 on training tiles")
    crop_scale: float = _p(0.08, "smallest area fraction the random resized crop keeps (torchvision's and the "
                                 "reference's 0.08 leaves 18 x 18 px of a 64 px tile)")
    dihedral: bool = _p(False, "also turn training tiles by a random multiple of 90 deg: with the flip, all 8 "
                               "symmetries of the square (overhead tiles have no up)")
    num_workers: int = _p(0, "DataLoader worker processes; 0 loads in the training process")
    pipeline: str = _p("fast", "'fast' (tiles on the training device, batched augmentation there) or 'loader' "
                               "(per-tile transforms in a DataLoader)")

    def __post_init__(self) -> None:
        fr = self.split_fractions
        _require(all(f > 0 for f in fr) and math.isclose(sum(fr), 1.0, abs_tol=1e-6),
                 "split_fractions", fr, "three positive fractions that sum to 1")
        _require(self.per_class_limit is None or self.per_class_limit >= 3,
                 "per_class_limit", self.per_class_limit, "null or an integer >= 3 (one tile each for train, val, test)")
        _require(16 <= self.image_size <= 1024, "image_size", self.image_size, "an integer in [16, 1024]")
        _require(0.0 < self.crop_scale <= 1.0, "crop_scale", self.crop_scale, "a number in (0, 1]")
        _require(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        _require(self.num_workers >= 0, "num_workers", self.num_workers, "an integer >= 0")
        _require(self.pipeline in PIPELINES, "pipeline", self.pipeline, f"one of {', '.join(PIPELINES)}")
        _require(self.split == "random" or bool(self.split.strip()), "split", self.split,
                 "'random' or the path of a split file")


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = _p("mobilevitv2_075", "any timm model that supports features_only")
    pretrained: bool = _p(True, "load the backbone's ImageNet weights from the timm hub")
    pretrained_file: str | None = _p(None, "load backbone weights from this local file instead of the hub")
    feature_stride: int | None = _p(None, "feature level to attend over, by its stride; null takes the deepest level")
    output_stride: int | None = _p(None, "stride of the deepest features, by dilating the backbone's last stages "
                                         "(timm output_stride): 32, 16 or 8; null keeps the backbone's own unless "
                                         "that leaves fewer than 4 x 4 tokens, then the largest that does not "
                                         "(7 x 7 at 224 px; 4 x 4, not 2 x 2, at 64 px)")
    head: str = _p("scouter", "'scouter' (SCOUTER, sigmoid), 'slot' (Locatello, softmax over slots) or 'linear'")
    hidden_dim: int = _p(128, "channels after the 1x1 projection: the slot dimension D")
    slots_per_class: int = _p(1, "slots per class; a class's logit sums its slots")
    slot_iters: int = _p(5, "slot-attention iterations")
    dropout: float = _p(0.1, "dropout on the projected feature tokens before the head")
    drop_path: float = _p(0.0, "stochastic depth rate inside the backbone")
    scouter_sign: int = _p(1, "+1 for SCOUTER+ (evidence for a class), -1 for SCOUTER- (evidence against)")
    area_power: float = _p(1.0, "the area loss is mean(attention) ** area_power")
    scouter_norm: str = _p("none", "SCOUTER's slot-token dot products: 'none' (scaled dot products, trains) or "
                                   "'scouter' (the authors': each slot's row over its signed sum, times the total; "
                                   "saturates the sigmoid and stalls)")
    token_norm: str = _p("auto", "after the 1x1 projection and ReLU: 'group' (GroupNorm over channels and "
                                 "positions), 'none', or 'auto' (none for scouter, whose logits read each token's "
                                 "channel mean, which GroupNorm centres; group otherwise)")
    slot_score: str = _p("per_class", "slot head's class score: 'per_class' (slot k scored by class k's own linear "
                                      "layer) or 'shared' (one linear layer for every slot; stalls near chance)")

    def __post_init__(self) -> None:
        _require(self.head in HEADS, "head", self.head, f"one of {', '.join(HEADS)}")
        _require(self.hidden_dim >= 4 and self.hidden_dim % 4 == 0, "hidden_dim", self.hidden_dim,
                 "a positive multiple of 4 (the sine position encoding splits it into x/y and sin/cos)")
        _require(self.slots_per_class >= 1, "slots_per_class", self.slots_per_class, "an integer >= 1")
        _require(self.slot_iters >= 1, "slot_iters", self.slot_iters, "an integer >= 1")
        _require(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "a number in [0, 1)")
        _require(0.0 <= self.drop_path < 1.0, "drop_path", self.drop_path, "a number in [0, 1)")
        _require(self.scouter_sign in (1, -1), "scouter_sign", self.scouter_sign, "1 (SCOUTER+) or -1 (SCOUTER-)")
        _require(self.area_power > 0, "area_power", self.area_power, "a number > 0")
        _require(self.scouter_norm in SCOUTER_NORMS, "scouter_norm", self.scouter_norm,
                 f"one of {', '.join(SCOUTER_NORMS)}")
        _require(self.token_norm in TOKEN_NORMS, "token_norm", self.token_norm, f"one of {', '.join(TOKEN_NORMS)}")
        _require(self.slot_score in SLOT_SCORES, "slot_score", self.slot_score, f"one of {', '.join(SLOT_SCORES)}")
        _require(self.feature_stride is None or self.feature_stride >= 1, "feature_stride", self.feature_stride,
                 "null or a stride the backbone's feature_info offers (e.g. 8, 16, 32)")
        _require(self.output_stride in OUTPUT_STRIDES, "output_stride", self.output_stride,
                 "null (auto), 32, 16 or 8")
        _require(self.output_stride is None or self.feature_stride is None, "output_stride", self.output_stride,
                 "null when feature_stride is set (pick a shallower level or a dilated deepest one, not both)")
        _require(bool(self.backbone.strip()), "backbone", self.backbone, "a timm model name")


@dataclass(frozen=True)
class TrainConfig:
    lambda_area: float = _p(0.05, "weight of SCOUTER's area loss (scouter head only)")
    stage1_epochs: int = _p(55, "epochs with the backbone frozen, training the head (0 skips stage 1)")
    stage1_lr: float = _p(4e-4, "AdamW learning rate of stage 1")
    stage2_epochs: int = _p(45, "epochs fine-tuning everything")
    stage2_lr: float = _p(1e-4, "AdamW learning rate of stage 2")
    weight_decay: float = _p(0.01, "AdamW weight decay")
    grad_clip: float | None = _p(1.0, "clip the gradient norm to this; null turns clipping off")
    label_smoothing: float = _p(0.0, "label smoothing of the cross-entropy")
    seed: int = _p(0, "seed for python, numpy, torch and every generator")
    precision: str = _p("auto", "'auto' (bf16 autocast on CUDA, fp32 elsewhere), 'fp32', 'bf16' or 'fp16'")
    compile: bool = _p(False, "torch.compile the model")
    device: str = _p("auto", "'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:N' or 'mps'")
    explain_tiles: int = _p(200, "test tiles for the explanation metrics (area, deletion/insertion AUC); 0 skips them")

    def __post_init__(self) -> None:
        _require(self.lambda_area >= 0, "lambda_area", self.lambda_area, "a number >= 0")
        for stage in ("stage1", "stage2"):
            epochs, lr = getattr(self, f"{stage}_epochs"), getattr(self, f"{stage}_lr")
            _require(epochs >= 0, f"{stage}_epochs", epochs, "an integer >= 0")
            _require(lr > 0, f"{stage}_lr", lr, "a number > 0")
        _require(self.stage1_epochs + self.stage2_epochs >= 1, "stage2_epochs", self.stage2_epochs,
                 "an integer >= 1 when stage1_epochs is 0 (at least one epoch must run)")
        _require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a number >= 0")
        _require(self.grad_clip is None or self.grad_clip > 0, "grad_clip", self.grad_clip, "null or a number > 0")
        _require(0.0 <= self.label_smoothing < 1.0, "label_smoothing", self.label_smoothing, "a number in [0, 1)")
        _require(self.precision in PRECISIONS, "precision", self.precision, f"one of {', '.join(PRECISIONS)}")
        _require(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device) is not None, "device", self.device,
                 "'auto', 'cpu', 'mps', 'cuda' or 'cuda:N'")
        _require(self.explain_tiles >= 0, "explain_tiles", self.explain_tiles, "an integer >= 0")


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
HASH_NEUTRAL: dict[str, Any] = {"crop_scale": 0.08, "dihedral": False}


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
            raise ConfigError(f"unknown parameter '{unknown[0]}'{_where(where)}{_did_you_mean(unknown[0])}; "
                              f"valid names: {', '.join(FIELDS)}")
        merged = {**DEFAULTS, **params}
        if merged["data_root"] is None:
            merged["data_root"] = os.environ.get("EUROSAT_ROOT") or "./data"
        hints = {name: _hints(SECTIONS[section])[name] for name, (section, _) in FIELDS.items()}
        values = {name: _coerce(name, merged[name], hints[name], where) for name in FIELDS}
        try:
            return cls(**{section: SECTIONS[section](**{n: values[n] for n, (s, _) in FIELDS.items() if s == section})
                          for section in SECTIONS})
        except ConfigError as err:
            raise ConfigError(f"{err}{_where(where)}" if where else str(err)) from None

    def to_params(self) -> dict[str, Any]:
        """Flat name -> value, YAML/JSON friendly (tuples become lists)."""
        out: dict[str, Any] = {}
        for section in SECTIONS:
            for name, value in dataclasses.asdict(getattr(self, section)).items():
                out[name] = list(value) if isinstance(value, tuple) else value
        return out

    def digest(self) -> str:
        """Short hash of every parameter that changes what is computed."""
        params = {k: v for k, v in self.to_params().items()
                  if k not in LOCAL_ONLY and not (k in HASH_NEUTRAL and v == HASH_NEUTRAL[k])}
        return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]


# --------------------------------------------------------------------------- object discovery

DISCOVERY_SIZES = (32, 64)
DISCOVERY_BACKGROUNDS = ("grey", "black")


@dataclass(frozen=True)
class DiscoveryConfig:
    """The slot-attention autoencoder on synthetic scenes (notebooks/object_discovery.ipynb): one concern, one class."""

    # scenes (slotlib.scenes)
    image_size: int = _p(32, "scene size in pixels: 32 or 64")
    background: str = _p("grey", "'grey' (slightly noisy grey) or 'black' (plain; shows the collapse to the background)")
    scene_seed: int = _p(0, "seed of the scene dataset; training, validation and test scenes are disjoint index ranges")
    train_scenes: int = _p(20000, "training scenes, cycled through in a fresh order every pass")
    val_scenes: int = _p(200, "validation scenes for FG-ARI during training")
    test_scenes: int = _p(500, "held-out test scenes for the final FG-ARI and MSE")
    # model (slotlib.discovery.SlotAutoEncoder)
    num_slots: int = _p(6, "slots: at least the most objects in a scene (5) plus one for the background")
    slot_dim: int = _p(64, "slot and token dimension D")
    mlp_hidden: int = _p(128, "hidden width of the slot-attention MLP")
    slot_iters: int = _p(3, "slot-attention iterations in training")
    eval_iters: int = _p(0, "slot-attention iterations for validation, test and figures; 0: slot_iters. With "
                         "bilevel the iteration is trained as a fixed point, so more iterations refine the masks")
    eval_masks: str = _p("alpha", "the masks FG-ARI and the segmentation figures read: 'alpha' (the decoder's masks, "
                         "the paper's readout) or 'posterior' (those masks given each pixel's colour under the "
                         "decoder's mixture); metrics.json always holds both")
    slot_init: str = _p("per_slot", "initial slots: 'per_slot' (a learned Gaussian per slot, BO-QSA) or 'shared' "
                        "(one Gaussian, the paper's); fresh samples every pass either way")
    bilevel: bool = _p(True, "backpropagate through the last slot iteration only, straight through to the "
                       "initial slots (BO-QSA); false: through every iteration, as in the paper")
    enc_channels: int = _p(32, "channels of the 4 encoder convs (5x5)")
    enc_stride: int = _p(2, "stride of the first encoder conv: 1 attends over every pixel, 2 over a 4x smaller grid")
    enc_kernel: int = _p(5, "kernel size of the encoder convs (odd); small keeps tokens close to their pixel colour")
    dec_channels: int = _p(16, "channels of the spatial-broadcast decoder")
    dec_broadcast: int = _p(8, "grid the decoder broadcasts each slot on; stride-2 transposed convs reach the image size")
    # training
    batch_size: int = _p(32, "scenes per optimiser step")
    steps: int = _p(5500, "optimiser steps")
    lr: float = _p(1e-3, "Adam peak learning rate")
    warmup_steps: int = _p(300, "linear learning-rate warm-up from 0 to lr")
    decay_steps: int = _p(5000, "the learning rate halves every decay_steps (exponential decay, as in the paper)")
    grad_clip: float | None = _p(1.0, "clip the gradient norm to this; null turns clipping off")
    eval_every: int = _p(500, "steps between FG-ARI evaluations on the validation scenes; 0 only at the end")
    black_steps: int = _p(0, "notebook comparison: also train the same model this many steps on black scenes; 0 skips")
    seed: int = _p(0, "seed of the model initialisation, slot sampling and batch order")
    device: str = _p("auto", "'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:N' or 'mps'")
    num_threads: int = _p(0, "torch CPU threads; 0 keeps torch's default")

    def __post_init__(self) -> None:
        _require(self.image_size in DISCOVERY_SIZES, "image_size", self.image_size,
                 f"one of {', '.join(map(str, DISCOVERY_SIZES))} for object discovery")
        _require(self.background in DISCOVERY_BACKGROUNDS, "background", self.background,
                 f"one of {', '.join(DISCOVERY_BACKGROUNDS)}")
        for key in ("train_scenes", "test_scenes", "num_slots", "slot_dim", "mlp_hidden", "slot_iters",
                    "enc_channels", "dec_channels", "batch_size", "steps", "decay_steps"):
            _require(getattr(self, key) >= 1, key, getattr(self, key), "an integer >= 1")
        for key in ("val_scenes", "warmup_steps", "eval_every", "black_steps", "num_threads", "eval_iters"):
            _require(getattr(self, key) >= 0, key, getattr(self, key), "an integer >= 0")
        _require(self.eval_masks in ("alpha", "posterior"), "eval_masks", self.eval_masks, "'alpha' or 'posterior'")
        _require(self.slot_init in ("per_slot", "shared"), "slot_init", self.slot_init, "'per_slot' or 'shared'")
        _require(self.enc_stride in (1, 2), "enc_stride", self.enc_stride, "1 or 2")
        _require(self.enc_kernel in (1, 3, 5, 7), "enc_kernel", self.enc_kernel, "1, 3, 5 or 7")
        sides = [self.image_size >> k for k in range(6) if self.image_size >> k >= 4]
        _require(self.dec_broadcast in sides, "dec_broadcast", self.dec_broadcast,
                 f"the image size divided by a power of two, one of {', '.join(map(str, sides))}")
        _require(self.lr > 0, "lr", self.lr, "a number > 0")
        _require(self.grad_clip is None or self.grad_clip > 0, "grad_clip", self.grad_clip, "null or a number > 0")
        _require(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device) is not None, "device", self.device,
                 "'auto', 'cpu', 'mps', 'cuda' or 'cuda:N'")

    @classmethod
    def fields(cls) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls)}

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None = None, *, where: str = "") -> "DiscoveryConfig":
        """Validate flat ``params`` (overrides of the defaults) into a DiscoveryConfig."""
        params, names = dict(params or {}), cls.fields()
        unknown = sorted(set(params) - set(names))
        if unknown:
            raise ConfigError(f"unknown parameter '{unknown[0]}'{_where(where)}{_did_you_mean(unknown[0], names)}; "
                              f"valid names: {', '.join(names)}")
        hints = _hints(cls)
        values = {n: _coerce(n, params.get(n, f.default), hints[n], where) for n, f in names.items()}
        try:
            return cls(**values)
        except ConfigError as err:
            raise ConfigError(f"{err}{_where(where)}" if where else str(err)) from None

    def to_params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Short hash of every parameter that changes what is computed (not the CPU thread count)."""
        params = {k: v for k, v in self.to_params().items() if k not in DISCOVERY_LOCAL_ONLY}
        return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]


DISCOVERY_LOCAL_ONLY = ("num_threads",)


def _did_you_mean(name: str, names: Any = None) -> str:
    close = difflib.get_close_matches(name, names if names is not None else FIELDS, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _where(where: str) -> str:
    return f" (in {where})" if where else ""


def _require(ok: bool, key: str, value: Any, valid: str) -> None:
    if not ok:
        raise ConfigError(f"parameter '{key}' must be {valid}, got {value!r}")


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _type_name(hint: Any) -> str:
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if typing.get_origin(hint) is tuple:
        return f"a list of {len(args)} numbers"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}[hint]


# PyYAML follows YAML 1.1, which reads exponent notation without a dot (1e-3) as text.
_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(name: str, value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against the field's type hint; ints, and text such as 1e-3, are accepted for floats."""
    args = typing.get_args(hint)
    if isinstance(value, str) and float in (hint, *args) and _EXPONENT.fullmatch(value.strip()):
        value = float(value)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner[0], where) if _fits(value, inner[0]) else _bad_type(name, value, hint, where)
    if not _fits(value, hint):
        _bad_type(name, value, hint, where)
    if typing.get_origin(hint) is tuple:
        return tuple(float(v) for v in value)
    return float(value) if hint is float else value


def _fits(value: Any, hint: Any) -> bool:
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        return isinstance(value, (list, tuple)) and len(value) == len(args) and all(_fits(v, float) for v in value)
    raise TypeError(f"unsupported type hint {hint!r}")


def _bad_type(name: str, value: Any, hint: Any, where: str) -> typing.NoReturn:
    raise ConfigError(f"parameter '{name}' must be {_type_name(hint)}, got {value!r}{_where(where)}")


# --------------------------------------------------------------------------- parameters files

# Short names for cell ids; any other parameter appears under its full name.
ALIASES = {"head": "", "lambda_area": "lam", "slot_iters": "it", "dropout": "do", "slots_per_class": "spc",
           "hidden_dim": "hd", "image_size": "px", "output_stride": "os", "backbone": "bb", "drop_path": "dp",
           "stage1_lr": "lr1", "stage2_lr": "lr2", "stage1_epochs": "ep1", "stage2_epochs": "ep2",
           "per_class_limit": "pcl", "crop_scale": "crop", "dihedral": "d4", "label_smoothing": "ls", "weight_decay": "wd", "batch_size": "bs",
           "background": "bg", "num_slots": "slots"}
TOP_KEYS = ("base", "grid", "seeds", "notebook")
# Notebooks a grid can run, by file name in notebooks/, and the parameters each one takes.
NOTEBOOK_CONFIGS: dict[str, type] = {"train.ipynb": Config, "object_discovery.ipynb": DiscoveryConfig}
DEFAULT_NOTEBOOK = "train.ipynb"


def config_names(config_cls: type) -> dict[str, Any]:
    """The parameter names a config class takes (flat, in declaration order)."""
    return dict(FIELDS) if config_cls is Config else config_cls.fields()


@dataclass(frozen=True)
class Cell:
    """One run of a grid: its id, the grid values that define it, and its resolved config."""

    id: str
    axes: dict[str, Any]
    config: Config | DiscoveryConfig


def grid_products(grid: Any) -> list:
    """A parameters file's ``grid:`` as a list of Cartesian products: a mapping is one, a list is several."""
    return grid if isinstance(grid, list) else [grid]


@dataclass(frozen=True)
class ParamsFile:
    path: str
    base: dict[str, Any]
    grid: dict[str, list] | list[dict[str, list]]   # one product, or several one after the other
    seeds: list[int] | None
    notebook: str = DEFAULT_NOTEBOOK   # file name in notebooks/; it decides which parameters are valid

    @property
    def config_cls(self) -> type:
        return NOTEBOOK_CONFIGS[self.notebook]

    @property
    def base_config(self) -> Config | DiscoveryConfig:
        return self.config_cls.from_params(self.base, where=f"{self.path} base")

    @property
    def products(self) -> list[dict[str, list]]:
        """The grid as a list of Cartesian products (one for a mapping)."""
        return grid_products(self.grid)

    def cells(self) -> list[Cell]:
        """The Cartesian product of the grid (of each product in turn, for a list) times the seeds, in file order."""
        combos = [dict(zip(g, combo)) for g in self.products
                  for combo in (list(itertools.product(*g.values())) or [()])]
        cells = []
        for combo in combos:
            for seed in (self.seeds if self.seeds is not None else [None]):
                axes = dict(combo)
                if seed is not None:
                    axes["seed"] = seed
                cfg = self.config_cls.from_params({**self.base, **axes}, where=f"{self.path} grid cell {axes}")
                cells.append(Cell(id=cell_id(axes, cfg), axes=axes, config=cfg))
        ids = [c.id for c in cells]
        dup = next((i for i in ids if ids.count(i) > 1), None)
        if dup:
            raise ConfigError(f"grid in {self.path} gives cell '{dup}' twice; list each value once")
        return cells


def cell_id(axes: Mapping[str, Any], cfg: Config | DiscoveryConfig) -> str:
    """Readable and deterministic: the grid values, then a hash of every resolved parameter.

    Only letters, digits, '.', '_' and '-' so ids are safe folder names everywhere.
    """
    parts = [f"{ALIASES.get(k, k)}{_id_value(v)}" for k, v in axes.items()]
    return f"{'_'.join(parts) or 'base'}-{cfg.digest()}"


def _id_value(v: Any) -> str:
    if isinstance(v, bool):
        text = "T" if v else "F"
    elif v is None:
        text = "none"
    elif isinstance(v, float):
        text = f"{v:g}"
    elif isinstance(v, str):
        text = Path(v).name  # a split file or weights file: its name is enough, the hash has the rest
    else:
        text = str(v)
    return re.sub(r"[^A-Za-z0-9.]+", "", text)


def load_params_file(path: str | os.PathLike) -> ParamsFile:
    """Read and validate a parameters file; every cell is resolved so any bad value fails now."""
    path = str(path)
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"parameters file '{path}' does not exist; pass the path of a YAML file such as "
                          f"params/demo.yaml") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"parameters file '{path}' is not valid YAML: {str(err).splitlines()[0]}") from None
    return parse_params(raw if raw is not None else {}, path)


def parse_params(raw: Any, path: str = "<params>") -> ParamsFile:
    if not isinstance(raw, dict):
        raise ConfigError(f"parameters file '{path}' must be a mapping with keys {', '.join(TOP_KEYS)}")
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"unknown top-level key '{unknown[0]}' in {path}; valid keys: {', '.join(TOP_KEYS)} "
                          f"(parameters go under 'base' or 'grid')")
    base = raw.get("base") or {}
    grid = raw.get("grid") or {}
    seeds = raw.get("seeds")
    notebook = raw.get("notebook", DEFAULT_NOTEBOOK)
    if notebook not in NOTEBOOK_CONFIGS:
        raise ConfigError(f"'notebook' in {path} must be one of {', '.join(NOTEBOOK_CONFIGS)} (a file in notebooks/), "
                          f"got {notebook!r}")
    names = config_names(NOTEBOOK_CONFIGS[notebook])
    if not isinstance(base, dict):
        raise ConfigError(f"'base' in {path} must be a mapping of parameter names to values")
    products = grid_products(grid)
    if not products or not all(isinstance(g, dict) for g in products):
        raise ConfigError(f"'grid' in {path} must be a mapping of parameter names to lists of values, or a "
                          f"non-empty list of such mappings")
    for g in products:
        for name, values in g.items():
            if name not in names:
                raise ConfigError(f"unknown parameter '{name}' in {path} grid{_did_you_mean(name, names)}; "
                                  f"valid names: {', '.join(names)}")
            if not isinstance(values, list) or not values:
                raise ConfigError(f"grid axis '{name}' in {path} must be a non-empty list of values, got {values!r}")
            if name == "seed":
                raise ConfigError(f"grid axis 'seed' in {path}: use the top-level 'seeds' list instead")
    if seeds is not None:
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                               for s in seeds):
            raise ConfigError(f"'seeds' in {path} must be a non-empty list of integers, got {seeds!r}")
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"'seeds' in {path} lists a seed twice: {seeds!r}")
    copied = [{k: list(v) for k, v in g.items()} for g in products]
    pf = ParamsFile(path=path, base=dict(base), grid=copied if isinstance(grid, list) else copied[0], seeds=seeds,
                    notebook=notebook)
    pf.base_config  # validates the base alone, so its errors name the base
    pf.cells()
    return pf


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["key=value", ...]`` from the command line; values are read as YAML (``0.1``, ``true``, ``null``)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set '{item}' must look like key=value, e.g. --set slot_iters=3")
        out[key.strip()] = yaml.safe_load(value)
    return out


# --------------------------------------------------------------------------- notebooks

NOTEBOOK_EXTRAS = ("out_dir",)
_IPYTHON_NAMES = {"In", "Out"}


def from_namespace(namespace: Mapping[str, Any], extras: tuple[str, ...] = NOTEBOOK_EXTRAS,
                   config_cls: type = Config) -> tuple[Any, dict[str, Any]]:
    """A notebook's globals after its ``parameters`` cell (and papermill's injected cell) -> config.

    Every plain value in the namespace must be a parameter name of ``config_cls`` (:class:`Config`
    for train.ipynb, :class:`DiscoveryConfig` for object_discovery.ipynb) or one of ``extras``:
    a name papermill injects that nothing reads (a typo such as ``slot_iter``) is rejected.
    """
    names = config_names(config_cls)
    values = {k: v for k, v in namespace.items() if not k.startswith("_") and k not in _IPYTHON_NAMES
              and not callable(v) and not isinstance(v, types.ModuleType)}
    unknown = sorted(set(values) - set(names) - set(extras))
    if unknown:
        raise ConfigError(f"unknown parameter '{unknown[0]}' in the notebook{_did_you_mean(unknown[0], names)}; "
                          f"valid names: {', '.join([*names, *extras])}")
    config = config_cls.from_params({k: v for k, v in values.items() if k in names})
    return config, {k: values[k] for k in extras if k in values}
