"""Tables and figures from a prepared experiment or from a run folder's files.

Everything here reads what training wrote (``history.csv``, ``metrics.json``) or the data; nothing
trains. Figures are matplotlib/seaborn and are returned, so notebooks show them and scripts save them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..runs.folder import read_history_table


def class_counts(exp) -> pd.DataFrame:
    """Tiles per class in each split, with totals."""
    names = exp.class_names
    table = pd.DataFrame({split: np.bincount(exp.data.labels[idx], minlength=len(names))
                          for split, idx in exp.splits.items()}, index=list(names))
    table.loc["total"] = table.sum()
    return table


def sample_tiles(exp, per_class: int = 6, split: str = "train", seed: int = 0, gap: int = 4):
    """A grid of tiles: one row per class (drawn as one image, so it renders fast)."""
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    idx = exp.splits[split]
    labels = exp.data.labels[idx]
    t = exp.data.images.shape[1]
    cell = t + gap
    mosaic = np.full((len(exp.class_names) * cell, per_class * cell, 3), 255, dtype=np.uint8)
    for k in range(len(exp.class_names)):
        mine = idx[labels == k]
        chosen = rng.choice(mine, size=min(per_class, len(mine)), replace=False) if len(mine) else []
        for j, i in enumerate(chosen):
            mosaic[k * cell:k * cell + t, j * cell:j * cell + t] = exp.data.images[i]
    fig, ax = plt.subplots(figsize=(per_class * 1.1 + 1.6, len(exp.class_names) * 1.1))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_yticks([(k + 0.5) * cell for k in range(len(exp.class_names))], list(exp.class_names), fontsize=8)
    ax.set_xticks([])
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(f"{split} tiles ({t} x {t} px)", fontsize=9)
    fig.tight_layout()
    return fig


def model_summary(exp) -> pd.DataFrame:
    """Parameter counts by part, and which stage trains them."""
    counts = exp.model.parameter_counts()
    parts = {"backbone": sum(p.numel() for p in exp.model.backbone.parameters()),
             "projection + norm": sum(p.numel() for m in (exp.model.proj, exp.model.norm) for p in m.parameters()),
             f"head ({exp.config.model.head})": sum(p.numel() for p in exp.model.head.parameters())}
    table = pd.DataFrame({"parameters": parts,
                          "stage 1": {k: k != "backbone" for k in parts},
                          "stage 2": {k: True for k in parts}})
    table.loc["total"] = [counts["n_params"], "", ""]
    return table


def read_history(run_dir) -> pd.DataFrame:
    """history.csv with a running epoch number across both stages."""
    history = read_history_table(run_dir)
    history["step"] = np.arange(1, len(history) + 1)
    return history


def learning_curves(run_dir):
    """Loss and accuracy per epoch for both stages; the best validation epoch is marked."""
    import matplotlib.pyplot as plt

    h = read_history(run_dir)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.4))
    for split, style in (("train", "-"), ("val", "--")):
        ax_loss.plot(h["step"], h[f"{split}_loss"], style, label=split)
        ax_acc.plot(h["step"], h[f"{split}_acc"], style, label=split)
    if (h["stage"] == 1).any() and (h["stage"] == 2).any():
        boundary = h.loc[h["stage"] == 1, "step"].max() + 0.5
        for ax in (ax_loss, ax_acc):
            ax.axvline(boundary, color="grey", lw=0.8)
            ax.text(boundary, 1.0, " stage 2", transform=ax.get_xaxis_transform(), fontsize=8, va="top")
    best = h.loc[h["val_acc"].idxmax()]
    ax_acc.scatter([best["step"]], [best["val_acc"]], color="red", zorder=3, label=f"best val {best['val_acc']:.4f}")
    ax_loss.set(xlabel="epoch (both stages)", ylabel="loss")
    ax_acc.set(xlabel="epoch (both stages)", ylabel="accuracy")
    ax_loss.legend()
    ax_acc.legend()
    fig.tight_layout()
    return fig


def compare_curves(runs: dict[str, str | Path], group=None):
    """Validation accuracy and training loss per epoch of several runs (label -> run folder).

    For comparisons that should agree within seed noise, e.g. the fast and the per-tile data path.
    ``group(label)`` names a run's group (default: the label up to its first ``_``); runs of one
    group share a colour and differ in line style, so a gap between groups stands out from seed noise.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    group = group or (lambda label: label.split("_")[0])
    colours, styles = {}, {}
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.4))
    for label, run_dir in runs.items():
        g = group(label)
        colour = colours.setdefault(g, f"C{len(colours)}")
        k = styles[g] = styles.get(g, -1) + 1
        style = dict(color=colour, linestyle=("-", "--", ":", "-.")[k % 4], label=label)
        h = read_history(run_dir)
        ax_acc.plot(h["step"], h["val_acc"], **style)
        ax_loss.plot(h["step"], h["train_loss"], **style)
    for ax, ylabel in ((ax_loss, "train loss"), (ax_acc, "val accuracy")):
        ax.set(xlabel="epoch (both stages)", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_acc.legend(fontsize=8)
    fig.tight_layout()
    return fig


def confusion_matrix(metrics: dict, normalize: bool = True):
    """The test confusion matrix (rows: true class)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    cm = np.asarray(metrics["test_confusion"], dtype=float)
    if normalize:
        cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7, 6))
    sns.heatmap(cm, annot=True, fmt=".2f" if normalize else ".0f", cmap="Blues", cbar=False, ax=ax,
                xticklabels=metrics["class_names"], yticklabels=metrics["class_names"], annot_kws={"size": 7})
    ax.set(xlabel="predicted", ylabel="true", title=f"test accuracy {metrics['test_acc']:.4f}")
    fig.tight_layout()
    return fig


def per_class_accuracy(metrics: dict):
    import matplotlib.pyplot as plt
    import seaborn as sns

    acc = pd.Series(metrics["per_class_test_acc"], dtype=float).sort_values()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    sns.barplot(x=acc.values, y=acc.index, ax=ax, color="steelblue")
    ax.set(xlabel="test accuracy", xlim=(max(0.0, acc.min() - 0.05), 1.0))
    fig.tight_layout()
    return fig


def run_summary(metrics: dict) -> pd.Series:
    keys = ("status", "best_val_acc", "best_stage", "best_epoch", "stage1_best_val_acc", "test_acc", "test_loss",
            "n_params", "wall_seconds", "train_images_per_second", "device")
    return pd.Series({k: metrics.get(k) for k in keys})
