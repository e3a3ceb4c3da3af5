"""SlotClassifier: timm backbone (features_only) -> 1x1 projection -> position encoding -> head.

Shape letters: B batch, C backbone channels, H x W feature map, N = H*W tokens, D hidden dim,
S slots, K classes.

The backbone is the source of truth: channels and strides come from its ``feature_info``, and
the input normalisation from its ``pretrained_cfg`` (see ``slotlib.data.normalization``).

References:
    timm feature extraction: https://huggingface.co/docs/timm/feature_extraction
    Carion et al., "End-to-End Object Detection with Transformers" (DETR), sine position encoding.
"""

from __future__ import annotations

import functools
import math
import os

import timm
import torch
import torch.nn.functional as F
from torch import nn

from .config import MIN_TOKENS, Config, ConfigError, ModelConfig
from .slot_attention import LinearHead, ScouterSlotAttention, SlotClassifierHead


def sine_position_encoding(h: int, w: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """DETR's normalised sine encoding, as SCOUTER uses it: D/2 channels for y, then D/2 for x."""
    half = dim // 2
    eps, scale = 1e-6, 2 * math.pi
    y = torch.arange(1, h + 1, dtype=torch.float32) / (h + eps) * scale   # [H]
    x = torch.arange(1, w + 1, dtype=torch.float32) / (w + eps) * scale   # [W]
    freq = temperature ** (2 * (torch.arange(half) // 2) / half)          # [D/2]
    pos_y, pos_x = y[:, None] / freq, x[:, None] / freq                   # [H,D/2], [W,D/2]
    pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)  # [H,D/2]
    pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)  # [W,D/2]
    pos = torch.cat((pos_y[:, None].expand(h, w, half), pos_x[None].expand(h, w, half)), dim=2)  # [H,W,D]
    return pos.reshape(1, h * w, dim)                                      # [1,N,D]


def create_backbone(cfg: ModelConfig, pretrained: bool | None = None, image_size: int | None = None) -> nn.Module:
    """A timm ``features_only`` backbone that returns the one feature level the head attends over.

    Only the stages up to that level are built, so no unused parameter is counted.
    ``pretrained=None`` follows the config; ``False`` builds random weights (e.g. to count parameters).
    ``image_size`` lets ``output_stride: null`` dilate the last stages where the backbone's own stride
    would leave fewer than ``MIN_TOKENS`` tokens a side (see ``output_stride_for``).
    """
    if not timm.is_model(cfg.backbone):
        raise ConfigError(f"parameter 'backbone' must be a timm model name, got {cfg.backbone!r} "
                          f"(see timm.list_models())")
    kwargs: dict = {"features_only": True}
    if cfg.drop_path > 0:
        kwargs["drop_path_rate"] = cfg.drop_path
    index = -1 if cfg.feature_stride is None else _level_of(cfg.backbone, cfg.feature_stride)
    output_stride = output_stride_for(cfg, image_size)
    if output_stride is not None:
        kwargs["output_stride"] = output_stride
    if pretrained is None:
        pretrained = cfg.pretrained or cfg.pretrained_file is not None
    use_weights = pretrained
    source = "the timm hub"
    if use_weights and cfg.pretrained_file is not None:
        if not os.path.isfile(cfg.pretrained_file):
            raise ConfigError(f"parameter 'pretrained_file' names {cfg.pretrained_file!r}, which is not a file; "
                              f"give the path of a state_dict saved for timm '{cfg.backbone}'")
        kwargs["pretrained_cfg_overlay"] = {"file": os.path.abspath(cfg.pretrained_file)}
        source = f"'pretrained_file' {cfg.pretrained_file!r}"
    elif use_weights and os.environ.get(WEIGHTS_ENV):
        path = local_weights(cfg.backbone, os.environ[WEIGHTS_ENV])
        kwargs["pretrained_cfg_overlay"] = {"file": path}
        source = f"{WEIGHTS_ENV} file {path!r}"
    try:
        return timm.create_model(cfg.backbone, pretrained=use_weights, out_indices=(index,), **kwargs)
    except TypeError as err:
        if "output_stride" not in str(err):
            raise
        if cfg.output_stride is None:   # auto: a backbone that cannot dilate keeps its own stride
            return timm.create_model(cfg.backbone, pretrained=use_weights, out_indices=(index,),
                                     **{k: v for k, v in kwargs.items() if k != "output_stride"})
        raise ConfigError(f"parameter 'output_stride' is {output_stride}, but timm '{cfg.backbone}' cannot dilate "
                          f"its stages (its constructor takes no output_stride); leave output_stride: null") from None
    except OSError as err:  # the hub could not be reached and nothing is cached
        raise ConfigError(f"could not load ImageNet weights for '{cfg.backbone}' from {source} "
                          f"({str(err).splitlines()[0] if str(err) else type(err).__name__}); set {WEIGHTS_ENV} to "
                          f"a folder holding {cfg.backbone}*.pth (or .safetensors), 'pretrained_file' to a weights "
                          f"file, or 'pretrained: false'") from None
    except RuntimeError as err:  # state_dict keys or shapes do not fit
        raise ConfigError(f"weights in {source} do not fit timm '{cfg.backbone}': "
                          f"{str(err).splitlines()[0]}") from None


WEIGHTS_ENV = "SLOTLIB_WEIGHTS"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def local_weights(backbone: str, where: str) -> str:
    """The weights file for ``backbone`` that ``$SLOTLIB_WEIGHTS`` names: the file itself, or in a folder
    the one file named ``<backbone>.<anything>`` with a weights suffix (e.g. mobilenetv2_100.tv_in1k.pth)."""
    if os.path.isfile(where):
        return os.path.abspath(where)
    if not os.path.isdir(where):
        raise ConfigError(f"{WEIGHTS_ENV}={where!r} is neither a file nor a folder; point it at a folder of "
                          f"backbone weights files or at one such file")
    found = sorted(name for name in os.listdir(where)
                   if name.endswith(WEIGHT_SUFFIXES) and (name.split(".")[0] == backbone))
    if not found:
        raise ConfigError(f"{WEIGHTS_ENV}={where!r} holds no weights for '{backbone}' (a file named "
                          f"{backbone}.<tag>.pth or .safetensors); add one, unset {WEIGHTS_ENV} to use the timm "
                          f"hub, or set 'pretrained: false'")
    if len(found) > 1:
        raise ConfigError(f"{WEIGHTS_ENV}={where!r} holds several weights files for '{backbone}' "
                          f"({', '.join(found)}); keep one, or name it with 'pretrained_file'")
    return os.path.abspath(os.path.join(where, found[0]))


@functools.lru_cache(maxsize=None)
def _strides(backbone: str) -> tuple[int, ...]:
    """The strides of a backbone's feature levels, from its ``feature_info`` (random weights, built once).

    Built under a forked RNG: the first call in a process must not consume random numbers that a
    later call (cached) would not, or a resumed run would start from other weights than the original.
    """
    with torch.random.fork_rng(devices=[]):
        return tuple(timm.create_model(backbone, pretrained=False, features_only=True).feature_info.reduction())


def output_stride_for(cfg: ModelConfig, image_size: int | None) -> int | None:
    """The ``output_stride`` to pass to timm, or None to build the backbone as it is.

    An explicit ``output_stride`` below the backbone's own stride is passed on. ``null`` (auto) keeps the
    backbone as it is unless its deepest level would give fewer than ``MIN_TOKENS`` tokens a side at
    ``image_size``; then it takes the largest of 16 and 8 that gives at least that many (64 px through a
    stride-32 backbone: 16, a 4 x 4 map instead of 2 x 2). Dilation keeps the pretrained weights and the
    parameter count; it costs compute in the dilated stages.
    """
    if cfg.feature_stride is not None or (cfg.output_stride is None and image_size is None):
        return None   # nothing to decide: no model is built to look up the backbone's stride
    native = _strides(cfg.backbone)[-1]
    if cfg.output_stride is not None:
        return cfg.output_stride if cfg.output_stride != native else None
    if image_size // native >= MIN_TOKENS:
        return None
    smaller = [s for s in (16, 8) if s < native]
    if not smaller:
        return None
    return next((s for s in smaller if image_size // s >= MIN_TOKENS), smaller[-1])


def _level_of(backbone: str, stride: int) -> int:
    strides = list(_strides(backbone))
    if stride not in strides:
        raise ConfigError(f"parameter 'feature_stride' must be one of {strides} for '{backbone}', got {stride}")
    return strides.index(stride)


def token_norm(cfg: ModelConfig) -> str:
    """'group' or 'none': the normalisation after the projection, with 'auto' resolved for the head."""
    if cfg.token_norm != "auto":
        return cfg.token_norm
    return "none" if cfg.head == "scouter" else "group"


def create_head(cfg: ModelConfig, num_classes: int) -> nn.Module:
    if cfg.head == "scouter":
        return ScouterSlotAttention(num_classes, cfg.hidden_dim, cfg.slots_per_class, cfg.slot_iters,
                                    sign=cfg.scouter_sign, rescale=cfg.scouter_norm)
    if cfg.head == "slot":
        return SlotClassifierHead(num_classes, cfg.hidden_dim, cfg.slots_per_class, cfg.slot_iters,
                                  score=cfg.slot_score)
    return LinearHead(num_classes, cfg.hidden_dim)


class SlotClassifier(nn.Module):
    """Images ``[B,3,H,W]`` -> ``(logits [B,K], attn [B,S,N])``; ``forward`` is pure.

    ``image_size``: the input size the run uses, for ``output_stride: null`` (see ``output_stride_for``);
    without it the backbone keeps its own stride.
    """

    def __init__(self, cfg: ModelConfig, num_classes: int, pretrained: bool | None = None,
                 image_size: int | None = None) -> None:
        super().__init__()
        self.cfg, self.num_classes = cfg, num_classes
        self.backbone = create_backbone(cfg, pretrained, image_size)
        channels = self.backbone.feature_info.channels()[-1]
        self.stride = self.backbone.feature_info.reduction()[-1]
        d = cfg.hidden_dim
        self.proj = nn.Conv2d(channels, d, kernel_size=1)
        # One group: normalise over all channels and positions together. Many groups on a small map
        # (2x2 at 64 px) would remove each group's own mean, which is most of what a tile says.
        # Not for SCOUTER by default: its logit is each token's channel mean weighted by attention,
        # and GroupNorm centres exactly that (the authors feed the ReLU features as they are).
        self.norm = nn.GroupNorm(1, d) if token_norm(cfg) == "group" else nn.Identity()
        # The reference passed dropout to a features_only backbone, where it reached no module;
        # here it acts on the tokens every head sees.
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = create_head(cfg, num_classes)
        self._pos: dict[tuple[int, int], torch.Tensor] = {}
        self._grid: dict[int, tuple[int, int]] = {}

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.from_features(self.backbone(images)[-1])

    def from_features(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Everything after the backbone, on its feature map ``[B,C,H,W]`` (e.g. computed once, frozen)."""
        x = self.norm(F.relu(self.proj(features)))                      # [B,D,H,W]
        _, d, h, w = x.shape
        tokens = self.dropout(x.flatten(2).transpose(1, 2))             # [B,N,D]
        return self.head(tokens, self.position_encoding(h, w).to(tokens))

    def position_encoding(self, h: int, w: int) -> torch.Tensor:
        """The sine encoding of an h x w map, ``[1,N,D]``, computed once per size."""
        if (h, w) not in self._pos:
            self._pos[(h, w)] = sine_position_encoding(h, w, self.cfg.hidden_dim)
        return self._pos[(h, w)]

    def token_grid(self, image_size: int) -> tuple[int, int]:
        """(H, W) of the attention maps for square inputs of ``image_size`` pixels (measured once per size)."""
        if image_size not in self._grid:
            with torch.no_grad():
                device = next(self.parameters()).device
                shape = self.backbone(torch.zeros(1, 3, image_size, image_size, device=device))[-1].shape
            self._grid[image_size] = (shape[-2], shape[-1])
        return self._grid[image_size]

    def head_parameters(self) -> list[nn.Parameter]:
        """Everything after the backbone: what stage 1 trains."""
        return [p for name, p in self.named_parameters() if not name.startswith("backbone.")]

    def parameter_counts(self) -> dict[str, int]:
        n_backbone = sum(p.numel() for p in self.backbone.parameters())
        n_head = sum(p.numel() for p in self.head_parameters())
        return {"n_params": n_backbone + n_head, "n_params_backbone": n_backbone, "n_params_head": n_head,
                "n_trainable_stage1": n_head, "n_trainable_stage2": n_backbone + n_head}


_COUNT_KEYS = ("backbone", "feature_stride", "head", "hidden_dim", "slots_per_class", "token_norm", "slot_score")
_COUNTS: dict[tuple, dict[str, int]] = {}


def count_parameters(cfg: Config, num_classes: int = 10) -> dict[str, int]:
    """Parameter counts by part for a config, from random weights (nothing is fetched); cached per architecture."""
    key = tuple(getattr(cfg.model, k) for k in _COUNT_KEYS) + (num_classes,)
    if key not in _COUNTS:
        _COUNTS[key] = SlotClassifier(cfg.model, num_classes=num_classes, pretrained=False).parameter_counts()
    return _COUNTS[key]
