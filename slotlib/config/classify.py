"""The classifier's parameters (train.ipynb): Config = DataConfig + ModelConfig + TrainConfig + the heads' own.

Every parameter has one flat name (the names a papermill ``parameters`` cell uses, see
``docs/design.md``), a default, a type and a one-line help text, grouped into one frozen dataclass per
concern; a head's own parameters are declared in its file (slotlib/heads/).
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

from ..heads import DEFAULT_HEAD, HEADS, head_class, heads_help
from .fields import ConfigError, at_unhashed_value, coerce, did_you_mean, param, require, type_hints, where_suffix
from .train import PRECISIONS, STAGE2_BATCHNORMS, TTAS, TrainConfig  # noqa: F401 (re-exported)

TOKEN_NORMS = ("auto", "group", "rms", "none")
PIPELINES = ("fast", "loader")
OUTPUT_STRIDES = (None, 32, 16, 8)
SLOTVIT_PREFIX = "slotvit_"   # slotlib's own ViT backbones (classify/vit_variants.py): no pretrained weights
MIN_TOKENS = 4   # tokens per side the auto output_stride keeps at least


@dataclass(frozen=True)
class DataConfig:
    data_root: str | None = param(None, "folder holding eurosat/2750 (default: $EUROSAT_ROOT, else ./data)")
    split: str = param("random", "'random', 'torchgeo' (Neumann et al.'s split, the standard one), or a split file: CoOp JSON or torchgeo eurosat-{train,val,test}.txt")
    split_seed: int = param(42, "seed of the random split")
    split_fractions: tuple[float, float, float] = param((0.7, 0.15, 0.15), "train/val/test fractions of the random split")
    per_class_limit: int | None = param(None, "keep the first N tiles of each class, for quick runs; null keeps all")
    image_size: int = param(224, "input size in pixels: tiles are 64 px and are resized to this")
    eval_size: int | None = param(None, "input size in pixels for validation, test and the attention maps; null: "
                                        "image_size (a network trained on crops of a tile sees its objects larger "
                                        "than in the whole tile resized to image_size: docs/results.md, 'Token map')",
                                  unhashed_at=None)
    batch_size: int = param(32, "images per optimiser step")
    augment: bool = param(True, "random resized crop, flip, rotation 15 deg, colour jitter 0.2 on training tiles")
    crop_scale: float = param(0.08, "smallest area fraction the random resized crop keeps (torchvision's and the "
                                 "reference's 0.08 leaves 18 x 18 px of a 64 px tile)", unhashed_at=0.08)
    dihedral: bool = param(False, "also turn training tiles by a random multiple of 90 deg: with the flip, all 8 "
                               "symmetries of the square (overhead tiles have no up)", unhashed_at=False)
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
                 "'random', 'torchgeo' or the path of a split file")

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
    drop_path: float = param(0.0, "stochastic depth rate inside the backbone")
    head: str = param(DEFAULT_HEAD, f"the classification head (slotlib/heads/): {heads_help()}")
    hidden_dim: int = param(128, "channels after the 1x1 projection: the slot dimension D")
    dropout: float = param(0.1, "dropout on the projected feature tokens before the head")
    token_norm: str = param("auto", "after the 1x1 projection and ReLU: 'group' (GroupNorm over channels and "
                                 "positions), 'rms' (each image's tokens over their root mean square: scale only), "
                                 "'none', or 'auto', the head's own choice: " + ", ".join(
                                     f"{name} {cls.token_norm}" for name, cls in HEADS.items()))

    def __post_init__(self) -> None:
        require(self.head in HEADS, "head", self.head, f"one of {', '.join(HEADS)}")
        require(self.hidden_dim >= 4 and self.hidden_dim % 4 == 0, "hidden_dim", self.hidden_dim,
                 "a positive multiple of 4 (the sine position encoding splits it into x/y and sin/cos)")
        require(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "a number in [0, 1)")
        require(0.0 <= self.drop_path < 1.0, "drop_path", self.drop_path, "a number in [0, 1)")
        require(self.token_norm in TOKEN_NORMS, "token_norm", self.token_norm, f"one of {', '.join(TOKEN_NORMS)}")
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


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


def _declared_in(cls: type, name: str) -> type:
    """The class of ``cls``'s MRO that declares the field ``name`` (a head's Params may extend another's)."""
    return next(c for c in reversed(cls.__mro__) if name in c.__dict__.get("__annotations__", {}))


def _fields() -> dict[str, tuple[str, dataclasses.Field]]:
    """Flat name -> (section, dataclass field), in declaration order: data, model, the heads' own, train.

    A head's parameter's section is the ``section`` of the Params class that declares it ('scouter head';
    'slot heads' for what both slot heads take); two heads may share a parameter that way."""
    out: dict[str, tuple[str, dataclasses.Field]] = {}
    for section, cls in SECTIONS.items():
        if section == "train":
            for head in HEADS.values():
                for f in dataclasses.fields(head.Params):
                    out.setdefault(f.name, (_declared_in(head.Params, f.name).__dict__["section"], f))
        for f in dataclasses.fields(cls):
            out[f.name] = (section, f)
    return out


FIELDS = _fields()
DEFAULTS: dict[str, Any] = {name: f.default for name, (_, f) in FIELDS.items()}
HELP: dict[str, str] = {name: f.metadata["help"] for name, (_, f) in FIELDS.items()}


# Parameters that say where things are on this machine, not what is computed: left out of the
# cell hash so the same grid gives the same ids everywhere.
LOCAL_ONLY = ("data_root", "num_workers")


@dataclass(frozen=True)
class Config:
    """The resolved configuration of one run: every 'auto' is resolved, so each name has one value.

    ``heads`` holds every registered head's parameters (name, Params), the chosen head's and the
    others', as a parameters file gives them; ``head_params`` is the chosen head's.
    """

    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    heads: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        given = dict(self.heads)
        heads = tuple((name, given.get(name) or cls.Params()) for name, cls in HEADS.items())
        head = head_class(self.model.head)
        model, train = self.model, self.train
        if model.token_norm == "auto":
            model = dataclasses.replace(model, token_norm=head.token_norm)
        if train.stage2_batchnorm == "auto":
            # frozen: a pretrained backbone keeps the running statistics it was trained with; from scratch
            # they were never estimated, so they train
            train = dataclasses.replace(train, stage2_batchnorm="frozen" if model.starts_pretrained else "train")
        for name, value in (("model", model), ("train", train), ("heads", heads)):
            object.__setattr__(self, name, value)

    @property
    def head_params(self) -> Any:
        """The chosen head's own parameters (its ``Params`` dataclass)."""
        return dict(self.heads)[self.model.head]

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
        values = {name: coerce(name, merged[name], _hint(name), where) for name in FIELDS}

        def build(dc: type) -> Any:
            return dc(**{f.name: values[f.name] for f in dataclasses.fields(dc)})

        try:
            return cls(**{section: build(dc) for section, dc in SECTIONS.items()},
                       heads=tuple((name, build(head.Params)) for name, head in HEADS.items()))
        except ConfigError as err:
            raise ConfigError(f"{err}{where_suffix(where)}" if where else str(err)) from None

    def with_params(self, **changes: Any) -> "Config":
        """This config with ``changes`` (flat names), validated and resolved again; a ``token_norm`` that was
        the head's own choice stays the (new) head's own choice."""
        return Config.from_params({**self.to_params(auto=True), **changes})

    def to_params(self, *, auto: bool = False) -> dict[str, Any]:
        """Flat name -> value, YAML/JSON friendly (tuples become lists), every parameter in FIELDS order.

        ``auto``: ``token_norm`` as 'auto' where it is the head's own choice."""
        sources = [self.data, self.model, self.train, *(p for _, p in self.heads)]
        out: dict[str, Any] = {}
        for name in FIELDS:
            value = getattr(next(s for s in sources if hasattr(s, name)), name)
            out[name] = list(value) if isinstance(value, tuple) else value
        if auto and out["token_norm"] == head_class(self.model.head).token_norm:
            out["token_norm"] = "auto"
        return out

    def digest(self) -> str:
        """Short hash of every parameter that changes what is computed (docs/design.md, "Cell ids").

        Left out: where things are (LOCAL_ONLY); a parameter at its ``unhashed_at`` value; another head's
        parameter unless it is ``hashed_for_every_head``. ``token_norm`` is hashed as 'auto' where it is what
        'auto' meant when the head's ids were made (``Head.token_norm_hashed_as_auto``), and
        ``stage2_batchnorm`` as what 'auto' resolved to.
        """
        head = head_class(self.model.head)
        own = {f.name for f in dataclasses.fields(head.Params)}
        params = {}
        for name, value in self.to_params().items():
            section, f = FIELDS[name]
            if name in LOCAL_ONLY or at_unhashed_value(f, value):
                continue
            if section not in SECTIONS and name not in own and not f.metadata["hashed_for_every_head"]:
                continue
            params[name] = value
        if params["token_norm"] == (head.token_norm_hashed_as_auto or head.token_norm):
            params["token_norm"] = "auto"
        return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]


def _hint(name: str) -> Any:
    section, f = FIELDS[name]
    owner = SECTIONS.get(section) or next(h.Params for h in HEADS.values() if name in type_hints(h.Params))
    return type_hints(owner)[name]
