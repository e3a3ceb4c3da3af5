"""Attention maps: per-class maps from any head, upsampling, overlays on EuroSAT tiles.

Shape letters: B batch, S slots, K classes, P slots per class, N = h*w tokens, H x W tile pixels.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def class_attention(attn: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``attn [B,S,N]`` -> ``[B,K,N]``: a class's P slots summed (SCOUTER's visualisation)."""
    b, s, n = attn.shape
    return attn.view(b, num_classes, s // num_classes, n).sum(2)


@torch.no_grad()
def attention_maps(model, images: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[B,K]`` and per-class maps ``[B,K,size,size]`` upsampled bilinearly from the token grid."""
    model.eval()
    logits, attn = model(images)                                        # [B,K], [B,S,N]
    maps = class_attention(attn.float(), model.num_classes)             # [B,K,N]
    h, w = model.token_grid(images.shape[-1])
    maps = maps.view(*maps.shape[:2], h, w)                             # [B,K,h,w]
    return logits.float(), F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)


def plot_attention(tiles: np.ndarray, maps: torch.Tensor, labels: Sequence[int], preds: Sequence[int],
                   class_names: Sequence[str], classes: Sequence[int] | None = None, alpha: float = 0.55):
    """One row per tile: the tile, then each class's map over it. True class framed green, prediction
    titled in red when wrong. ``tiles`` are uint8 ``[B,H,W,3]``."""
    import matplotlib.pyplot as plt

    classes = list(range(len(class_names))) if classes is None else list(classes)
    rows, cols = len(tiles), len(classes) + 1
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.7 * rows), squeeze=False)
    for r, tile in enumerate(tiles):
        ok = labels[r] == preds[r]
        axes[r, 0].imshow(tile)
        axes[r, 0].set_title(f"true {class_names[labels[r]]}\npred {class_names[preds[r]]}", fontsize=7,
                             color="black" if ok else "red")
        for c, k in enumerate(classes, 1):
            ax = axes[r, c]
            ax.imshow(tile)
            ax.imshow(maps[r, k].cpu().numpy(), cmap="jet", alpha=alpha, vmin=float(maps[r].min()),
                      vmax=float(maps[r].max()))
            if r == 0:
                ax.set_title(class_names[k], fontsize=7)
            if k == labels[r]:
                for spine in ax.spines.values():
                    spine.set(color="lime", linewidth=3)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def plot_split_attention(exp, split: str = "val", n: int = 4, seed: int = 0):
    """Per-class attention over ``n`` tiles of a split of a prepared :class:`slotlib.train.Experiment`."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(exp.splits[split], size=min(n, len(exp.splits[split])), replace=False))
    tiles = np.asarray(exp.data.images[idx])                            # [B,64,64,3] uint8
    _, eval_tf = _eval_transform(exp)
    images = torch.stack([eval_tf(torch.from_numpy(t).permute(2, 0, 1).contiguous()) for t in tiles])
    logits, maps = attention_maps(exp.model, images.to(exp.device), size=tiles.shape[1])
    labels = exp.data.labels[idx].tolist()
    return plot_attention(tiles, maps, labels, logits.argmax(1).tolist(), exp.class_names)


def _eval_transform(exp):
    from .data import build_transforms
    return build_transforms(exp.config.data.image_size, exp.mean, exp.std, augment=False)
