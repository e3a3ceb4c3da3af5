"""Figures of object discovery (scenes, loss curve, reconstructions, slots, FG-ARI) and the slot
browser widget. They read a :class:`~slotlib.discover.fit.DiscoveryRun`; nothing trains.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..data.scenes import Scenes
from .fit import LOG_EVERY, DiscoveryRun
from .metrics import (MASKS, evaluate, fg_ari, fg_ari_by_readout, mask_samples, predict, segmentation, slot_masks,
                      to_image)


def _axes_off(axes: Any) -> None:
    for ax in np.ravel(axes):
        ax.set_xticks([])
        ax.set_yticks([])


def _ari_title(ari: dict[str, np.ndarray]) -> str:
    """One scene's FG-ARI by both readouts, for a figure title."""
    return f"FG-ARI {ari['alpha'][0]:.3f} (alpha masks), {ari['posterior'][0]:.3f} (posterior)"


def plot_scenes(scenes: Scenes, n: int = 8, title: str = "") -> Any:
    """A row of scenes over a row of their ground-truth instance masks."""
    import matplotlib.pyplot as plt

    n = min(n, len(scenes))
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.4), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(scenes.images[i])
        axes[1, i].imshow(scenes.masks[i], cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
        axes[0, i].set_title(f"{scenes.num_objects[i]} objects", fontsize=8)
    axes[0, 0].set_ylabel("scene")
    axes[1, 0].set_ylabel("true masks")
    _axes_off(axes)
    fig.suptitle(title or f"{len(scenes)} scenes, {scenes.images.shape[1]} px")
    fig.tight_layout()
    return fig


def plot_history(run: DiscoveryRun) -> Any:
    """Training MSE (log scale) and validation FG-ARI against steps."""
    import matplotlib.pyplot as plt

    rows = run.history
    val = [r for r in rows if not math.isnan(r["val_fg_ari"])]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    a.plot([r["step"] for r in rows], [r["train_mse"] for r in rows], label=f"train (mean of {LOG_EVERY} steps)")
    a.plot([r["step"] for r in val], [r["val_mse"] for r in val], marker=".", label="validation")
    a.set(xlabel="step", ylabel="reconstruction MSE", yscale="log", title="loss")
    a.legend(fontsize=8)
    for kind, colour in zip(MASKS, ("C2", "C4")):
        b.plot([r["step"] for r in val], [r.get(f"val_fg_ari_{kind}", math.nan) for r in val], marker=".",
               color=colour, label=f"{kind} masks" + (" (headline)" if kind == run.config.eval_masks else ""))
    b.set(xlabel="step", ylabel="FG-ARI", ylim=(0, 1), title="validation FG-ARI")
    b.legend(fontsize=8)
    b.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_reconstructions(run: DiscoveryRun, n: int = 8) -> Any:
    """Held-out scenes, their reconstructions, the predicted segmentation and the true masks: the grid
    report's figure (:func:`slotlib.runs.discovery_report.plot_mask_samples`), drawn from the model."""
    from ..runs.discovery_report import plot_mask_samples

    return plot_mask_samples(mask_samples(run.model, run.splits.test, n), "held-out test scenes")


def plot_slots(run: DiscoveryRun, scene: int = 0) -> Any:
    """One held-out scene: every slot's RGB, its mask, mask * RGB (what it adds to the reconstruction), posterior."""
    import matplotlib.pyplot as plt

    test = run.splits.test
    out = predict(run.model, test.images[scene:scene + 1], seed=1)
    s = out.masks.shape[1]
    fig, axes = plt.subplots(4, s + 1, figsize=(1.6 * (s + 1), 6.6), squeeze=False)
    axes[0, 0].imshow(test.images[scene])
    axes[0, 0].set_title("scene", fontsize=8)
    axes[1, 0].imshow(to_image(out.recon[0]))
    axes[1, 0].set_title("reconstruction", fontsize=8)
    axes[2, 0].imshow(test.masks[scene], cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
    axes[2, 0].set_title("true masks", fontsize=8)
    for k in range(s):
        mask = out.masks[0, k, 0].numpy()                               # [H,W]
        axes[0, k + 1].imshow(to_image(out.rgb[0, k]))
        axes[0, k + 1].set_title(f"slot {k} RGB", fontsize=8)
        axes[1, k + 1].imshow(mask, cmap="gray", vmin=0, vmax=1)
        axes[1, k + 1].set_title(f"mask ({mask.mean():.0%})", fontsize=8)
        axes[2, k + 1].imshow(to_image(out.rgb[0, k]) * mask[..., None] + (1 - mask[..., None]))
        axes[2, k + 1].set_title("mask x RGB", fontsize=8)
        axes[3, k + 1].imshow(out.posterior[0, k, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[3, k + 1].set_title("posterior", fontsize=8)
    axes[3, 0].imshow(segmentation(out.posterior)[0], cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
    axes[3, 0].set_title("posterior per pixel", fontsize=8)
    _axes_off(axes)
    fig.suptitle(f"held-out scene {scene}: {_ari_title(fg_ari_by_readout(test.masks[scene:scene + 1], out))}")
    fig.tight_layout()
    return fig


def plot_fg_ari(*runs: DiscoveryRun) -> Any:
    """Histogram of per-scene FG-ARI on the held-out scenes, one colour per run (grey, black)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    for run in runs:
        ari = evaluate(run.model, run.splits.test, seed=1, masks=run.config.eval_masks)["per_scene_fg_ari"]
        ax.hist(ari, bins=np.linspace(-0.2, 1, 49), alpha=0.6, label=f"{run.config.background}, "
                f"{run.config.eval_masks} masks: mean {np.nanmean(ari):.3f} ({len(ari)} scenes)")
    ax.set(xlabel="FG-ARI per held-out scene", ylabel="scenes")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def summary(*runs: DiscoveryRun) -> Any:
    """One row per run: background, steps, wall time, steps/s, test FG-ARI and MSE (a pandas DataFrame)."""
    import pandas as pd

    keys = ("steps", "wall_seconds", "steps_per_second", "fg_ari", "fg_ari_std", "fg_ari_alpha", "fg_ari_posterior",
            "test_mse", "n_params", "device")
    return pd.DataFrame([{"background": r.config.background, "eval_masks": r.config.eval_masks,
                          **{k: r.metrics.get(k) for k in keys}} for r in runs])


def compare_backgrounds(grey: DiscoveryRun, black: DiscoveryRun, scenes: int = 4) -> Any:
    """The same held-out scenes on grey and on black: reconstruction and each slot's mask, side by side."""
    import matplotlib.pyplot as plt

    s = grey.model.init.num_slots
    fig, axes = plt.subplots(2 * scenes, s + 2, figsize=(1.4 * (s + 2), 2.9 * scenes), squeeze=False)
    for row, run in enumerate((grey, black)):
        out = predict(run.model, run.splits.test.images[:scenes], seed=1)
        ari = fg_ari(run.splits.test.masks[:scenes], slot_masks(out, run.config.eval_masks))
        for i in range(scenes):
            r = 2 * i + row
            axes[r, 0].imshow(run.splits.test.images[i])
            axes[r, 0].set_ylabel(f"{run.config.background}\nFG-ARI {ari[i]:.2f}\n({run.config.eval_masks})", fontsize=8)
            axes[r, 1].imshow(to_image(out.recon[i]))
            for k in range(s):
                axes[r, k + 2].imshow(out.masks[i, k, 0].numpy(), cmap="gray", vmin=0, vmax=1)
    axes[0, 0].set_title("scene", fontsize=8)
    axes[0, 1].set_title("reconstruction", fontsize=8)
    for k in range(s):
        axes[0, k + 2].set_title(f"slot {k} mask", fontsize=8)
    _axes_off(axes)
    fig.tight_layout()
    return fig


def slot_browser(run: DiscoveryRun) -> Any:
    """Step through held-out scenes and slots with two sliders (ipywidgets).

    Outside a live kernel (no ipywidgets, or no kernel to talk to) it draws the first scene's
    slots as a static figure instead, so a rendered notebook still shows something useful.
    """
    import matplotlib.pyplot as plt

    try:
        import ipywidgets as widgets
        from IPython import get_ipython

        live = get_ipython() is not None and getattr(get_ipython(), "kernel", None) is not None
    except ImportError:
        live = False
    if not live:
        return plot_slots(run, 0)
    test = run.splits.test
    s = run.model.init.num_slots
    scene = widgets.IntSlider(0, 0, len(test) - 1, description="scene")
    slot = widgets.IntSlider(0, 0, s - 1, description="slot")
    view = widgets.Output()

    def show(*_: Any) -> None:
        out = predict(run.model, test.images[scene.value:scene.value + 1], seed=1)
        k = slot.value
        mask = out.masks[0, k, 0].numpy()                               # [H,W]
        with view:
            view.clear_output(wait=True)
            fig, axes = plt.subplots(1, 5, figsize=(10, 2.3))
            for ax, img, title in zip(axes, (test.images[scene.value], to_image(out.recon[0]),
                                             to_image(out.rgb[0, k]), mask,
                                             to_image(out.rgb[0, k]) * mask[..., None]),
                                      ("scene", "reconstruction", f"slot {k} RGB", f"slot {k} mask", "mask x RGB")):
                ax.imshow(img, cmap="gray" if img is mask else None, vmin=0, vmax=1)
                ax.set_title(title, fontsize=9)
            _axes_off(axes)
            ari = fg_ari_by_readout(test.masks[scene.value:scene.value + 1], out)
            fig.suptitle(f"scene {scene.value}: {_ari_title(ari)}", fontsize=9)
            plt.show(fig)

    scene.observe(show, "value")
    slot.observe(show, "value")
    show()
    return widgets.VBox([widgets.HBox([scene, slot]), view])
