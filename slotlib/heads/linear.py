"""The baseline (``head: linear``): mean-pooled tokens and a linear layer; its map is the class activation map."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import Head, NoParams, register_head


@register_head("linear")
class LinearHead(Head):
    """Baseline: mean-pooled tokens -> linear. The attention returned is the class activation map.

    Because pooling is a mean and the classifier is linear, the logits equal the mean over
    tokens of the per-token logits, so ``attn[b,k,n]`` is exactly token n's share of class k.
    Its maps are not bounded: the report draws each from 0 to the tile's largest value.
    """

    summary = "mean-pooled tokens and a linear layer, the baseline"

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, num_classes)

    @classmethod
    def from_params(cls, params: NoParams, num_classes: int, dim: int) -> "LinearHead":
        return cls(num_classes, dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cam = F.linear(x, self.fc.weight)                               # [B,N,K] per-token evidence
        logits = cam.mean(1) + self.fc.bias                             # [B,K] = fc(mean of tokens)
        return logits, cam.transpose(1, 2)                              # [B,K,N] attn with S = K

    def evidence(self, tokens: torch.Tensor, attn: torch.Tensor, num_classes: int) -> torch.Tensor:
        """The class activation map over the token count, centred over the classes: it adds up to the
        centred logits less the bias, ``[B,K,N]``."""
        return (attn - attn.mean(1, keepdim=True)) / attn.shape[-1]
