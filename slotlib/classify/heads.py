"""Classification heads over backbone tokens: slot attention (SCOUTER or Locatello) or linear, chosen by ``head``.

Shape letters: B batch, N tokens, S slots, D dim, K classes, P slots per class (S = K*P).
Every head maps tokens ``x [B,N,D]`` and their position encoding ``pos [1|B,N,D]`` to
``(logits [B,K], attn [B,S,N])``. A new head is a class here and a name in ``config.HEADS``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..layers.slot_attention import GaussianSlots, ScouterSlotAttention, SlotAttention


class SlotClassifierHead(nn.Module):
    """Classification from Locatello slot attention: P slots per class, each scored into its class's logit.

    ``score='per_class'`` (the default) scores slot s with its class's own linear layer, so a slot
    is read as evidence for the class it stands for. ``score='shared'`` scores every slot with one
    linear layer: then the only thing that tells class k's slot apart is its initial mean, and on
    frozen ImageNet features of EuroSAT it stays near chance (README, "Slot heads").
    """

    def __init__(self, num_classes: int, dim: int, slots_per_class: int = 1, iters: int = 3,
                 score: str = "per_class") -> None:
        super().__init__()
        if score not in ("per_class", "shared"):
            raise ValueError(f"score must be 'per_class' or 'shared', got {score!r}")
        self.num_classes, self.slots_per_class = num_classes, slots_per_class
        self.init = GaussianSlots(num_classes * slots_per_class, dim, per_slot=True, sample_in_eval=False)
        self.attention = SlotAttention(dim, iters)
        self.norm = nn.LayerNorm(dim)
        rows = num_classes if score == "per_class" else 1
        self.weight = nn.Parameter(torch.empty(rows, 1, dim).uniform_(-dim ** -0.5, dim ** -0.5))  # [K|1,1,D]
        self.bias = nn.Parameter(torch.zeros(rows, 1))                                              # [K|1,1]

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, k, p = x.shape[0], self.num_classes, self.slots_per_class
        slots, attn = self.attention(x + pos, self.init(b))             # [B,S,D], [B,S,N]
        slots = self.norm(slots).view(b, k, p, -1)                      # [B,K,P,D]
        scores = (slots * self.weight).sum(-1) + self.bias              # [B,K,P] class k's slots, class k's layer
        return scores.sum(-1), attn                                     # [B,K] a class's slots add up


class LinearHead(nn.Module):
    """Baseline: mean-pooled tokens -> linear. The attention returned is the class activation map.

    Because pooling is a mean and the classifier is linear, the logits equal the mean over
    tokens of the per-token logits, so ``attn[b,k,n]`` is exactly token n's share of class k.
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cam = F.linear(x, self.fc.weight)                               # [B,N,K] per-token evidence
        logits = cam.mean(1) + self.fc.bias                             # [B,K] = fc(mean of tokens)
        return logits, cam.transpose(1, 2)                              # [B,K,N] attn with S = K


def token_norm(cfg: ModelConfig) -> str:
    """'group' or 'none': the normalisation after the projection, with 'auto' resolved for the head."""
    if cfg.token_norm != "auto":
        return cfg.token_norm
    return "none" if cfg.head == "scouter" else "group"


def create_head(cfg: ModelConfig, num_classes: int) -> nn.Module:
    if cfg.head == "scouter":
        return ScouterSlotAttention(num_classes, cfg.hidden_dim, cfg.slots_per_class, cfg.slot_iters,
                                    sign=cfg.scouter_sign, rescale=cfg.scouter_norm,
                                    logit_scale=cfg.scouter_logit_scale)
    if cfg.head == "slot":
        return SlotClassifierHead(num_classes, cfg.hidden_dim, cfg.slots_per_class, cfg.slot_iters,
                                  score=cfg.slot_score)
    return LinearHead(num_classes, cfg.hidden_dim)
