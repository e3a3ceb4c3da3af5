"""The explanation benchmark's figures (``explanations.npz`` of ``slotlib explain``), without torch: the head's
map and its evidence beside Grad-CAM, and each class's map on mosaics of four classes."""

from __future__ import annotations

import numpy as np

from .report_figures import map_scale


def _mosaic_image(tiles: np.ndarray) -> np.ndarray:
    """Four uint8 tiles ``[4,T,T,3]`` -> one ``[2T,2T,3]`` image, row-major quadrants (as the benchmark's)."""
    return np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:4], 1)], 0)


def _rows(figures: dict[str, np.ndarray], prefix: str = "") -> list[tuple[str, np.ndarray, object]]:
    """(label, maps, scale or None for Grad-CAM's own 0-1) for the head's map, its evidence (when the file
    has it; positive part drawn) and Grad-CAM."""
    rows = []
    head = figures[f"{prefix}head_maps"].astype(float)
    rows.append((f"{figures.get('head', 'head')} map", head, map_scale(head, bool(figures.get("bounded", False)))))
    if f"{prefix}evidence_maps" in figures:
        ev = figures[f"{prefix}evidence_maps"].astype(float)
        rows.append(("evidence", ev, map_scale(ev, False)))
    if f"{prefix}gradcam_maps" in figures:
        rows.append(("Grad-CAM", figures[f"{prefix}gradcam_maps"].astype(float), None))
    return rows


def _caption(rows) -> str:
    parts = [f"Head maps: {rows[0][2].caption()}"]
    if any(label == "evidence" for label, *_ in rows):
        parts.append("Evidence: each token's term of the class's logit less the mean class's (what softmax reads), "
                     "0 to its largest value, negative drawn as 0.")
    parts.append("Grad-CAM: each map scaled 0 to 1 by pytorch-grad-cam.")
    return " ".join(parts)


def plot_head_vs_gradcam(figures: dict[str, np.ndarray], title: str, alpha: float = 0.55):
    """The same test tiles (one per class) explained by the head's own map, its evidence and Grad-CAM, for
    the predicted class, from a cell's ``explanations.npz``. The head's maps share one scale
    (:class:`MapScale`), as do the evidence maps; Grad-CAM's are pytorch-grad-cam's, each tile's scaled
    0 to 1 by the package, which the label says."""
    import matplotlib.pyplot as plt

    names = [str(n) for n in figures["class_names"]]
    tiles, labels, preds = figures["tiles"], figures["labels"], figures["preds"]
    rows = _rows(figures)
    near_empty = rows[0][2].near_empty
    n = len(tiles)
    fig, axes = plt.subplots(1 + len(rows), n, figsize=(1.15 * n + 1.4, 1.5 * (1 + len(rows)) + 0.3), squeeze=False)
    fig.subplots_adjust(top=0.8 if near_empty else 0.84, bottom=0.1, wspace=0.08, hspace=0.12)
    for i in range(n):
        for ax in axes[:, i]:
            ax.imshow(tiles[i], extent=(0, 1, 1, 0))
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, i].set_title(f"{names[labels[i]]}\n→ {names[preds[i]]}", fontsize=7,
                             color="black" if labels[i] == preds[i] else "red")
    axes[0, 0].set_ylabel("tile", fontsize=8)
    for r, (label, maps, scale) in enumerate(rows, start=1):
        vmax = scale.vmax if scale else 1.0
        for i in range(n):
            im = axes[r, i].imshow(maps[i], cmap="jet", alpha=alpha, vmin=0, vmax=vmax, extent=(0, 1, 1, 0))
        axes[r, 0].set_ylabel(label, fontsize=8)
        fig.colorbar(im, ax=list(axes[r]), fraction=0.02, pad=0.01).set_label(
            f"0 to {vmax:.3g}" if scale else "0 to 1 per tile", fontsize=7)
    fig.suptitle(title + (f"\n{rows[0][2].note()}" if near_empty else ""), fontsize=9,
                 color="darkred" if near_empty else "black")
    fig.text(0.01, 0.005, _caption(rows), fontsize=7, wrap=True)
    return fig


def plot_mosaic_maps(figures: dict[str, np.ndarray], title: str, alpha: float = 0.55, count: int = 2):
    """2 x 2 mosaics of test tiles of four classes, and each of the four classes' maps on the mosaic: the
    head's own (one scale for all, :class:`MapScale`), its evidence (likewise) and Grad-CAM's (scaled 0 to 1
    per map by pytorch-grad-cam). A map that localises lights up its own class's quadrant, outlined in white."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    names = [str(n) for n in figures["class_names"]]
    tiles, classes = figures["mosaic_tiles"], figures["mosaic_classes"]
    count = min(count, len(classes))
    rows = [(label, maps, map_scale(maps[:count], scale.bounded) if scale else None)
            for label, maps, scale in _rows(figures, "mosaic_")]
    fig, axes = plt.subplots(count * len(rows), 5, figsize=(7.4, 1.55 * count * len(rows) + 0.6), squeeze=False)
    for m in range(count):
        image = _mosaic_image(tiles[4 * m:4 * m + 4])
        for r, (what, maps, scale) in enumerate(rows):
            line = axes[m * len(rows) + r]
            line[0].imshow(image, extent=(0, 1, 1, 0))
            line[0].set_ylabel(what, fontsize=8)
            for q in range(4):
                ax = line[q + 1]
                ax.imshow(image, extent=(0, 1, 1, 0))
                ax.imshow(maps[m, q], cmap="jet", alpha=alpha, vmin=0, vmax=scale.vmax if scale else 1.0,
                          extent=(0, 1, 1, 0))
                ax.add_patch(Rectangle(((q % 2) / 2, (q // 2) / 2), 0.5, 0.5, fill=False, edgecolor="white", lw=1.5))
                ax.set_title(names[classes[m, q]], fontsize=7)
            for ax in line:
                ax.set_xticks([])
                ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.text(0.01, 0.005, _caption(rows) + " White: the class's own quadrant.", fontsize=7, wrap=True)
    return fig
