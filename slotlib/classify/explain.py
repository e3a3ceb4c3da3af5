"""Attention maps and explanations: per-class maps of a trained model, explanation metrics, predictions.

Shape letters: B batch, S slots, K classes, P slots per class, N = h*w tokens, H x W pixels, T steps.

Explanation metrics (computed once per run on test tiles, stored in metrics.json):
    area size: mean attention of the predicted class's map (SCOUTER's "area", smaller is tighter);
    deletion AUC: remove pixels most-attended first (to black) and track the predicted class's
        probability; a good explanation makes it fall fast (lower is better);
    insertion AUC: start from a blurred tile and reveal pixels most-attended first (higher is better).
Reference: Petsiuk et al., "RISE: Randomized Input Sampling for Explanation of Black-box Models",
BMVC 2018 (deletion and insertion metrics). The figures and the explorer are in
:mod:`slotlib.classify.attention_plots`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..heads.registry import class_attention
from ..runs.folder import MAPS as MAPS_FILE  # the report draws its heatmaps from it (numpy alone: no torch)
from ..runs.folder import load_checkpoint, read_params


@torch.no_grad()
def class_maps(model, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[B,K]`` and per-class attention on the token grid ``[B,K,h,w]`` (one forward pass)."""
    model.eval()
    logits, attn = model(images)                                        # [B,K], [B,S,N]
    h, w = model.token_grid(images.shape[-1])
    return logits.float(), class_attention(attn.float(), model.num_classes).view(len(images), -1, h, w)


@torch.no_grad()
def evidence_maps(model, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[B,K]`` and each token's evidence for each class against the mean class on the token grid
    ``[B,K,h,w]`` (:meth:`SlotClassifier.evidence`; one forward pass)."""
    model.eval()
    logits, _, evidence = model.evidence(images)
    h, w = model.token_grid(images.shape[-1])
    return logits.float(), evidence.float().view(len(images), -1, h, w)


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
def black_pixel(mean, std, device=None) -> torch.Tensor:
    """A black pixel after normalisation by ``mean`` and ``std``: ``[1,3,1,1]`` (what deletion removes to)."""
    mean, std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
    return ((torch.zeros(3) - mean) / std).view(1, 3, 1, 1).to(device)


@torch.no_grad()
def probabilities(model, images: torch.Tensor, batch: int = 128) -> torch.Tensor:
    """Class probabilities ``[M,K]`` of ``images [M,3,H,W]``, ``batch`` at a time."""
    return torch.cat([model(chunk)[0].float().softmax(1) for chunk in images.split(batch)])


def explanation_metrics(model, images: torch.Tensor, mean, std, steps: int = 16, batch: int = 64) -> dict[str, float]:
    """Area size and deletion/insertion AUC of the predicted class's attention over ``images`` (normalised)."""
    model.eval()
    black = black_pixel(mean, std, images.device)

    def predict(x):
        return probabilities(model, x, batch)

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


def eval_inputs(exp, tiles: np.ndarray, size: int | None = None) -> torch.Tensor:
    """uint8 tiles ``[M,64,64,3]`` -> normalised inputs ``[M,3,S,S]`` on the run's device (evaluation transform),
    ``S`` = ``size`` or the run's evaluation size."""
    from ..data.transforms import build_transforms

    _, eval_tf = build_transforms(size or exp.config.data.eval_px, exp.mean, exp.std, augment=False)
    batch = torch.from_numpy(np.array(tiles, dtype=np.uint8, copy=True)).permute(0, 3, 1, 2)  # the cache is read-only
    return eval_tf(batch).to(exp.device)


def open_run(run_dir, data_root: str | None = None, device: str | None = None):
    """A prepared Experiment for a finished cell folder, with its best-validation weights loaded."""
    from pathlib import Path

    from ..config import Config
    from .experiment import prepare

    run_dir = Path(run_dir)
    params = read_params(run_dir)
    if params is None:
        raise FileNotFoundError(f"{run_dir} holds no params.yaml: not a run folder")
    if data_root is not None:
        params["data_root"] = data_root
    if device is not None:
        params["device"] = device
    exp = prepare(Config.from_params(params), run_dir, progress=False, pretrained=False)  # best.pt has the weights
    exp.model.load_state_dict(load_checkpoint(run_dir / "best.pt", exp.device))
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
    bounded: bool = True     # the head's maps lie in [0, 1] (Head.bounded_attention)

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
    h, w = exp.model.token_grid(exp.config.data.eval_px)
    for start in range(0, len(idx), batch):
        images = eval_inputs(exp, tiles[start:start + batch])
        logits, attn = exp.model(images)                                # [B,K], [B,S,N]
        preds.append(logits.argmax(1).cpu())
        slots.append(attn.float().cpu().view(len(images), -1, h, w))
    return Predictions(idx, tiles, exp.data.labels[idx], torch.cat(preds).numpy(), torch.cat(slots),
                       exp.model.num_classes, bool(exp.model.head.bounded_attention))




@torch.no_grad()
def write_maps(exp, path, per_class: int = 2, mean_over: int = 50, batch: int = 64) -> None:
    """Per-class attention over a fixed set of test tiles, for the report (``maps.npz``, a few hundred KB).

    Shown tiles: the first ``per_class`` test tiles of each class, in split order (the same tiles for
    every cell of a grid on one split). Arrays: ``tiles [M,64,64,3]`` uint8, ``labels [M]``, ``preds [M]``,
    ``probs [M,K]``, ``maps [M,K,h,w]`` (each class's slots summed, on the token grid), ``mean_maps [K,h,w]``
    (class k's map averaged over up to ``mean_over`` test tiles of class k), ``class_names [K]``, ``head``,
    ``bounded`` (the head's maps lie in [0, 1]).
    """
    from ..runs.files import write_npz_atomic

    idx = np.asarray(exp.splits["test"])
    labels = np.asarray(exp.data.labels)
    k = exp.model.num_classes
    per = [idx[labels[idx] == c][:max(mean_over, per_class)] for c in range(k)]    # test tiles of each class
    pooled = np.concatenate(per)
    starts = np.cumsum([0] + [len(p) for p in per[:-1]])
    at = np.concatenate([s + np.arange(min(per_class, len(p))) for s, p in zip(starts, per)]).astype(int)
    probs, maps = [], []
    for start in range(0, len(pooled), batch):
        logits, m = class_maps(exp.model, eval_inputs(exp, exp.data.images[pooled[start:start + batch]]))
        probs.append(logits.softmax(1).cpu())
        maps.append(m.cpu())
    probs, maps = torch.cat(probs).numpy(), torch.cat(maps).numpy()          # [P,K], [P,K,h,w]
    mean_maps = np.stack([maps[labels[pooled] == c, c].mean(0) if np.any(labels[pooled] == c)
                          else np.full(maps.shape[-2:], np.nan) for c in range(k)])   # [K,h,w]
    shown = pooled[at]
    write_npz_atomic(path, tiles=np.asarray(exp.data.images[shown], dtype=np.uint8), labels=labels[shown],
                     preds=probs[at].argmax(1), probs=probs[at].astype(np.float16),
                     maps=maps[at].astype(np.float16), mean_maps=mean_maps.astype(np.float32),
                     class_names=np.array(exp.class_names), head=np.array(exp.config.model.head),
                     bounded=np.array(exp.model.head.bounded_attention),
                     indices=shown)


def main(argv: list[str] | None = None) -> int:
    """``python -m slotlib.classify.explain CELL_DIR...``: (re)write maps.npz of finished cells from best.pt
    (cells trained before runs wrote it, or whose copy is damaged)."""
    import sys
    from pathlib import Path

    from ..config import ConfigError

    dirs = sys.argv[1:] if argv is None else argv
    if not dirs:
        print("usage: python -m slotlib.classify.explain CELL_DIR [CELL_DIR...]", file=sys.stderr)
        return 2
    for run_dir in dirs:
        try:
            exp = open_run(run_dir)
            write_maps(exp, Path(run_dir) / MAPS_FILE, per_class=exp.config.train.heatmap_tiles or 2)
        except (ConfigError, FileNotFoundError) as err:
            print(f"slotlib: {err}", file=sys.stderr)
            return 2
        print(f"wrote {Path(run_dir) / MAPS_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
