"""How well slots segment scenes: ARI and FG-ARI, the two mask readouts, evaluation of a model.

Shape letters: B batch, S slots, P pixels (H*W), T true objects (incl. background), Q predicted segments.

References:
    Greff et al., "Multi-Object Representation Learning with Iterative Variational Inference"
        (IODINE), ICML 2019: FG-ARI, the adjusted Rand index over foreground pixels.
    Hubert & Arabie, "Comparing partitions", 1985 (ARI); scikit-learn's adjusted_rand_score.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data.scenes import Scenes
from .model import Output, SlotAutoEncoder


def adjusted_rand_index(true: torch.Tensor, pred: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """ARI per row of integer labelings ``true`` [B,P] and ``pred`` [B,P], counting only ``valid`` [B,P] pixels.

    The pair-confusion form of scikit-learn's ``adjusted_rand_score`` (>= 0.23), so degenerate
    cases follow sklearn: when no pair of pixels is split by one labeling and joined by the other
    (identical partitions, one or zero valid pixels, both labelings a single segment) the ARI is
    1.0; otherwise ``2 (tp tn - fn fp) / ((tp + fn)(fn + tn) + (tp + fp)(fp + tn))``, which can
    be negative. Counts are float64, so 1e4 pixels per row are exact.
    """
    if valid is None:
        valid = torch.ones_like(true, dtype=torch.bool)
    t = F.one_hot(true.long()).double() * valid[..., None]             # [B,P,T] invalid pixels count nowhere
    q = F.one_hot(pred.long()).double()                                 # [B,P,Q]
    table = torch.einsum("bpt,bpq->btq", t, q)                          # [B,T,Q] contingency table
    n = table.sum((1, 2))                                               # [B]
    sum_sq = (table ** 2).sum((1, 2))                                   # [B]
    a2 = (table.sum(2) ** 2).sum(1)                                     # [B] squared true-segment sizes
    b2 = (table.sum(1) ** 2).sum(1)                                     # [B] squared predicted-segment sizes
    # Ordered pairs of distinct pixels: same/same (tp), split by true only (fp), by pred only (fn).
    tp, fp, fn = sum_sq - n, b2 - sum_sq, a2 - sum_sq                   # [B] each
    tn = n ** 2 - fp - fn - sum_sq                                      # [B]
    den = (tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)                 # [B]
    ari = 2 * (tp * tn - fn * fp) / den.clamp_min(1e-300)               # [B]
    return torch.where((fn == 0) & (fp == 0), torch.ones_like(ari), ari)


def fg_ari(true_masks: torch.Tensor | np.ndarray, pred_masks: torch.Tensor | np.ndarray) -> np.ndarray:
    """FG-ARI per scene: ARI over pixels whose true label is not background (0).

    ``true_masks`` int [B,H,W] (0 = background, 1.. objects); ``pred_masks`` either int [B,H,W]
    segment ids or soft masks [B,S,(1,)H,W] (argmax over slots). Scenes without foreground pixels
    get NaN, so ``np.nanmean`` leaves them out (sklearn would call them a perfect 1.0).
    """
    true = torch.as_tensor(np.asarray(true_masks) if not torch.is_tensor(true_masks) else true_masks)
    pred = torch.as_tensor(np.asarray(pred_masks) if not torch.is_tensor(pred_masks) else pred_masks)
    if pred.dim() == 5:
        pred = pred[:, :, 0]                                            # [B,S,H,W]
    if pred.dim() == 4:
        pred = pred.argmax(1)                                           # [B,H,W] the slot that owns each pixel
    true, pred = true.flatten(1).cpu(), pred.flatten(1).cpu()           # [B,P] each
    fg = true > 0                                                       # [B,P] background excluded
    ari = adjusted_rand_index(true, pred, fg)                           # [B]
    return torch.where(fg.any(1), ari, torch.full_like(ari, float("nan"))).numpy()


def to_input(images: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 [B,H,W,3] -> float [B,3,H,W] in [-1,1], the paper's input range."""
    x = torch.as_tensor(images).to(device)                              # [B,H,W,3]
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0                  # [B,3,H,W]


def to_image(x: torch.Tensor) -> np.ndarray:
    """float [...,3,H,W] in [-1,1] -> float [...,H,W,3] in [0,1] for plotting."""
    return ((x.detach().cpu().movedim(-3, -1) + 1) / 2).clamp(0, 1).numpy()


@torch.no_grad()
def predict(model: SlotAutoEncoder, images: np.ndarray, batch_size: int = 100, seed: int = 0,
            device: torch.device | str = "cpu") -> Output:
    """The model's output for uint8 scenes [B,H,W,3], on the CPU; slot samples drawn from ``seed``."""
    model.eval()
    outs = []
    with torch.random.fork_rng(devices=[]):                             # evaluation never moves the training RNG
        torch.manual_seed(seed)
        for i in range(0, len(images), batch_size):
            o = model(to_input(images[i:i + batch_size], device))
            outs.append(Output(**{k: v.cpu() for k, v in vars(o).items()}))
    return Output(**{k: torch.cat([getattr(o, k) for o in outs]) for k in vars(outs[0])})


MASKS = ("alpha", "posterior")   # the two readouts of slot masks (DiscoveryConfig.eval_masks)


def slot_masks(out: Output, kind: str = "alpha") -> torch.Tensor:
    """The masks a readout uses, [B,S,1,H,W]: the decoder's (``alpha``) or the mixture posterior's."""
    return {"alpha": out.masks, "posterior": out.posterior}[kind]


def segmentation(masks: torch.Tensor) -> np.ndarray:
    """Soft masks [B,S,1,H,W] -> the owning slot of every pixel, int [B,H,W]."""
    return masks[:, :, 0].argmax(1).numpy()


def segmentation_errors(true: np.ndarray, seg: np.ndarray) -> dict[str, float]:
    """Where a segmentation goes wrong: ``true`` [B,H,W] object labels (0 background), ``seg`` [B,H,W] slots.

    Each object's own slot is the one holding most of its pixels (ties: the lower slot). ``edge share``:
    the share of object pixels on an edge (a 4-neighbour with another true label); ``edge wrong`` and
    ``interior wrong``: the share of edge and of interior object pixels given to a slot other than their
    object's own; ``objects merged``: the share of objects whose own slot is also another object's own
    (two objects in one slot, which the pixel shares do not show). NaN where there is nothing to count.
    """
    edge = np.zeros(true.shape, bool)
    edge[:, 1:] |= true[:, 1:] != true[:, :-1]
    edge[:, :-1] |= true[:, :-1] != true[:, 1:]
    edge[:, :, 1:] |= true[:, :, 1:] != true[:, :, :-1]
    edge[:, :, :-1] |= true[:, :, :-1] != true[:, :, 1:]
    wrong = np.zeros(true.shape, bool)
    merged = objects_seen = 0
    for i in range(len(true)):
        own = []
        for label in np.unique(true[i])[1:]:
            here = true[i] == label
            own.append(np.bincount(seg[i][here]).argmax())
            wrong[i][here] = seg[i][here] != own[-1]
        counts = np.bincount(own) if own else np.zeros(0, int)
        merged += int(counts[counts > 1].sum())
        objects_seen += len(own)
    objects = true > 0

    def share(x: np.ndarray) -> float:
        return float(x.mean()) if x.size else float("nan")

    return {"edge share": share(edge[objects]), "edge wrong": share(wrong[objects & edge]),
            "interior wrong": share(wrong[objects & ~edge]),
            "objects merged": merged / objects_seen if objects_seen else float("nan")}


def pixel_entropy(masks: torch.Tensor) -> torch.Tensor:
    """Soft masks [B,S,1,H,W] -> each pixel's entropy over slots, nats [B,H,W]: log S if all share it, 0 if one does."""
    return -(masks * masks.clamp_min(1e-12).log()).sum((1, 2))


def fg_ari_by_readout(true_masks: np.ndarray, out: Output) -> dict[str, np.ndarray]:
    """FG-ARI per scene [B] of each readout in ``MASKS``."""
    return {kind: fg_ari(true_masks, slot_masks(out, kind)) for kind in MASKS}


def error_metrics(true_masks: np.ndarray, out: Output) -> dict[str, float]:
    """:func:`segmentation_errors` of each readout in ``MASKS``, as flat metrics.json keys
    (``alpha_edge_wrong``, ``alpha_interior_wrong``, ``alpha_objects_merged``, the same for ``posterior``)."""
    flat = {}
    for kind in MASKS:
        errors = segmentation_errors(true_masks, segmentation(slot_masks(out, kind)))
        flat.update({f"{kind}_{k.replace(' ', '_')}": round(v, 4) for k, v in errors.items() if k != "edge share"})
    return flat


def evaluate(model: SlotAutoEncoder, scenes: Scenes, device: torch.device | str = "cpu",
             seed: int = 0, masks: str = "alpha") -> dict[str, Any]:
    """FG-ARI of the ``masks`` readout (mean, sd, per scene), the mean of both readouts, and MSE.

    ``output`` holds the prediction itself, for :func:`sample_arrays`.
    """
    out = predict(model, scenes.images, seed=seed, device=device)
    both = fg_ari_by_readout(scenes.masks, out)                         # [B] each
    ari = both[masks]
    mse = F.mse_loss(out.recon, to_input(scenes.images)).item()
    return {"fg_ari": float(np.nanmean(ari)), "fg_ari_std": float(np.nanstd(ari)),
            **{f"fg_ari_{kind}": float(np.nanmean(a)) for kind, a in both.items()}, "mse": mse,
            "per_scene_fg_ari": ari, "output": out}


def mask_samples(model: SlotAutoEncoder, scenes: Scenes, n: int = 8, seed: int = 1,
                 device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """The first ``n`` scenes with their reconstruction and both readouts' segmentation: all a report draws.

    Predicted as :func:`evaluate` predicts them (the first batch of 100, slot samples from ``seed``),
    so each scene's ``<readout>_fg_ari`` is the one in the test mean; see :func:`sample_arrays`.
    """
    n = min(n, len(scenes))
    return sample_arrays(scenes, predict(model, scenes.images[:max(n, min(100, len(scenes)))], seed=seed,
                                         device=device), n)


def sample_arrays(scenes: Scenes, out: Output, n: int = 8) -> dict[str, np.ndarray]:
    """The arrays of :func:`mask_samples` from a prediction ``out`` of (at least) the first ``n`` scenes.

    ``images`` and ``recon`` uint8 [n,H,W,3], ``true_masks`` [n,H,W] (0 background),
    ``alpha_segmentation`` and ``posterior_segmentation`` [n,H,W] (the slot owning each pixel),
    ``alpha_fg_ari`` and ``posterior_fg_ari`` [n].
    """
    n = min(n, len(scenes))
    arrays = {"images": scenes.images[:n], "true_masks": scenes.masks[:n].astype(np.uint8),
              "recon": np.rint(to_image(out.recon[:n]) * 255).astype(np.uint8)}
    for kind in MASKS:
        seg = segmentation(slot_masks(out, kind)[:n])                     # [n,H,W]
        arrays[f"{kind}_segmentation"] = seg.astype(np.uint8)
        arrays[f"{kind}_fg_ari"] = fg_ari(scenes.masks[:n], seg)
    return arrays
