"""The attention layers of the clear-vit variants that timm lacks, as drop-in ``attn_layer`` classes for timm's
``VisionTransformer`` (same constructor and projections as timm's ``Attention`` / ``DiffAttention``).

Shape letters: B batch, h heads, N tokens (P prefix tokens, then the H x W patch grid row by row), d head dim.
Scores are ``S = scale * Q K^T``, ``[B,h,N,N]``; attention is ``softmax(S)`` over keys.

The two grid-aware layers need the patch grid and the prefix-token count: :func:`set_token_grid` writes them
into every such layer of a model after it is built (``slotlib.classify.vit_variants`` does).

References:
    clear-vit (4adex/clear-vit), the variants' source: models/spatial_supression_attn.py (the only one of the
    three with code there).
    Ye et al., "Differential Transformer", ICLR 2025 (timm.layers.DiffAttention).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import Attention, DiffAttention
from torch import nn


class _GridMixin:
    """The patch grid ``(H, W)`` and the number of prefix tokens ``P`` (class token) before it."""

    grid_size: tuple[int, int] | None = None
    num_prefix_tokens: int = 0

    def _grid(self, n: int) -> tuple[int, int, int]:
        if self.grid_size is None:
            raise RuntimeError(f"{type(self).__name__} has no token grid; call set_token_grid(model, grid, prefix)")
        h, w = self.grid_size
        p = self.num_prefix_tokens
        if p + h * w != n:
            raise RuntimeError(f"{type(self).__name__} expects {p} + {h}x{w} tokens, got {n} "
                               f"(build the model for this image size)")
        return p, h, w


def set_token_grid(model: nn.Module, grid_size: tuple[int, int], num_prefix_tokens: int) -> None:
    """Tell every grid-aware attention layer of ``model`` where its patch tokens lie."""
    for module in model.modules():
        if isinstance(module, _GridMixin):
            module.grid_size = (int(grid_size[0]), int(grid_size[1]))
            module.num_prefix_tokens = int(num_prefix_tokens)


def surround_mask(radius: int, **tensor_kwargs) -> torch.Tensor:
    """``(2r+1) x (2r+1)`` ones with a 0 centre: the grid neighbours within ``radius``, not the token itself."""
    mask = torch.ones(2 * radius + 1, 2 * radius + 1, **tensor_kwargs)
    mask[radius, radius] = 0
    return mask


def neighbour_mean(x: torch.Tensor, p: int, h: int, w: int, radius: int = 1) -> torch.Tensor:
    """For each patch token, the mean of its grid neighbours within ``radius`` (Chebyshev distance, itself
    excluded, only positions inside the grid); prefix tokens get 0. ``x``: ``[..., N, d]``."""
    lead, d = x.shape[:-2], x.shape[-1]
    grid = x[..., p:, :].reshape(-1, h, w, d).permute(0, 3, 1, 2)                    # [*,d,H,W]
    ones = surround_mask(radius, dtype=x.dtype, device=x.device)[None, None]
    sums = F.conv2d(grid.reshape(-1, 1, h, w), ones, padding=radius).reshape(grid.shape)
    counts = F.conv2d(torch.ones(1, 1, h, w, dtype=x.dtype, device=x.device), ones, padding=radius)
    mean = (sums / counts).permute(0, 2, 3, 1).reshape(*lead, h * w, d)
    return torch.cat((torch.zeros_like(x[..., :p, :]), mean), dim=-2)


class SpatialSuppressionAttention(_GridMixin, Attention):
    """Surround suppression of attention scores over the 2-D patch neighbourhood of each query.

    For a patch query i at grid position g(i) and every key j::

        S~_ij = S_ij - sum_{delta in [-r, r]^2, delta != 0, g(i) + delta in the grid} K_h[delta] * S_{g^-1(g(i)+delta), j}
        A     = softmax_j(S~_ij)

    one learned ``(2r+1) x (2r+1)`` kernel ``K_h`` per head, its centre fixed at 0; prefix-token queries keep
    ``S``. This is the equation clear-vit states in its commented-out loop version. Its running version
    convolves the whole ``N x N`` score matrix as an image, which mixes query i with queries i +- 1 of the
    *flattened* sequence (the end of one patch row with the start of the next) and key j with keys j +- 1,
    and includes the centre; here the neighbourhood is the 2-D one and keys are not mixed.

    ``K_h`` starts at 0, so the layer starts as plain attention (clear-vit: PyTorch's default Conv2d init).
    """

    def __init__(self, dim: int, num_heads: int = 8, *, suppression_radius: int = 1, **kwargs) -> None:
        super().__init__(dim, num_heads=num_heads, **kwargs)
        self.suppression_radius = r = suppression_radius
        self.suppression = nn.Parameter(torch.zeros(num_heads, 2 * r + 1, 2 * r + 1))
        self.register_buffer("centre_mask", surround_mask(r), persistent=False)

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.suppression)

    def kernel(self) -> torch.Tensor:
        """``K``, ``[h, 2r+1, 2r+1]``, centre 0."""
        return self.suppression * self.centre_mask

    def scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Suppressed scores ``S~``, ``[B,h,N,N]``, from ``q, k`` ``[B,h,N,d]``."""
        b, nh, n, _ = q.shape
        p, gh, gw = self._grid(n)
        s = (q * self.scale) @ k.transpose(-2, -1)                                   # [B,h,N,N]
        rows = s[:, :, p:, :].reshape(b, nh, gh, gw, n).permute(0, 4, 1, 2, 3)      # [B,N_k,h,H,W]
        r = self.suppression_radius
        weight = self.kernel().to(s.dtype)[:, None]                                 # [h,1,k,k]
        surround = F.conv2d(rows.reshape(b * n, nh, gh, gw), weight, padding=r, groups=nh)
        surround = surround.reshape(b, n, nh, gh * gw).permute(0, 2, 3, 1)           # [B,h,HW,N_k]
        return torch.cat((s[:, :, :p, :], s[:, :, p:, :] - surround), dim=2)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise NotImplementedError("SpatialSuppressionAttention takes no attention mask")
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        attn = self.attn_drop(self.scores(q, k).softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(b, n, self.attn_dim)
        return self.proj_drop(self.proj(self.norm(x)))


class DifferenceSimilarityAttention(_GridMixin, Attention):
    """Attention scored on local differences: each patch token's query and key minus the mean of its grid
    neighbours (a centre-surround contrast, ``radius`` 1: the 8-neighbourhood, fewer at the border)::

        Q'_i = Q_i - mean_{u in N(i)} Q_u        K'_j = K_j - mean_{v in N(j)} K_v
        S_ij = scale * Q'_i . K'_j                 A = softmax_j(S_ij)

    Prefix tokens keep their own ``Q``, ``K`` (they have no position). Values are not differenced. Two
    tokens attend to each other when they differ from their surroundings in the same way (an edge, a field
    boundary, a texture), not when they look alike; on a uniform patch ``Q'`` is 0 and its attention
    uniform. clear-vit names this variant but has no code for it; this is slotlib's definition. No extra
    parameters; since ``Q'`` is linear in ``Q`` the scores go through the fused kernel.
    """

    def __init__(self, dim: int, num_heads: int = 8, *, difference_radius: int = 1, **kwargs) -> None:
        super().__init__(dim, num_heads=num_heads, **kwargs)
        self.difference_radius = difference_radius

    def differences(self, t: torch.Tensor) -> torch.Tensor:
        """``t - neighbour mean`` for the patch tokens of ``t`` ``[B,h,N,d]``; prefix tokens as they are."""
        p, gh, gw = self._grid(t.shape[-2])
        return t - neighbour_mean(t, p, gh, gw, self.difference_radius)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise NotImplementedError("DifferenceSimilarityAttention takes no attention mask")
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.differences(self.q_norm(q)), self.differences(self.k_norm(k))
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            x = self.attn_drop(((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)) @ v
        x = x.transpose(1, 2).reshape(b, n, self.attn_dim)
        return self.proj_drop(self.proj(self.norm(x)))


class EntropyDiffAttention(DiffAttention):
    """Differential attention whose lambda is the normalised Shannon entropy of each query's second map.

    timm's DiffAttention splits each head into two query/key halves and computes::

        A1 = softmax(scale * Q1 K1^T)     A2 = softmax(scale * Q2 K2^T)     O = (A1 - lambda * A2) V

    with one learned scalar ``lambda`` per layer (from ``lambda_q1 . lambda_k1`` etc. plus ``lambda_init``).
    Here, per head h and query i::

        lambda_hi = H(A2_hi) / log N,     H(a) = -sum_j a_j log a_j

    the entropy of the row of ``A2`` (the map that is subtracted, a distribution over the N keys), divided
    by its maximum so it lies in [0, 1]. A diffuse second map (noise spread over every key) is subtracted
    fully; a peaked one (it found something) is kept. Gradients flow through lambda. The learned lambda
    parameters are removed; GroupNorm-style ``sub_norm`` and the ``(1 - lambda_init)`` output scale stay as
    in DiffAttention. Always the unfused path: the entropy needs the maps.
    """

    def __init__(self, dim: int, num_heads: int = 8, **kwargs) -> None:
        kwargs["dual_lambda"] = True
        super().__init__(dim, num_heads=num_heads, **kwargs)
        self.lambda_a = None   # lambda comes from the entropy, not from parameters
        self.lambda_b = None

    def reset_parameters(self) -> None:
        pass

    def maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(A1, A2, lambda, v)``: the two maps ``[B,h,N,N]``, lambda ``[B,h,N,1]``, values ``[B,h,N,2d]``."""
        b, n, _ = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=2)
        q = q.reshape(b, n, 2 * self.num_heads, self.head_dim).transpose(1, 2)
        k = k.reshape(b, n, 2 * self.num_heads, self.head_dim).transpose(1, 2)
        v = v.reshape(b, n, self.num_heads, 2 * self.head_dim).transpose(1, 2)
        q, k = self.q_norm(q), self.k_norm(k)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1).view(b, self.num_heads, 2, n, n)
        a1, a2 = attn[:, :, 0], attn[:, :, 1]
        entropy = -(a2 * torch.log(a2.clamp_min(torch.finfo(a2.dtype).tiny))).sum(dim=-1, keepdim=True)
        return a1, a2, entropy / math.log(n), v

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise NotImplementedError("EntropyDiffAttention takes no attention mask")
        b, n, c = x.shape
        a1, a2, lam, v = self.maps(x)
        x = self.attn_drop(a1 - lam * a2) @ v
        x = self.sub_norm(x) * (1 - self.lambda_init)
        x = self.norm(x.transpose(1, 2).reshape(b, n, c))
        return self.proj_drop(self.proj(x))
