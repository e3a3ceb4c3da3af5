"""The report's figures, drawn from what cells wrote (metrics.json, history.csv, maps.npz): no torch.

Accuracies are drawn in percent. Heatmaps: each class's attention over fixed test tiles, from the
cell's ``maps.npz`` (:func:`slotlib.classify.explain.write_maps` writes it at the end of a run).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .folder import DamagedRunFile, read_history_table


def axis_label(value) -> str:
    """A grid value as a category: 'null' for None (NaN once pandas has seen a number beside it),
    not 'nan', which seaborn takes for a missing value; 32.0 back to 32."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "null"
    return f"{value:g}" if isinstance(value, float) else str(value)


def plot_axes(table: pd.DataFrame, axes: list[str]):
    """Validation and test accuracy against each grid axis (one panel per axis, seeds as points)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    done = table[table["status"] == "done"]
    shown = [a for a in axes if a != "seed"] or ["head"]
    fig, panels = plt.subplots(1, len(shown), figsize=(min(4 * len(shown), 12), 3.3), squeeze=False)
    long = done.melt(id_vars=shown, value_vars=["best_val_acc", "test_acc"], var_name="split", value_name="accuracy")
    long["split"] = long["split"].map({"best_val_acc": "validation", "test_acc": "test"})
    long["accuracy"] = 100 * long["accuracy"].astype(float)
    for ax, axis in zip(panels[0], shown):
        data = long.assign(**{axis: long[axis].map(axis_label)})
        sns.pointplot(data=data, x=axis, y="accuracy", hue="split", ax=ax, dodge=0.3, errorbar="sd",
                      linestyles="none", markers=["o", "s"])
        ax.set(title=f"accuracy by {axis} (mean ± sd over seeds)", ylabel="accuracy (%)")
        ax.title.set_fontsize(9)
    fig.tight_layout()
    return fig


def plot_top_curves(runs_dir: str | os.PathLike, cells: list[str]):
    """Validation accuracy per epoch of the given cells (the best ones), both stages end to end."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for cell in cells:
        try:
            h = read_history_table(Path(runs_dir) / cell)
        except DamagedRunFile as err:   # the curve is left out and the problem said on the figure
            ax.plot([], [], label=f"{cell}: {err}"[:120])
            continue
        ax.plot(np.arange(1, len(h) + 1), 100 * h["val_acc"], label=cell, marker=".")
    ax.set(xlabel="epoch (stage 1, then stage 2)", ylabel="validation accuracy (%)",
           title=f"learning curves of the {len(cells)} best cells")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_params_vs_accuracy(table: pd.DataFrame, reference: tuple[float, float] | None = None):
    """Test accuracy against parameter count, one point per finished cell (and the reference, if given)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    done = table[table["status"] == "done"].assign(
        params_m=lambda t: t["n_params"].astype(float) / 1e6, test_pct=lambda t: 100 * t["test_acc"].astype(float))
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    hue = "head" if "head" in done.columns else None
    sns.scatterplot(data=done, x="params_m", y="test_pct", hue=hue, ax=ax)
    if reference is not None:
        ax.scatter([reference[1] / 1e6], [100 * reference[0]], marker="*", s=120, color="black", label="reference")
        ax.legend(fontsize=8)
    ax.set(xlabel="parameters (millions)", ylabel="test accuracy (%)", title="test accuracy against model size")
    fig.tight_layout()
    return fig


def plot_budget_curve(table: pd.DataFrame, marks: dict[str, str] | None = None, target: float | None = None):
    """Test accuracy against training minutes, one point per finished cell, one colour per configuration (its
    name less seed); ``marks`` labels configurations (``{"scouter_ep8": "fast recipe"}``) with a ring,
    ``target`` (a fraction) draws a dashed line."""
    import matplotlib.pyplot as plt

    from .compare import train_minutes
    from .folder import config_of

    done = table[table["status"] == "done"].assign(minutes=train_minutes, test_pct=lambda t: 100 * t["test_acc"].astype(float),
                                                   config=lambda t: t["cell"].map(config_of))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for config, cells in done.groupby("config", sort=False):
        points = ax.scatter(cells["minutes"], cells["test_pct"], s=28, label=config, zorder=3)
        if marks and config in marks:
            ax.scatter(cells["minutes"], cells["test_pct"], s=150, facecolors="none", zorder=2,
                       edgecolors=points.get_facecolor(), linewidths=1.5)
            ax.annotate(marks[config], (cells["minutes"].mean(), cells["test_pct"].max()), xytext=(0, 8),
                        textcoords="offset points", ha="center", fontsize=8)
    if target is not None:
        ax.axhline(100 * target, ls="--", lw=0.8, color="grey")
    ax.margins(x=0.1, y=0.12)   # room for the labels above the highest points and beside the outermost
    ax.set(xlabel="training minutes per cell (validation included, final test excluded)", ylabel="test accuracy (%)",
           title="test accuracy against training time")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def plot_confusion(metrics: dict, title: str):
    """The test confusion matrix of one cell (rows: true class, columns: predicted), counts and row percent."""
    import matplotlib.pyplot as plt

    counts = np.asarray(metrics["test_confusion"], dtype=float)
    names = metrics.get("class_names") or [str(i) for i in range(len(counts))]
    rows = counts.sum(1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    fig, ax = plt.subplots(figsize=(7.5, 6.2))
    image = ax.imshow(100 * share, cmap="Blues", vmin=0, vmax=100)
    for i, j in np.ndindex(counts.shape):
        if counts[i, j]:
            ax.text(j, i, f"{counts[i, j]:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    fig.colorbar(image, ax=ax, label="share of the true class's test tiles (%)", fraction=0.046)
    fig.tight_layout()
    return fig


NEAR_EMPTY = 0.05   # a bounded head (range 0 to 1) whose drawn maps never exceed this has near-empty maps


@dataclass(frozen=True)
class MapScale:
    """One colour scale for every map of a figure: 0 to the largest value drawn, said in the colour bar.

    Each figure is stretched to its own largest value, so that maps with little attention still show
    their structure; the label states the range, and maps of a bounded head (0 to 1) whose largest value
    is under ``NEAR_EMPTY`` are called near-empty, so a stretch of near-zero maps is never taken for a
    strong map. One scale for all of a figure's maps: maps are not stretched tile by tile."""

    largest: float
    bounded: bool

    @property
    def vmax(self) -> float:
        return self.largest if self.largest > 0 else 1.0

    @property
    def near_empty(self) -> bool:
        return self.bounded and self.largest < NEAR_EMPTY

    def label(self, what: str | None = None) -> str:
        """The colour bar's label, e.g. 'attention, 0 to 0.036 (largest drawn)'."""
        what = what or ("attention" if self.bounded else "class activation")
        return f"{what}, 0 to {self.vmax:.3g} (largest drawn)"

    def caption(self) -> str:
        """A sentence under a figure: the range drawn and what it is out of."""
        out = (f"Colours from 0 to {self.vmax:.3g}, the largest value drawn"
               + (" (attention is 0 to 1 per slot)" if self.bounded else "; negative class activation drawn as 0"))
        return out + (f"; {self.note()}." if self.near_empty else ".")

    def note(self) -> str:
        """A sentence for the title when the maps are near-empty, else ''."""
        if not self.near_empty:
            return ""
        return (f"near-empty maps: the largest attention drawn is {self.largest:.3g} of a possible 1 "
                f"(colours stretched to it)")


def map_scale(values, bounded: bool) -> MapScale:
    """The scale of a figure drawing ``values`` (any shape; NaN ignored)."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    return MapScale(float(finite.max()) if finite.size else 0.0, bool(bounded))


def _upsample(heat: np.ndarray, size: int) -> np.ndarray:
    """A token-grid map ``[h,w]`` to ``[size,size]``, bilinear (PIL, so the report needs no torch)."""
    from PIL import Image

    return np.asarray(Image.fromarray(heat.astype(np.float32), mode="F").resize((size, size), Image.BILINEAR))


def heatmap_mosaic(maps: dict[str, np.ndarray], rows: list[int], vmax: float, cmap: str = "jet",
                   alpha: float = 0.5, gap: int = 6, frame: int = 3) -> np.ndarray:
    """One RGB image ``[R*(T+gap), (K+1)*(T+gap), 3]``: per row a tile, then each class's map blended over it,
    coloured from 0 to ``vmax`` (:class:`MapScale`); the true class's panel framed green, a wrong prediction's
    red (drawn as one image: fast to render)."""
    import matplotlib

    colours = matplotlib.colormaps[cmap]
    tiles = maps["tiles"]
    t, k = tiles.shape[1], maps["maps"].shape[1]
    cell = t + gap
    out = np.ones((len(rows) * cell, (k + 1) * cell, 3))
    for r, i in enumerate(rows):
        tile = tiles[i].astype(float) / 255
        heat = maps["maps"][i].astype(float)                                    # [K,h,w]
        y = r * cell + gap // 2
        out[y:y + t, gap // 2:gap // 2 + t] = tile
        for c in range(k):
            x = (c + 1) * cell + gap // 2
            rgb = colours(np.clip(_upsample(heat[c], t) / vmax, 0, 1))[..., :3]
            out[y:y + t, x:x + t] = (1 - alpha) * tile + alpha * rgb
            edge = (0.0, 0.6, 0.0) if c == maps["labels"][i] else ((0.85, 0.0, 0.0) if c == maps["preds"][i] else None)
            if edge is not None:
                for ys, xs in ((slice(y, y + frame), slice(x, x + t)), (slice(y + t - frame, y + t), slice(x, x + t)),
                               (slice(y, y + t), slice(x, x + frame)), (slice(y, y + t), slice(x + t - frame, x + t))):
                    out[ys, xs] = edge
    return out


def attention_bounded(maps: dict[str, np.ndarray]) -> bool:
    """Whether the head's maps lie in [0, 1] (sigmoid; softmax over slots), so they are drawn on that fixed
    scale (the head's ``bounded_attention``, which maps.npz records)."""
    return bool(maps["bounded"]) if "bounded" in maps else False


def plot_heatmaps(maps: dict[str, np.ndarray], title: str, per_class: int = 1):
    """Each class's attention over fixed test tiles: one row per tile (``per_class`` of each class),
    the tile, then every class's map overlaid on it. The true class's panel is framed green, the
    predicted one red when it differs. Colours: 0 to the largest value drawn, one scale for the whole
    figure (:class:`MapScale`: the colour bar states it, and near-empty maps are said to be)."""
    import matplotlib
    import matplotlib.pyplot as plt

    names = [str(n) for n in maps["class_names"]]
    labels, preds, probs = maps["labels"], maps["preds"], maps["probs"].astype(float)
    k = len(names)
    rows = [int(i) for c in range(k) for i in np.flatnonzero(labels == c)[:per_class]]
    scale = map_scale(maps["maps"][rows], attention_bounded(maps))
    mosaic = heatmap_mosaic(maps, rows, scale.vmax)
    cell = mosaic.shape[1] / (k + 1)
    fig, ax = plt.subplots(figsize=(1.0 * (k + 1) + 2.2, 1.0 * len(rows) + 1.2))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_xticks([(c + 0.5) * cell for c in range(k + 1)], ["tile"] + names, rotation=35, ha="left", fontsize=8)
    ax.xaxis.tick_top()
    ax.set_yticks([(r + 0.5) * cell for r in range(len(rows))],
                  [f"{names[labels[i]]} → {names[preds[i]]} {100 * probs[i, preds[i]]:.0f}%" for i in rows], fontsize=8)
    for tick, i in zip(ax.get_yticklabels(), rows):
        tick.set_color("black" if preds[i] == labels[i] else "red")
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(title + (f"\n{scale.note()}" if scale.near_empty else ""), fontsize=10,
                 color="darkred" if scale.near_empty else "black")
    norm = matplotlib.colors.Normalize(0, scale.vmax)
    bar = fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap="jet"), ax=ax, fraction=0.025, pad=0.01)
    bar.set_label(scale.label(), fontsize=8)
    fig.tight_layout()
    return fig


def plot_mean_maps(maps: dict[str, np.ndarray], title: str):
    """Class k's attention averaged over test tiles of class k, on the token grid (one panel per class)."""
    import matplotlib.pyplot as plt

    names = [str(n) for n in maps["class_names"]]
    mean = maps["mean_maps"].astype(float)
    fig, axes = plt.subplots(1, len(names), figsize=(1.1 * len(names) + 1, 1.9), squeeze=False)
    scale = map_scale(mean, attention_bounded(maps))
    for c, ax in enumerate(axes[0]):
        image = ax.imshow(mean[c], cmap="viridis", vmin=0, vmax=scale.vmax)
        ax.set_title(names[c], fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    h, w = mean.shape[-2:]
    bar = fig.colorbar(image, ax=list(axes[0]), fraction=0.02)
    bar.set_label(scale.label("mean attention" if scale.bounded else "mean class activation"), fontsize=6)
    fig.suptitle(f"{title}: each class's map, mean over its test tiles ({h} x {w} tokens)"
                 + (f"; {scale.note()}" if scale.near_empty else ""), fontsize=9)
    return fig
