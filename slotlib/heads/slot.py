"""Locatello et al.'s slot attention as a classifier (``head: slot``): softmax over slots, per-class slots.

Shape letters: B batch, N tokens, S slots, D dim, K classes, P slots per class (S = K*P).

Reference: Locatello et al., "Object-Centric Learning with Slot Attention", NeurIPS 2020; the
module itself is :class:`slotlib.layers.slot_attention.SlotAttention`, shared with object discovery.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..config.fields import param, require
from ..layers.slot_attention import GaussianSlots, SlotAttention
from .registry import Head, SlotsParams, register_head

SLOT_SCORES = ("per_class", "shared", "attention")


@dataclass(frozen=True)
class SlotParams(SlotsParams):
    section: ClassVar[str] = "slot head"
    slot_score: str = param("per_class", "slot head's class score: 'per_class' (slot k scored by class k's own "
                                         "linear layer; its maps are uniform), 'shared' (one linear layer for every "
                                         "slot; stalls near chance) or 'attention' (the share of the tile's tokens "
                                         "class k's slots win: the map is the decision; use with slot_iters: 1)",
                            hashed_for_every_head=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.slot_score in SLOT_SCORES, "slot_score", self.slot_score, f"one of {', '.join(SLOT_SCORES)}")


@register_head("slot")
class SlotClassifierHead(Head):
    """Classification from Locatello slot attention: P slots per class, each scored into its class's logit.

    ``score='per_class'`` (the default) scores slot s with its class's own linear layer, so a slot
    is read as evidence for the class it stands for. ``score='shared'`` scores every slot with one
    linear layer: then the only thing that tells class k's slot apart is its initial mean, and on
    frozen ImageNet features of EuroSAT it stays near chance (docs/results.md, "Slot heads").

    With either, the attention does not decide anything: a slot's update is its attention-weighted
    *mean* of the tokens, so uniform attention hands every slot the pooled tile, which its linear
    layer classifies as well as any. The maps come out uniform (0.1 everywhere with 10 classes), and
    the iterations pull every slot toward that same mean. ``score='attention'`` makes the map the
    decision: class k's logit is the log of the share of the tile's tokens its slots win (softmax over
    slots, averaged over tokens), so ``softmax(logits)`` is that share. With one iteration
    (``slot_iters: 1``) the slots attend from their learned class means; more iterations wash the
    classes' identities out again (docs/results.md, "Where the slot head looks").
    """

    summary = "Locatello's slot attention, softmax over slots"
    Params = SlotParams
    bounded_attention = True            # softmax over slots

    def __init__(self, num_classes: int, dim: int, slots_per_class: int = 1, iters: int = 3,
                 score: str = "per_class") -> None:
        super().__init__()
        if score not in SLOT_SCORES:
            raise ValueError(f"score must be one of {', '.join(SLOT_SCORES)}, got {score!r}")
        self.num_classes, self.slots_per_class = num_classes, slots_per_class
        self.init = GaussianSlots(num_classes * slots_per_class, dim, per_slot=True, sample_in_eval=False)
        self.attention = SlotAttention(dim, iters, attention_only=score == "attention")
        self.score = score
        if score != "attention":
            self.norm = nn.LayerNorm(dim)
            rows = num_classes if score == "per_class" else 1
            self.weight = nn.Parameter(torch.empty(rows, 1, dim).uniform_(-dim ** -0.5, dim ** -0.5))  # [K|1,1,D]
            self.bias = nn.Parameter(torch.zeros(rows, 1))                                              # [K|1,1]

    @classmethod
    def from_params(cls, params: SlotParams, num_classes: int, dim: int) -> "SlotClassifierHead":
        return cls(num_classes, dim, params.slots_per_class, params.slot_iters, score=params.slot_score)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, k, p = x.shape[0], self.num_classes, self.slots_per_class
        slots, attn = self.attention(x + pos, self.init(b))             # [B,S,D], [B,S,N]
        if self.score == "attention":                                   # the share of the tile each class wins
            share = attn.view(b, k, p, -1).sum(2).mean(-1)              # [B,K] sums to 1 over classes
            return share.clamp_min(1e-6).log(), attn                    # [B,K] softmax(logits) = share
        slots = self.norm(slots).view(b, k, p, -1)                      # [B,K,P,D]
        scores = (slots * self.weight).sum(-1) + self.bias              # [B,K,P] class k's slots, class k's layer
        return scores.sum(-1), attn                                     # [B,K] a class's slots add up

    @classmethod
    def collapse_advice(cls, params: SlotParams, lr_name: str) -> str:
        if params.slot_score == "shared":
            return "set slot_score: per_class"
        return super().collapse_advice(params, lr_name)
