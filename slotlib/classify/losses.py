"""The training objective as pure functions: cross-entropy plus the head's own terms; what a collapsed head is.

Shape letters: B batch, K classes, S slots, N tokens. A head's own terms (SCOUTER's area loss) are
defined in its file (:mod:`slotlib.heads`), as ``Head.loss_terms``.
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
# for a head whose diagnostics report a 'saturated' share (SCOUTER's sigmoid attention), more than
# SATURATED_SHARE of its attention weights are saturated, where they pass no gradient.
COLLAPSE_SPREAD = 1e-3


SATURATED_SHARE = 0.99


def logit_spread(logits: torch.Tensor) -> torch.Tensor:
    """Per sample, the largest class logit minus the smallest: ``logits [B,K]`` -> ``[B]``."""
    logits = logits.detach().float()
    return logits.max(1).values - logits.min(1).values


def classification_loss(logits: torch.Tensor, target: torch.Tensor, attn: torch.Tensor, head,
                        label_smoothing: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy plus the weighted terms of ``head.loss_terms(attn)``.

    ``logits [B,K]``, ``target [B]`` (class indices, or ``[B,K]`` class probabilities: Mixup's soft
    targets), ``attn [B,S,N]``; ``head`` a :class:`slotlib.heads.Head`.
    Returns the total and its parts (detached, unweighted) for logging.
    """
    ce = F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)
    total, parts = ce, {"ce": ce.detach()}
    for name, (weight, value) in head.loss_terms(attn).items():
        total = total + weight * value
        parts[name] = value.detach()
    return total, parts
