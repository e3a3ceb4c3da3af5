"""SCOUTER: classification slot attention with sigmoid attention and an area loss (``head: scouter``).

Shape letters: B batch, N tokens, S slots, D dim, K classes, P slots per class (S = K*P).

Reference: Li et al., "SCOUTER: Slot Attention-based Classifier for Explainable Image Recognition",
ICCV 2021; code wbw520/scouter, sloter/utils/slot_attention.py. The area loss is the paper's eq. 7.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..config.fields import param, require
from .registry import Head, SlotsParams, class_attention, register_head

SCOUTER_NORMS = ("none", "scouter")


# Sigmoid attention within this margin of 0 or 1 passes (almost) no gradient: it is saturated.
SATURATION_MARGIN = 0.01


@dataclass(frozen=True)
class ScouterParams(SlotsParams):
    section: ClassVar[str] = "scouter head"
    scouter_sign: int = param(1, "+1 for SCOUTER+ (evidence for a class), -1 for SCOUTER- (evidence against)",
                              hashed_for_every_head=True)
    scouter_norm: str = param("none", "SCOUTER's slot-token dot products: 'none' (scaled dot products, trains) or "
                                      "'scouter' (the authors': each slot's row over its signed sum, times the total; "
                                      "saturates the sigmoid and stalls)", hashed_for_every_head=True)
    scouter_logit_scale: float = param(4.0, "SCOUTER's class logit is this times the channel sum of its slot's "
                                            "attention-weighted tokens over the channel count (the authors: 1; 4 "
                                            "starts fastest with token_norm 'rms': docs/results.md, 'How fast the "
                                            "heads start')", unhashed_at=1.0)
    lambda_area: float = param(0.05, "weight of SCOUTER's area loss", hashed_for_every_head=True)
    area_power: float = param(1.0, "the area loss is mean(attention) ** area_power", hashed_for_every_head=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.scouter_sign in (1, -1), "scouter_sign", self.scouter_sign, "1 (SCOUTER+) or -1 (SCOUTER-)")
        require(self.scouter_norm in SCOUTER_NORMS, "scouter_norm", self.scouter_norm,
                f"one of {', '.join(SCOUTER_NORMS)}")
        require(self.scouter_logit_scale > 0, "scouter_logit_scale", self.scouter_logit_scale, "a number > 0")
        require(self.lambda_area >= 0, "lambda_area", self.lambda_area, "a number >= 0")
        require(self.area_power > 0, "area_power", self.area_power, "a number > 0")


def area_loss(attn: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """Mean attention over batch, slots and tokens, to ``power``: ``attn [B,S,N]`` -> scalar (eq. 7).

    Minimising it makes each slot attend to a small region."""
    return attn.mean() ** power


def saturated_share(attn: torch.Tensor, margin: float = SATURATION_MARGIN) -> torch.Tensor:
    """Share of sigmoid attention weights within ``margin`` of 0 or 1: ``attn [B,S,N]`` -> scalar."""
    attn = attn.detach().float()
    return ((attn < margin) | (attn > 1 - margin)).float().mean()


@register_head("scouter")
class ScouterSlotAttention(Head):
    """SCOUTER: one learned slot per class (or P), sigmoid attention, logits from the slot updates.

    As the authors' code: fixed learned initial slots, keys from an MLP of the position encoded
    tokens, the tokens themselves as values (no value projection), no query projection (the slots
    are the queries), a GRU update, and the class logit as the channel sum of the last iteration's
    updates.

    ``rescale`` chooses the dot products fed to the sigmoid. ``'scouter'`` is the authors'
    rescaling: each slot's row divided by its own (signed) sum and multiplied by the sum over all
    slots. It makes the values large (their sum over a row is the grand total), so the sigmoid
    saturates and no gradient flows; when a row sum nears zero they explode. On frozen ImageNet
    features of EuroSAT it stays near chance (docs/results.md, "Slot heads"). ``'none'`` (the
    default) feeds the plain scaled dot products ``slot . key / sqrt(D)``, as every other attention does.

    ``logit_scale`` multiplies the logits (the authors: 1). A logit is an attention-weighted sum of
    the tokens' channel means, so it spans a narrow range and cross-entropy's gradient reaches
    the attention weakly; a larger scale widens it (docs/results.md, "Slot heads").

    Its tokens are rescaled, not centred (``token_norm`` 'auto' is 'rms'): a logit reads each token's
    channel mean, which GroupNorm would centre. The authors feed the ReLU features as they are
    (``token_norm: none``); from a projected ImageNet backbone those are small and nearly alike, and the
    head started far behind the linear one (docs/results.md, "How fast the heads start").
    """

    summary = "SCOUTER: sigmoid slot attention and an area loss"
    Params = ScouterParams
    token_norm = "rms"
    token_norm_hashed_as_auto = "none"  # the default until token_norm 'rms' existed: those cells keep their ids
    bounded_attention = True            # sigmoid
    loss_weights = ("lambda_area",)

    def __init__(self, num_classes: int, dim: int, slots_per_class: int = 1, iters: int = 5,
                 sign: int = 1, key_layers: int = 1, rescale: str = "none", logit_scale: float = 1.0,
                 lambda_area: float = 0.05, area_power: float = 1.0, eps: float = 1e-6) -> None:
        super().__init__()
        if rescale not in SCOUTER_NORMS:
            raise ValueError(f"rescale must be one of {', '.join(SCOUTER_NORMS)}, got {rescale!r}")
        self.num_classes, self.slots_per_class, self.iters, self.sign = num_classes, slots_per_class, iters, sign
        self.rescale, self.logit_scale, self.eps = rescale, logit_scale, eps
        self.lambda_area, self.area_power = lambda_area, area_power
        self.scale = dim ** -0.5
        num_slots = num_classes * slots_per_class
        # SCOUTER draws the initial slots once from N(mu, sigma) and then learns them directly;
        # |sigma| keeps a negative draw of sigma from being an invalid standard deviation.
        mu, sigma = torch.randn(1, 1, dim), torch.randn(1, 1, dim)
        self.initial_slots = nn.Parameter(mu + sigma.abs() * torch.randn(1, num_slots, dim))  # [1,S,D]
        layers: list[nn.Module] = [nn.Linear(dim, dim)]
        for _ in range(key_layers - 1):
            layers += [nn.ReLU(inplace=True), nn.Linear(dim, dim)]
        self.to_k = nn.Sequential(*layers)
        self.gru = nn.GRUCell(dim, dim)

    @classmethod
    def from_params(cls, params: ScouterParams, num_classes: int, dim: int) -> "ScouterSlotAttention":
        return cls(num_classes, dim, params.slots_per_class, params.slot_iters, sign=params.scouter_sign,
                   rescale=params.scouter_norm, logit_scale=params.scouter_logit_scale,
                   lambda_area=params.lambda_area, area_power=params.area_power)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, d = x.shape
        k = self.to_k(x + pos)                                          # [B,N,D] keys see position
        slots = self.initial_slots.expand(b, -1, -1)                    # [B,S,D]
        for _ in range(self.iters):
            dots = torch.einsum("bsd,bnd->bsn", slots, k) * self.scale  # [B,S,N]
            if self.rescale == "scouter":
                dots = self.scouter_rescale(dots)                       # [B,S,N]
            attn = dots.sigmoid()                                       # [B,S,N] no competition between slots
            updates = torch.einsum("bsn,bnd->bsd", attn, x) / d         # [B,S,D] values are the raw tokens
            slots = self.gru(updates.reshape(-1, d), slots.reshape(-1, d)).view(b, -1, d)  # [B,S,D]
        per_class = updates.view(b, self.num_classes, self.slots_per_class, d)        # [B,K,P,D]
        logits = self.sign * self.logit_scale * per_class.sum((2, 3))   # [B,K] a class's slots add up
        return logits, attn

    def evidence(self, tokens: torch.Tensor, attn: torch.Tensor, num_classes: int) -> torch.Tensor:
        """A logit is ``sign * logit_scale * sum_n attn[n] * mean_d tokens[n]`` (a class's slots added): its
        per-token terms, centred over the classes, ``[B,K,N]``. Raw sigmoid attention can be high for every
        class on a token (nothing makes the slots compete); the centred terms keep what tells classes apart."""
        per_class = class_attention(attn, num_classes)                                    # [B,K,N]
        terms = self.sign * self.logit_scale * per_class * tokens.mean(2)[:, None]         # [B,K,N] sum_n: logits
        return terms - terms.mean(1, keepdim=True)

    def scouter_rescale(self, dots: torch.Tensor) -> torch.Tensor:
        """The authors' normalisation of ``dots [B,S,N]``: each slot's row over its own sum, times the total.

        A row sum can cross zero (few tokens make it likely); it is kept eps away, with its sign,
        so the division stays finite. The authors' code returns inf/NaN there.
        """
        row = dots.sum(2, keepdim=True)                                             # [B,S,1]
        row = torch.where(row.abs() < self.eps, torch.full_like(row, self.eps).copysign(row), row)
        return dots / row * dots.sum((1, 2), keepdim=True)                          # [B,S,N]

    def loss_terms(self, attn: torch.Tensor) -> dict[str, tuple[float, torch.Tensor]]:
        return {"area": (self.lambda_area, area_loss(attn.float(), self.area_power))}

    def diagnostics(self, attn: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"saturated": saturated_share(attn)}

    @classmethod
    def collapse_advice(cls, params: ScouterParams, lr_name: str) -> str:
        if params.scouter_norm == "scouter":
            return "set scouter_norm: none (the authors' rescaling saturates the sigmoid)"
        return super().collapse_advice(params, lr_name)
