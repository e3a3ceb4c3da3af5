"""Attention figures: per-class maps overlaid on tiles, class means, right and wrong predictions, and
the interactive explorer (ipywidgets). They read predictions of :mod:`slotlib.classify.explain`.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from .explain import Predictions, predict_split, upsample


def plot_attention(tiles: np.ndarray, maps: torch.Tensor, labels: Sequence[int], preds: Sequence[int],
                   class_names: Sequence[str], classes: Sequence[int] | None = None, alpha: float = 0.55,
                   bounded: bool = True):
    """One row per tile: the tile, then each class's map over it, all on one colour scale from 0 to the
    largest value drawn (the colour bar says it; near-empty maps of a ``bounded`` head are said to be).
    True class framed green, a wrong prediction framed and labelled red. ``tiles`` are uint8
    ``[B,H,W,3]``; ``maps [B,K,h,w]`` (any h, w: drawn bilinear at the tile's size). One image, so it
    draws in a fraction of a second."""
    import matplotlib
    import matplotlib.pyplot as plt

    from ..runs.report_figures import heatmap_mosaic, map_scale

    classes = list(range(len(class_names))) if classes is None else list(classes)
    heat = maps[:, classes].float().cpu().numpy()                       # [B,C,h,w]
    scale = map_scale(heat, bounded)
    where = {k: c for c, k in enumerate(classes)}
    mosaic = heatmap_mosaic({"tiles": np.asarray(tiles), "maps": heat,
                             "labels": [where.get(int(k), -1) for k in labels],
                             "preds": [where.get(int(k), -1) for k in preds]},
                            list(range(len(tiles))), scale.vmax, alpha=alpha)
    cell = mosaic.shape[1] / (len(classes) + 1)
    fig, ax = plt.subplots(figsize=(1.0 * (len(classes) + 1) + 2.0, 1.0 * len(tiles) + 1.0))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_xticks([(c + 0.5) * cell for c in range(len(classes) + 1)], ["tile"] + [class_names[k] for k in classes],
                  rotation=35, ha="left", fontsize=8)
    ax.xaxis.tick_top()
    ax.set_yticks([(r + 0.5) * cell for r in range(len(tiles))],
                  [f"{class_names[t]} → {class_names[p]}" for t, p in zip(labels, preds)], fontsize=8)
    for tick, t, p in zip(ax.get_yticklabels(), labels, preds):
        tick.set_color("black" if t == p else "red")
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    if scale.near_empty:
        ax.set_title(scale.note(), fontsize=9, color="darkred")
    bar = fig.colorbar(matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0, scale.vmax), cmap="jet"),
                       ax=ax, fraction=0.025, pad=0.01)
    bar.set_label(scale.label(), fontsize=8)
    fig.tight_layout()
    return fig


def plot_split_attention(exp, split: str = "val", n: int = 4, seed: int = 0):
    """Per-class attention over ``n`` tiles of a split of a prepared :class:`slotlib.classify.experiment.Experiment`."""
    return plot_tiles(predict_split(exp, split, limit=n, seed=seed), exp.class_names, n)


def plot_tiles(pred: "Predictions", class_names: Sequence[str], n: int = 6, seed: int = 0):
    """``n`` tiles of a prediction set, one row each, every class's map over it."""
    pick = np.sort(np.random.default_rng(seed).permutation(len(pred.labels))[:n])
    maps = upsample(pred.classes[pick], pred.tiles.shape[1])
    return plot_attention(pred.tiles[pick], maps, pred.labels[pick].tolist(), pred.preds[pick].tolist(), class_names,
                          bounded=pred.bounded)


def plot_mean_attention(pred: Predictions, class_names: Sequence[str]):
    """For each class, its map averaged over the tiles of that class (where does the slot look?), every
    class on one colour scale from 0 to the largest mean drawn."""
    import matplotlib.pyplot as plt

    from ..runs.report_figures import map_scale

    k = len(class_names)
    cols = min(5, k)
    fig, axes = plt.subplots(math.ceil(k / cols), cols, figsize=(2.2 * cols, 2.3 * math.ceil(k / cols)), squeeze=False)
    maps = pred.classes
    means = {c: maps[pred.labels == c, c].mean(0) for c in range(k) if (pred.labels == c).any()}
    scale = map_scale(torch.stack(list(means.values())).numpy() if means else np.zeros(1), pred.bounded)
    image = None
    for c, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if c >= k:
            ax.axis("off")
            continue
        n = int((pred.labels == c).sum())
        if c in means:
            image = ax.imshow(upsample(means[c][None, None], 64)[0, 0].numpy(), cmap="jet", vmin=0, vmax=scale.vmax)
        ax.set_title(f"{class_names[c]} (n={n})", fontsize=7)
    fig.suptitle("mean attention of each class's slots over tiles of that class"
                 + (f"\n{scale.note()}" if scale.near_empty else ""), fontsize=9)
    fig.tight_layout()
    if image is not None:
        fig.colorbar(image, ax=list(axes.flat), fraction=0.02).set_label(scale.label(), fontsize=7)
    return fig


def plot_correct_and_wrong(pred: Predictions, class_names: Sequence[str], n: int = 4, seed: int = 0):
    """Correct predictions (left) beside wrong ones (right): tile, true class's map, predicted class's map."""
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    right, wrong = np.flatnonzero(pred.labels == pred.preds), np.flatnonzero(pred.labels != pred.preds)
    pick = [rng.permutation(group)[:n] for group in (right, wrong)]
    rows = max(1, max(len(p) for p in pick))
    from ..runs.report_figures import map_scale

    fig, axes = plt.subplots(rows, 6, figsize=(10, 1.8 * rows), squeeze=False)
    maps = upsample(pred.classes, pred.tiles.shape[1])
    shown = [maps[i, [pred.labels[i], pred.preds[i]]] for group in pick for i in group]
    scale = map_scale(torch.stack(shown).numpy() if shown else np.zeros(1), pred.bounded)
    image = None
    for half, (group, title) in enumerate(zip(pick, ("correct", "wrong"))):
        for r in range(rows):
            cells = axes[r, 3 * half:3 * half + 3]
            for ax in cells:
                ax.set_xticks([])
                ax.set_yticks([])
            if r >= len(group):
                for ax in cells:
                    ax.axis("off")
                continue
            i = group[r]
            cells[0].imshow(pred.tiles[i])
            cells[0].set_title(f"{title}: {class_names[pred.labels[i]]}", fontsize=7)
            for ax, k, what in ((cells[1], pred.labels[i], "true"), (cells[2], pred.preds[i], "pred")):
                ax.imshow(pred.tiles[i])
                image = ax.imshow(maps[i, k].numpy(), cmap="jet", alpha=0.55, vmin=0, vmax=scale.vmax)
                ax.set_title(f"{what} {class_names[k]}", fontsize=7)
    if scale.near_empty:
        fig.suptitle(scale.note(), fontsize=9, color="darkred")
    fig.tight_layout()
    if image is not None:
        fig.colorbar(image, ax=list(axes.flat), fraction=0.02).set_label(scale.label(), fontsize=7)
    return fig


def explorer(pred: Predictions, class_names: Sequence[str]):
    """An ipywidgets explorer: pick a class, a tile (or only misclassified ones) and a slot."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    from ..runs.report_figures import map_scale

    scale = map_scale(pred.slots.numpy(), pred.bounded)      # one scale for every slot and tile
    per_class = pred.slots.shape[1] // pred.num_classes
    slot_options = [(f"{class_names[s // per_class]}" + (f" #{s % per_class + 1}" if per_class > 1 else ""), s)
                    for s in range(pred.slots.shape[1])]
    cls = widgets.Dropdown(options=[("all classes", -1)] + [(n, k) for k, n in enumerate(class_names)],
                           description="class")
    only_wrong = widgets.Checkbox(description="misclassified only")
    tile = widgets.IntSlider(description="tile", min=0, max=0)
    slot = widgets.Dropdown(options=slot_options, description="slot")
    out = widgets.Output()

    def chosen() -> np.ndarray:
        keep = np.ones(len(pred.labels), bool) if cls.value < 0 else pred.labels == cls.value
        if only_wrong.value:
            keep &= pred.labels != pred.preds
        return np.flatnonzero(keep)

    def draw(*_):
        options = chosen()
        tile.max = max(0, len(options) - 1)
        out.clear_output(wait=True)
        with out:
            if not len(options):
                print("no tile matches")
                return
            i = options[min(tile.value, len(options) - 1)]
            fig, axes = plt.subplots(1, 2, figsize=(6, 3))
            attn = upsample(pred.slots[i:i + 1, slot.value:slot.value + 1], pred.tiles.shape[1])[0, 0].numpy()
            axes[0].imshow(pred.tiles[i])
            axes[0].set_title(f"true {class_names[pred.labels[i]]}, pred {class_names[pred.preds[i]]}", fontsize=8,
                              color="black" if pred.labels[i] == pred.preds[i] else "red")
            axes[1].imshow(pred.tiles[i])
            axes[1].imshow(attn, cmap="jet", alpha=0.55, vmin=0, vmax=scale.vmax)
            axes[1].set_title(f"slot: {dict((v, k) for k, v in slot_options)[slot.value]}\n"
                              f"colours 0 to {scale.vmax:.3g}" + (" (near-empty maps)" if scale.near_empty else ""),
                              fontsize=8)
            for ax in axes:
                ax.axis("off")
            plt.show()

    for w in (cls, only_wrong, tile, slot):
        w.observe(draw, names="value")
    draw()
    return widgets.VBox([widgets.HBox([cls, only_wrong]), widgets.HBox([tile, slot]), out])
