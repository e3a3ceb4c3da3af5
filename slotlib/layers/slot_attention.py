"""Locatello et al.'s slot attention, shared by both applications: the slot head and the object-discovery autoencoder.

Shape letters, used in every comment and einsum below:
    B batch, N tokens (H*W of the feature map), S slots, D dim, K classes, P slots per class (S = K*P).

Every module maps tokens ``x [B,N,D]`` (and their position encoding) to slots and attention
``attn [B,S,N]`` and owns no parameter its forward pass does not use. SCOUTER's sigmoid slot attention,
which only the classifier uses, is its head's own (slotlib/heads/scouter.py).

References:
    Locatello et al., "Object-Centric Learning with Slot Attention", NeurIPS 2020;
        code google-research/google-research slot_attention/model.py, lucidrains/slot-attention.
    Jia, Liu & Huang, "Improving Object-centric Learning with Query Optimization" (BO-QSA), ICLR 2023.
    Chang et al., "Object Representations as Fixed Points: Training Iterative Refinement Algorithms
        with Implicit Differentiation", NeurIPS 2022.
"""

from __future__ import annotations

import torch
from torch import nn


class SlotAttention(nn.Module):
    """Locatello et al.'s iterative attention: slots compete for tokens (softmax over slots).

    Takes the initial slots as an argument, so the classifier (one learned Gaussian per slot)
    and an object-discovery autoencoder (one shared Gaussian) share this module.
    Returns the final slots and the last iteration's attention, which sums to one over slots.

    ``bilevel=True`` backpropagates through the last iteration only: the slots entering it are
    detached, plus a straight-through term that hands their gradient to the initial slots
    (Jia et al.'s BO-QSA; Chang et al.'s first-order implicit differentiation). The forward pass is
    unchanged; training is steadier and the backward pass cheaper.

    ``attention_only=True`` is for a reader of the attention alone (the slot head's ``slot_score:
    attention``): the last iteration stops once its attention is computed, so the slots returned are
    those that made it; with one iteration the module has no value projection, GRU or MLP at all.
    """

    def __init__(self, dim: int, iters: int = 3, mlp_hidden: int | None = None, eps: float = 1e-8,
                 bilevel: bool = False, attention_only: bool = False) -> None:
        super().__init__()
        self.iters, self.eps, self.scale, self.bilevel = iters, eps, dim ** -0.5, bilevel
        self.attention_only = attention_only
        self.norm_inputs = nn.LayerNorm(dim)
        self.norm_slots = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.updates = not (attention_only and iters == 1)
        if self.updates:
            self.norm_mlp = nn.LayerNorm(dim)
            self.to_v = nn.Linear(dim, dim, bias=False)
            self.gru = nn.GRUCell(dim, dim)
            hidden = mlp_hidden or 2 * dim
            self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))

    def forward(self, inputs: torch.Tensor, slots: torch.Tensor,
                iters: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``iters`` overrides the module's iteration count for this call (e.g. more at test time)."""
        b, n, d = inputs.shape
        iters = iters or self.iters
        if iters > 1 and not self.updates:
            raise ValueError("this SlotAttention was built for one attention-only iteration (no GRU); "
                             f"it cannot run {iters}")
        inputs = self.norm_inputs(inputs)                               # [B,N,D]
        k = self.to_k(inputs)                                           # [B,N,D]
        v = self.to_v(inputs) if self.updates else None                # [B,N,D]
        init = slots                                                    # [B,S,D]
        for i in range(iters):
            if self.bilevel and i == iters - 1:
                # [B,S,D] the same values exactly (init - init.detach() is exactly 0; slots.detach() + init -
                # init.detach() was not: a + b - b rounds), the gradient to init only
                slots = (init - init.detach()) + slots.detach()
            slots_prev = slots                                          # [B,S,D]
            q = self.to_q(self.norm_slots(slots))                       # [B,S,D]
            dots = torch.einsum("bsd,bnd->bsn", q, k) * self.scale      # [B,S,N]
            attn = dots.softmax(dim=1)                                  # [B,S,N] over slots: slots compete for tokens
            if self.attention_only and i == iters - 1:
                return slots, attn
            weights = attn + self.eps
            weights = weights / weights.sum(dim=2, keepdim=True)        # [B,S,N] weighted mean over tokens
            updates = torch.einsum("bsn,bnd->bsd", weights, v)          # [B,S,D]
            slots = self.gru(updates.reshape(-1, d), slots_prev.reshape(-1, d)).view(b, -1, d)  # [B,S,D]
            slots = slots + self.mlp(self.norm_mlp(slots))              # [B,S,D] residual MLP
        return slots, attn


class GaussianSlots(nn.Module):
    """Learned Gaussian slot initialisation: ``mu + exp(log_sigma) * noise``.

    ``per_slot=True`` gives every slot its own mean and spread, so slot s keeps its identity
    (needed when slot s stands for class s); ``per_slot=False`` shares one Gaussian, so slots
    are exchangeable (object discovery). ``sample_in_eval=False`` uses the mean at evaluation so
    predictions are deterministic.
    """

    def __init__(self, num_slots: int, dim: int, per_slot: bool, sample_in_eval: bool = True) -> None:
        super().__init__()
        self.num_slots, self.sample_in_eval = num_slots, sample_in_eval
        rows = num_slots if per_slot else 1
        # Initialised as in google-research slot_attention: xavier-uniform mean and log-sigma.
        self.mu = nn.Parameter(nn.init.xavier_uniform_(torch.empty(1, rows, dim)))          # [1,S|1,D]
        self.log_sigma = nn.Parameter(nn.init.xavier_uniform_(torch.empty(1, rows, dim)))   # [1,S|1,D]

    def forward(self, batch: int) -> torch.Tensor:
        mu = self.mu.expand(batch, self.num_slots, -1)                  # [B,S,D]
        if not (self.training or self.sample_in_eval):
            return mu
        return mu + self.log_sigma.exp() * torch.randn_like(mu)         # [B,S,D]
