"""Losses as pure functions: cross-entropy plus SCOUTER's area loss.

Shape letters: B batch, K classes, S slots, N tokens.

Reference: Li et al., SCOUTER (ICCV 2021), eq. 7: the area loss is the mean attention, so
minimising it makes each slot attend to a small region; ``lambda_area`` weighs it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class HeadCollapseError(RuntimeError):
    """A head learned nothing for a whole epoch (equal logits or saturated attention): a failed run, not a result."""

    def __init__(self, message: str, info: dict) -> None:
        super().__init__(message)
        self.info = info  # what metrics.json records under 'collapse'


# A head has collapsed when, for every training batch of an epoch, every sample's class logits lie
# within COLLAPSE_SPREAD of each other (softmax within 0.1% of uniform: no signal to learn from), or,
# for SCOUTER's sigmoid attention, more than SATURATED_SHARE of the weights are saturated (below
# SATURATION_MARGIN or above 1 - SATURATION_MARGIN, where the sigmoid passes no gradient).
COLLAPSE_SPREAD = 1e-3


SATURATION_MARGIN = 0.01


SATURATED_SHARE = 0.99


def logit_spread(logits: torch.Tensor) -> torch.Tensor:
    """Per sample, the largest class logit minus the smallest: ``logits [B,K]`` -> ``[B]``."""
    logits = logits.detach().float()
    return logits.max(1).values - logits.min(1).values


def saturated_share(attn: torch.Tensor, margin: float = SATURATION_MARGIN) -> torch.Tensor:
    """Share of sigmoid attention weights within ``margin`` of 0 or 1: ``attn [B,S,N]`` -> scalar."""
    attn = attn.detach().float()
    return ((attn < margin) | (attn > 1 - margin)).float().mean()


def area_loss(attn: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """Mean attention over batch, slots and tokens, to ``power``: ``attn [B,S,N]`` -> scalar."""
    return attn.mean() ** power


def slot_classification_loss(logits: torch.Tensor, target: torch.Tensor, attn: torch.Tensor, *,
                             head: str, lambda_area: float, area_power: float = 1.0,
                             label_smoothing: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy, plus ``lambda_area`` * area loss for the SCOUTER head.

    The area term only applies to SCOUTER's sigmoid attention: softmax attention over slots has
    a constant mean (1/S) and a linear head's class map is no attention at all.
    Returns the total and its parts (detached) for logging.
    """
    ce = F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)  # logits [B,K], target [B]
    if head != "scouter":
        return ce, {"ce": ce.detach()}
    area = area_loss(attn.float(), area_power)
    return ce + lambda_area * area, {"ce": ce.detach(), "area": area.detach()}
