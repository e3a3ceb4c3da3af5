"""SlotClassifier: timm backbone (features_only) -> 1x1 projection -> position encoding -> head.

Shape letters: B batch, C backbone channels, H x W feature map, N = H*W tokens, D hidden dim,
S slots, K classes.

The input normalisation comes from the backbone's ``pretrained_cfg`` (see
``slotlib.data.transforms.normalization``).

References:
    timm feature extraction: https://huggingface.co/docs/timm/feature_extraction
    Carion et al., "End-to-End Object Detection with Transformers" (DETR), sine position encoding.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config, ConfigError, ModelConfig
from ..heads import head_class
from .backbone import create_backbone


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


class TokenRMSNorm(nn.Module):
    """Each image's feature map ``[B,D,H,W]`` over its root mean square (all channels and positions): the
    scale goes, nothing is centred, so ReLU features stay non-negative and keep their relative sizes.

    SCOUTER's logit reads each token's channel mean (slotlib/heads/scouter.py). Raw ReLU tokens of a
    projected ImageNet backbone are small and nearly alike (mobilenetv2_100 at 64 px: mean 0.057, channel
    means differing by 0.005 between tokens), so its logits start almost equal and it learns slowly
    (docs/results.md, "How fast the heads start")."""

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x.float().pow(2).mean((1, 2, 3), keepdim=True).add(self.eps).rsqrt().to(x.dtype)  # [B,D,H,W]


class SlotClassifier(nn.Module):
    """Images ``[B,3,H,W]`` -> ``(logits [B,K], attn [B,S,N])``; ``forward`` is pure.

    ``head_params``: the head's own parameters (``Config.head_params``; default: its defaults).
    ``image_size``: the input size the run uses, for ``output_stride: null`` (see ``output_stride_for``);
    without it the backbone keeps its own stride.
    """

    def __init__(self, cfg: ModelConfig, num_classes: int, pretrained: bool | None = None,
                 image_size: int | None = None, *, head_params: Any = None) -> None:
        super().__init__()
        self.cfg, self.num_classes = cfg, num_classes
        head = head_class(cfg.head)
        self.backbone = create_backbone(cfg, pretrained, image_size)
        channels = self.backbone.feature_info.channels()[-1]
        self.stride = self.backbone.feature_info.reduction()[-1]
        d = cfg.hidden_dim
        self.proj = nn.Conv2d(channels, d, kernel_size=1)
        # One group: normalise over all channels and positions together. Many groups on a small map
        # (2x2 at 64 px) would remove each group's own mean, which is most of what a tile says.
        # 'auto' is the head's own choice (Head.token_norm), which the Config resolves.
        norm = head.token_norm if cfg.token_norm == "auto" else cfg.token_norm
        self.norm = {"group": lambda: nn.GroupNorm(1, d), "rms": TokenRMSNorm, "none": nn.Identity}[norm]()
        # The reference passed dropout to a features_only backbone, where it reached no module;
        # here it acts on the tokens every head sees.
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = head.from_params(head.Params() if head_params is None else head_params, num_classes, d)
        self._pos: dict[tuple[int, int], torch.Tensor] = {}
        self._grid: dict[int, tuple[int, int]] = {}

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.from_features(self.backbone(images)[-1])

    def from_features(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Everything after the backbone, on its feature map ``[B,C,H,W]`` (e.g. computed once, frozen)."""
        return self.head(*self.tokens(features))

    def tokens(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's inputs from the backbone's feature map ``[B,C,H,W]``: tokens ``[B,N,D]``, positions ``[1,N,D]``."""
        x = self.norm(F.relu(self.proj(features)))                      # [B,D,H,W]
        _, d, h, w = x.shape
        tokens = self.dropout(x.flatten(2).transpose(1, 2))             # [B,N,D]
        return tokens, self.position_encoding(h, w).to(tokens)

    def evidence(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits ``[B,K]``, attention ``[B,S,N]`` and each token's evidence for each class against the mean
        class ``[B,K,N]`` (:meth:`slotlib.heads.Head.evidence`), from one forward pass."""
        tokens, pos = self.tokens(self.backbone(images)[-1])
        logits, attn = self.head(tokens, pos)
        return logits, attn, self.head.evidence(tokens, attn, self.num_classes)

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


_COUNTS: dict[tuple, dict[str, int]] = {}


def count_parameters(cfg: Config, num_classes: int = 10) -> dict[str, int]:
    """Parameter counts by part for a config, from random weights (nothing is fetched); cached per architecture."""
    # image size: a ViT's position embedding grows with it (a CNN's count does not depend on it)
    key = (cfg.model, cfg.head_params, num_classes, cfg.data.image_size)
    if key not in _COUNTS:
        _COUNTS[key] = SlotClassifier(cfg.model, num_classes, pretrained=False, image_size=cfg.data.image_size,
                                      head_params=cfg.head_params).parameter_counts()
    return _COUNTS[key]


_CHECKED: set[tuple] = set()


def check_builds(cfg: ModelConfig, image_size: int, num_classes: int = 10, *, eval_size: int | None = None,
                 head_params: Any = None) -> None:
    """Build the model without weights and run one forward pass at ``image_size`` (and at ``eval_size``): a
    backbone name timm does not know, or one that takes a fixed input size, is one sentence now instead of
    a traceback mid-run.

    Under a forked RNG, so checking does not change the weights the run then draws. Cached per
    (model parameters, image size).
    """
    key = (cfg, head_params, image_size, num_classes, eval_size)
    if key in _CHECKED:
        return
    with torch.random.fork_rng(devices=[]):
        try:
            model = SlotClassifier(cfg, num_classes, pretrained=False, image_size=image_size,
                                   head_params=head_params).eval()
        except ConfigError:
            raise
        except (RuntimeError, ValueError, KeyError, TypeError, AssertionError) as err:
            raise ConfigError(f"parameter 'backbone' is {cfg.backbone!r}, which timm cannot build ({_first(err)}); "
                              f"use a name from timm.list_models()") from None
        try:
            with torch.no_grad():
                logits, _ = model(torch.zeros(1, 3, image_size, image_size))
        except (RuntimeError, ValueError, AssertionError) as err:
            size = getattr(model.backbone, "pretrained_cfg", {}).get("input_size", (None, None))[-1]
            raise ConfigError(f"timm '{cfg.backbone}' does not take {image_size} px inputs ({_first(err)}); set "
                              f"'image_size'" + (f" to {size}" if size else " to a size it takes")
                              + " or choose another backbone") from None
        if eval_size is not None and eval_size != image_size:
            try:
                with torch.no_grad():
                    model(torch.zeros(1, 3, eval_size, eval_size))
            except (RuntimeError, ValueError, AssertionError) as err:
                raise ConfigError(f"parameter 'eval_size' is {eval_size}, but timm '{cfg.backbone}' built for "
                                  f"{image_size} px does not take {eval_size} px inputs ({_first(err)}); set "
                                  f"eval_size: null (evaluate at image_size)") from None
    if tuple(logits.shape) != (1, num_classes):
        raise ConfigError(f"timm '{cfg.backbone}' gives logits of shape {tuple(logits.shape)} at {image_size} px; "
                          f"expected (1, {num_classes})")
    _CHECKED.add(key)


def _first(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__
