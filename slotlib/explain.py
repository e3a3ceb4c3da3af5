"""Attention maps and explanations: per-class maps, overlays on tiles, explanation metrics, an explorer.

Shape letters: B batch, S slots, K classes, P slots per class, N = h*w tokens, H x W pixels, T steps.

Explanation metrics (computed once per run on test tiles, stored in metrics.json):
    area size: mean attention of the predicted class's map (SCOUTER's "area", smaller is tighter);
    deletion AUC: remove pixels most-attended first (to black) and track the predicted class's
        probability; a good explanation makes it fall fast (lower is better);
    insertion AUC: start from a blurred tile and reveal pixels most-attended first (higher is better).
Reference: Petsiuk et al., "RISE: Randomized Input Sampling for Explanation of Black-box Models",
BMVC 2018 (deletion and insertion metrics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def class_attention(attn: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``attn [B,S,N]`` -> ``[B,K,N]``: a class's P slots summed (SCOUTER's visualisation)."""
    b, s, n = attn.shape
    return attn.view(b, num_classes, s // num_classes, n).sum(2)


@torch.no_grad()
def class_maps(model, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[B,K]`` and per-class attention on the token grid ``[B,K,h,w]`` (one forward pass)."""
    model.eval()
    logits, attn = model(images)                                        # [B,K], [B,S,N]
    h, w = model.token_grid(images.shape[-1])
    return logits.float(), class_attention(attn.float(), model.num_classes).view(len(images), -1, h, w)


def upsample(maps: torch.Tensor, size: int) -> torch.Tensor:
    """``[B,K,h,w]`` -> ``[B,K,size,size]``, bilinear."""
    return F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)


def deletion_insertion(predict, images: torch.Tensor, saliency: torch.Tensor, target: torch.Tensor,
                       deleted: torch.Tensor, inserted_from: torch.Tensor, steps: int = 16
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image deletion and insertion AUC (mean class probability over ``steps + 1`` fractions).

    ``predict(images [M,3,H,W]) -> probabilities [M,K]``; ``images [B,3,H,W]``; ``saliency [B,H,W]``;
    ``target [B]`` the class whose probability is tracked; ``deleted [B|1,3,H,W]`` what removed pixels
    become; ``inserted_from [B,3,H,W]`` the start of insertion.
    """
    b, _, h, w = images.shape
    order = saliency.flatten(1).argsort(dim=1, descending=True)          # [B,HW] most salient first
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(h * w, device=order.device).expand(b, -1))
    fractions = torch.linspace(0, 1, steps + 1, device=images.device)   # [T]
    shown = (rank[:, None, :] < (fractions * h * w).round()[None, :, None]).view(b, -1, 1, h, w)  # [B,T,1,H,W]
    x = images[:, None]                                                 # [B,1,3,H,W]
    deletion = torch.where(shown, deleted[:, None].expand_as(x), x)     # [B,T,3,H,W] salient pixels removed
    insertion = torch.where(shown, x, inserted_from[:, None])           # [B,T,3,H,W] salient pixels revealed
    aucs = []
    for series in (deletion, insertion):
        probs = predict(series.flatten(0, 1)).view(b, steps + 1, -1)    # [B,T,K]
        p = probs.gather(2, target.view(b, 1, 1).expand(b, steps + 1, 1))[..., 0]  # [B,T]
        aucs.append(torch.trapezoid(p, fractions, dim=1))               # [B] area under p(fraction)
    return aucs[0], aucs[1]


def blurred(images: torch.Tensor, factor: int = 8) -> torch.Tensor:
    """Insertion's starting point: the tile at 1/factor resolution, scaled back up."""
    small = F.interpolate(images, scale_factor=1 / factor, mode="area")
    return F.interpolate(small, size=images.shape[-2:], mode="bilinear", align_corners=False)


@torch.no_grad()
def explanation_metrics(model, images: torch.Tensor, mean, std, steps: int = 16, batch: int = 64) -> dict[str, float]:
    """Area size and deletion/insertion AUC of the predicted class's attention over ``images`` (normalised)."""
    model.eval()
    device = images.device
    black = ((torch.zeros(3, device=device) - torch.tensor(mean, device=device)) /
             torch.tensor(std, device=device)).view(1, 3, 1, 1)        # a black pixel after normalisation

    def predict(x):
        return torch.cat([model(chunk)[0].float().softmax(1) for chunk in x.split(batch)])

    area, deletion, insertion = [], [], []
    for chunk in images.split(max(1, batch // (steps + 1))):
        logits, maps = class_maps(model, chunk)                         # [B,K], [B,K,h,w]
        pred = logits.argmax(1)
        mine = maps[torch.arange(len(chunk)), pred]                     # [B,h,w] the predicted class's map
        area.append(mine.flatten(1).mean(1))
        saliency = upsample(mine[:, None], chunk.shape[-1])[:, 0]       # [B,H,W]
        d, i = deletion_insertion(predict, chunk, saliency, pred, black.expand_as(chunk), blurred(chunk), steps)
        deletion.append(d)
        insertion.append(i)
    return {"area_size": torch.cat(area).mean().item(), "deletion_auc": torch.cat(deletion).mean().item(),
            "insertion_auc": torch.cat(insertion).mean().item(), "explained_tiles": len(images)}


def explain_split(exp, split: str = "test", n: int = 200, seed: int = 0) -> dict[str, float]:
    """Explanation metrics over ``n`` tiles of a split (a fixed sample), on the model as it is."""
    idx = np.asarray(exp.splits[split])
    if n < len(idx):
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=n, replace=False))
    return explanation_metrics(exp.model, eval_inputs(exp, exp.data.images[idx]), exp.mean, exp.std)


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
    return plot_tiles(predict_split(exp, split, limit=n, seed=seed), exp.class_names, n)


def plot_tiles(pred: "Predictions", class_names: Sequence[str], n: int = 6, seed: int = 0):
    """``n`` tiles of a prediction set, one row each, every class's map over it."""
    pick = np.sort(np.random.default_rng(seed).permutation(len(pred.labels))[:n])
    maps = upsample(pred.classes[pick], pred.tiles.shape[1])
    return plot_attention(pred.tiles[pick], maps, pred.labels[pick].tolist(), pred.preds[pick].tolist(), class_names)


def eval_inputs(exp, tiles: np.ndarray) -> torch.Tensor:
    """uint8 tiles ``[M,64,64,3]`` -> normalised inputs ``[M,3,S,S]`` on the run's device (evaluation transform)."""
    from .data import build_transforms

    _, eval_tf = build_transforms(exp.config.data.image_size, exp.mean, exp.std, augment=False)
    batch = torch.from_numpy(np.array(tiles, dtype=np.uint8, copy=True)).permute(0, 3, 1, 2)  # the cache is read-only
    return eval_tf(batch).to(exp.device)


# --------------------------------------------------------------------------- a finished run

def open_run(run_dir, data_root: str | None = None, device: str | None = None):
    """A prepared Experiment for a finished cell folder, with its best-validation weights loaded."""
    from pathlib import Path

    import yaml

    from .config import Config
    from .train import prepare

    run_dir = Path(run_dir)
    params = yaml.safe_load((run_dir / "params.yaml").read_text())
    if data_root is not None:
        params["data_root"] = data_root
    if device is not None:
        params["device"] = device
    exp = prepare(Config.from_params(params), run_dir, progress=False, pretrained=False)  # best.pt has the weights
    exp.model.load_state_dict(torch.load(run_dir / "best.pt", weights_only=True, map_location=exp.device))
    exp.model.eval()
    return exp


@dataclass
class Predictions:
    """Predictions and per-slot attention over tiles of one split (all on the CPU)."""

    indices: np.ndarray      # [M] into the dataset
    tiles: np.ndarray        # [M,64,64,3] uint8
    labels: np.ndarray       # [M]
    preds: np.ndarray        # [M]
    slots: torch.Tensor      # [M,S,h,w] per-slot attention on the token grid
    num_classes: int

    @property
    def classes(self) -> torch.Tensor:
        """[M,K,h,w]: a class's slots summed."""
        m, _, h, w = self.slots.shape
        return class_attention(self.slots.flatten(2), self.num_classes).view(m, -1, h, w)


@torch.no_grad()
def predict_split(exp, split: str = "test", limit: int | None = None, seed: int = 0, batch: int = 64) -> Predictions:
    idx = np.asarray(exp.splits[split])
    if limit is not None and limit < len(idx):
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=limit, replace=False))
    tiles = np.asarray(exp.data.images[idx])
    preds, slots = [], []
    exp.model.eval()
    h, w = exp.model.token_grid(exp.config.data.image_size)
    for start in range(0, len(idx), batch):
        images = eval_inputs(exp, tiles[start:start + batch])
        logits, attn = exp.model(images)                                # [B,K], [B,S,N]
        preds.append(logits.argmax(1).cpu())
        slots.append(attn.float().cpu().view(len(images), -1, h, w))
    return Predictions(idx, tiles, exp.data.labels[idx], torch.cat(preds).numpy(), torch.cat(slots),
                       exp.model.num_classes)


def plot_mean_attention(pred: Predictions, class_names: Sequence[str]):
    """For each class, its map averaged over the tiles of that class (where does the slot look?)."""
    import matplotlib.pyplot as plt

    k = len(class_names)
    cols = min(5, k)
    fig, axes = plt.subplots(math.ceil(k / cols), cols, figsize=(2.2 * cols, 2.3 * math.ceil(k / cols)), squeeze=False)
    maps = pred.classes
    for c, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if c >= k:
            ax.axis("off")
            continue
        mine = maps[pred.labels == c, c]
        if len(mine):
            ax.imshow(upsample(mine.mean(0)[None, None], 64)[0, 0].numpy(), cmap="jet")
        ax.set_title(f"{class_names[c]} (n={len(mine)})", fontsize=7)
    fig.suptitle("mean attention of each class's slots over tiles of that class", fontsize=9)
    fig.tight_layout()
    return fig


def plot_correct_and_wrong(pred: Predictions, class_names: Sequence[str], n: int = 4, seed: int = 0):
    """Correct predictions (left) beside wrong ones (right): tile, true class's map, predicted class's map."""
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    right, wrong = np.flatnonzero(pred.labels == pred.preds), np.flatnonzero(pred.labels != pred.preds)
    pick = [rng.permutation(group)[:n] for group in (right, wrong)]
    rows = max(1, max(len(p) for p in pick))
    fig, axes = plt.subplots(rows, 6, figsize=(10, 1.8 * rows), squeeze=False)
    maps = upsample(pred.classes, pred.tiles.shape[1])
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
                ax.imshow(maps[i, k].numpy(), cmap="jet", alpha=0.55)
                ax.set_title(f"{what} {class_names[k]}", fontsize=7)
    fig.tight_layout()
    return fig


def explorer(pred: Predictions, class_names: Sequence[str]):
    """An ipywidgets explorer: pick a class, a tile (or only misclassified ones) and a slot."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

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
            axes[1].imshow(attn, cmap="jet", alpha=0.55)
            axes[1].set_title(f"slot: {dict((v, k) for k, v in slot_options)[slot.value]}", fontsize=8)
            for ax in axes:
                ax.axis("off")
            plt.show()

    for w in (cls, only_wrong, tile, slot):
        w.observe(draw, names="value")
    draw()
    return widgets.VBox([widgets.HBox([cls, only_wrong]), widgets.HBox([tile, slot]), out])
