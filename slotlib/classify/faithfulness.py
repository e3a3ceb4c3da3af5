"""The explanation benchmark: are a head's maps faithful and localised, against Grad-CAM and chance?

For a finished cell (its ``best.pt``; nothing retrained) five methods explain the predicted class of the
same test tiles: ``head`` (the head's own map: SCOUTER's or the slot head's attention, the linear head's
class activation map), ``evidence`` (each token's term of the logit less the mean class's,
:meth:`slotlib.heads.Head.evidence`: what softmax reads), ``gradcam`` (pytorch-grad-cam on the feature map the head reads), and two floors,
``random`` (noise on the token grid, drawn afresh each call) and ``centre`` (a centred Gaussian).
Every metric (``slotlib.runs.explanations.METRICS``) scores every method:

    deletion_auc (down), insertion_auc (up), ins_minus_del (up): RISE; the predicted class's probability
        as the most salient pixels are removed (to black) or revealed (from a blurred tile);
    infidelity (down): Captum's ``infidelity``, ``normalize=True`` (the map's scale is fitted), Gaussian
        noise of sd ``INFIDELITY_NOISE``; sensitivity (down): Captum's ``sensitivity_max`` within an
        L-inf ball of ``SENSITIVITY_RADIUS``; a constant map (the centre prior) scores 0 by construction;
    mosaic (up): 2 x 2 mosaics of test tiles of four classes, each at the training size (``image_size``);
        the share of each class's positive map mass inside its own quadrant (Böhle et al.'s grid
        pointing game); chance 0.25, and 0.25 for a map without positive mass;
    random_head_rho, random_all_rho (down): Adebayo et al.'s randomisation check, Spearman's rho per tile
        between the trained maps and those after re-initialising the head, then head and backbone.

References: Petsiuk et al., RISE (BMVC 2018); Yeh et al. (NeurIPS 2019) and Captum's ``captum.metrics``;
Selvaraju et al., Grad-CAM (ICCV 2017); Böhle et al., B-cos (CVPR 2022); Adebayo et al. (NeurIPS 2018).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..runs.explanations import METHODS, METRICS, mean_sd
from ..runs.report_figures import NEAR_EMPTY
from .explain import (black_pixel, blurred, class_maps, deletion_insertion, eval_inputs, evidence_maps,
                      probabilities, upsample)

INFIDELITY_NOISE = 0.1        # sd of the Gaussian noise, in normalised input units
SENSITIVITY_RADIUS = 0.02     # Captum's default L-inf radius, in normalised input units


class _Tap(nn.Identity):
    """Marks the backbone's feature map for Grad-CAM's hooks."""


class LogitsOf(nn.Module):
    """A classifier as Grad-CAM and Captum want it: images -> logits, with the backbone feature map the
    head reads passing through ``self.tap`` (Grad-CAM's target layer)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.tap = model, _Tap()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.from_features(self.tap(self.model.backbone(images)[-1]))[0].float()


@dataclass
class Explainers:
    """The five methods of one model: ``maps(method, images [B,3,H,W], target [B]) -> [B,H,W]``."""

    model: nn.Module
    seed: int = 0

    def __post_init__(self) -> None:
        from pytorch_grad_cam import GradCAM

        self.model.eval()
        self.net = LogitsOf(self.model).eval()
        self.gradcam = GradCAM(model=self.net, target_layers=[self.net.tap])
        self.gen = torch.Generator().manual_seed(self.seed)

    def maps(self, method: str, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        size = images.shape[-1]
        if method in ("head", "evidence"):
            _, maps = (class_maps if method == "head" else evidence_maps)(self.model, images)   # [B,K,h,w]
            mine = maps[torch.arange(len(images)), target.to(maps.device)]         # [B,h,w]
            return upsample(mine[:, None], size)[:, 0]
        if method == "gradcam":
            from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

            with torch.enable_grad():
                cam = self.gradcam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in target])
            return torch.from_numpy(cam).float().to(images.device)                # [B,H,W] in [0,1]
        h, w = self.model.token_grid(size)
        if method == "random":
            noise = torch.rand(len(images), 1, h, w, generator=self.gen).to(images.device)
            return upsample(noise, size)[:, 0]
        if method == "centre":
            return centre_prior(size, images.device).expand(len(images), -1, -1)
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")

    def probabilities(self, images: torch.Tensor, batch: int = 128) -> torch.Tensor:
        return probabilities(self.model, images, batch)


def centre_prior(size: int, device=None) -> torch.Tensor:
    """A Gaussian of sd size/4 centred on a ``size`` x ``size`` tile: ``[1,H,W]``, peak 1."""
    r = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2
    return torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * (size / 4) ** 2))[None]


def quadrant_shares(maps: torch.Tensor, quadrant: torch.Tensor) -> torch.Tensor:
    """Share of each map's positive mass inside its quadrant: ``maps [B,2H,2W]``, ``quadrant [B]`` in
    0..3 (row-major: 0 top left, 1 top right, 2 bottom left, 3 bottom right) -> ``[B]``.
    A map with no positive mass gets 0.25, chance."""
    pos = maps.clamp(min=0)
    b, hh, ww = pos.shape
    quads = pos.view(b, 2, hh // 2, 2, ww // 2).sum((2, 4)).flatten(1)              # [B,4]
    total = quads.sum(1)
    share = quads.gather(1, quadrant.view(-1, 1))[:, 0] / total.clamp(min=1e-12)
    return torch.where(total > 0, share, torch.full_like(share, 0.25))


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rho between matching rows of ``a`` and ``b`` ``[M,P]`` (ties get average ranks); NaN
    where a row is constant."""
    from scipy.stats import rankdata

    ra, rb = rankdata(a, axis=1), rankdata(b, axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    den = np.sqrt((ra ** 2).sum(1) * (rb ** 2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(1) / den, np.nan)


def mosaics(labels: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` draws of four tiles of four different classes: positions in ``labels`` ``[n,4]`` (row-major
    quadrants) and their classes ``[n,4]``."""
    classes = np.unique(labels)
    if len(classes) < 4:
        raise ValueError(f"mosaics need tiles of at least 4 classes, got {len(classes)}")
    by_class = {c: np.flatnonzero(labels == c) for c in classes}
    picks, picked = np.empty((n, 4), int), np.empty((n, 4), int)
    for i in range(n):
        four = rng.choice(classes, size=4, replace=False)
        picked[i] = four
        picks[i] = [rng.choice(by_class[c]) for c in four]
    return picks, picked


def assemble(images: torch.Tensor) -> torch.Tensor:
    """``[B,4,3,S,S]`` -> ``[B,3,2S,2S]``, quadrants row-major."""
    top = torch.cat([images[:, 0], images[:, 1]], -1)
    bottom = torch.cat([images[:, 2], images[:, 3]], -1)
    return torch.cat([top, bottom], -2)


def randomised(model: nn.Module, config, parts: str, seed: int) -> nn.Module:
    """A copy of ``model`` with its head (``parts='head'``: everything after the backbone) or everything
    (``'all'``) replaced by a fresh initialisation, as training starts from (backbone without weights)."""
    from .model import SlotClassifier

    torch.manual_seed(10_000 + seed)
    fresh = SlotClassifier(config.model, model.num_classes, pretrained=False,
                           image_size=config.data.image_size, head_params=config.head_params)
    out = copy.deepcopy(model)
    state = fresh.state_dict()
    if parts == "head":
        state = {k: v for k, v in state.items() if not k.startswith("backbone.")}
    out.load_state_dict(state, strict=parts == "all")
    return out.to(next(model.parameters()).device).eval()


def benchmark(exp, *, tiles: int = 1000, mosaic_count: int = 500, seed: int = 0, batch: int = 50,
              captum_tiles: int | None = None, methods: tuple[str, ...] = METHODS, progress: bool = False,
              log: Callable[[str], None] = print) -> dict:
    """Every method and metric on ``tiles`` test tiles and ``mosaic_count`` mosaics of one prepared run
    (:func:`slotlib.classify.explain.open_run`). ``captum_tiles`` (default: all of ``tiles``) limits the
    two Captum metrics, the costliest. Returns the results dict written to ``explanations.json`` and
    the arrays written to ``explanations.npz`` under the key ``"figures"``."""
    from captum.metrics import infidelity, sensitivity_max

    model, config = exp.model.eval(), exp.config
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    test = np.asarray(exp.splits["test"])
    chosen = np.sort(rng.choice(test, size=min(tiles, len(test)), replace=False))
    n_captum = len(chosen) if captum_tiles is None else min(captum_tiles, len(chosen))
    labels = np.asarray(exp.data.labels)
    ex = Explainers(model, seed)
    black = black_pixel(exp.mean, exp.std, exp.device)
    randoms = {"head": randomised(model, config, "head", seed), "all": randomised(model, config, "all", seed)}
    rand_ex = {k: Explainers(m, seed) for k, m in randoms.items()}
    per: dict[str, dict[str, list]] = {m: {k: [] for k in METRICS} for m in methods}
    head_max, head_area = [], []
    preds_all, correct = [], []
    for start in range(0, len(chosen), batch):
        idx = chosen[start:start + batch]
        images = eval_inputs(exp, exp.data.images[idx])
        logits, raw = class_maps(model, images)                                  # one forward: logits and maps
        pred = logits.argmax(1)
        preds_all.append(pred.cpu())
        correct.append((pred.cpu().numpy() == labels[idx]))
        mine = raw[torch.arange(len(idx)), pred]
        head_max.append(mine.flatten(1).amax(1).cpu())
        head_area.append(mine.flatten(1).mean(1).cpu())
        in_captum = max(0, min(len(idx), n_captum - start))
        for method in methods:
            sal = ex.maps(method, images, pred)                                   # [B,H,W]
            d, i = deletion_insertion(ex.probabilities, images, sal, pred, black.expand_as(images), blurred(images))
            per[method]["deletion_auc"] += d.tolist()
            per[method]["insertion_auc"] += i.tolist()
            per[method]["ins_minus_del"] += (i - d).tolist()
            if in_captum:
                x, t = images[:in_captum], pred[:in_captum]
                attr = sal[:in_captum, None].expand_as(x).contiguous()

                def noise(inputs):
                    gen = torch.Generator().manual_seed(seed + start)
                    e = (torch.randn(inputs.shape, generator=gen) * INFIDELITY_NOISE).to(inputs.device)
                    return e, inputs - e

                with torch.no_grad():
                    inf = infidelity(ex.probabilities, noise, x, attr, target=t, n_perturb_samples=10, normalize=True,
                                     max_examples_per_batch=len(x) * 10)
                per[method]["infidelity"] += inf.cpu().tolist()

                def explain(inputs, target):
                    inputs = inputs[0] if isinstance(inputs, tuple) else inputs   # Captum may pass a 1-tuple
                    return (ex.maps(method, inputs, target),)   # a tuple: Captum iterates over what it gets

                sens = sensitivity_max(explain, x, perturb_radius=SENSITIVITY_RADIUS, n_perturb_samples=10,
                                       target=t, max_examples_per_batch=len(x) * 10)
                per[method]["sensitivity"] += sens.cpu().tolist()
            if method in ("head", "evidence", "gradcam"):
                for which in ("head", "all"):
                    other = rand_ex[which].maps(method, images, pred)
                    rho = spearman_rows(sal.flatten(1).cpu().numpy(), other.flatten(1).cpu().numpy())
                    per[method][f"random_{which}_rho"] += rho.tolist()
        if progress:
            log(f"  tiles {start + len(idx)}/{len(chosen)} ({time.perf_counter() - started:.0f} s)")

    # mosaics at the training size
    train_px = config.data.image_size
    test_labels = labels[test]
    picks, classes = mosaics(test_labels, mosaic_count, rng)
    fig_mosaics, fig_mosaic_maps = [], {m: [] for m in methods}
    for start in range(0, mosaic_count, max(1, batch // 4)):
        p, c = picks[start:start + batch // 4], classes[start:start + batch // 4]
        quads = eval_inputs(exp, exp.data.images[test[p.ravel()]], train_px).view(len(p), 4, 3, train_px, train_px)
        images = assemble(quads)                                                   # [b,3,2S,2S]
        rep = images.repeat_interleave(4, 0)                                       # [4b,...] one per quadrant
        target = torch.as_tensor(c.ravel(), device=exp.device)                     # [4b]
        quadrant = torch.arange(4, device=exp.device).repeat(len(p))
        for method in methods:
            sal = ex.maps(method, rep, target)                                     # [4b,2S,2S]
            per[method]["mosaic"] += quadrant_shares(sal, quadrant).cpu().tolist()
            if start == 0:
                fig_mosaic_maps[method] = sal.view(len(p), 4, *sal.shape[-2:])[:4].cpu().numpy().astype(np.float16)
        if start == 0:
            fig_mosaics = exp.data.images[test[p[:4].ravel()]]
            fig_mosaic_classes = c[:4]
        if progress and (start // max(1, batch // 4)) % 10 == 0:
            log(f"  mosaics {start + len(p)}/{mosaic_count} ({time.perf_counter() - started:.0f} s)")

    preds_np = torch.cat(preds_all).numpy()
    results = {
        "tiles": int(len(chosen)), "captum_tiles": int(n_captum), "mosaics": int(mosaic_count), "seed": seed,
        "eval_px": int(config.data.eval_px), "mosaic_tile_px": int(train_px), "head": config.model.head,
        "accuracy_on_tiles": float(np.concatenate(correct).mean()),
        "head_map_max": float(torch.cat(head_max).max()), "head_area": float(torch.cat(head_area).mean()),
        "bounded": bool(model.head.bounded_attention),
        "settings": {"infidelity_noise_sd": INFIDELITY_NOISE, "sensitivity_radius": SENSITIVITY_RADIUS,
                     "perturb_samples": 10, "deletion_to": "black", "insertion_from": "blurred x8", "steps": 16},
        "methods": {m: {k: mean_sd(v) for k, v in per[m].items() if v} for m in methods},
        "seconds": round(time.perf_counter() - started, 1),
    }
    results["near_empty"] = bool(results["bounded"] and results["head_map_max"] < NEAR_EMPTY)
    # figures: the first tile of each class among the chosen, head map beside Grad-CAM
    shown = [int(np.flatnonzero(labels[chosen] == k)[0]) for k in np.unique(labels[chosen])]
    images = eval_inputs(exp, exp.data.images[chosen[shown]])
    target = torch.as_tensor(preds_np[shown], device=exp.device)
    figures = {"tiles": np.asarray(exp.data.images[chosen[shown]], dtype=np.uint8), "labels": labels[chosen[shown]],
               "preds": preds_np[shown],
               "mosaic_tiles": np.asarray(fig_mosaics, dtype=np.uint8), "mosaic_classes": fig_mosaic_classes,
               "class_names": np.array(exp.class_names), "head": np.array(config.model.head),
               "bounded": np.array(bool(model.head.bounded_attention))}
    for method in ("head", "evidence", "gradcam"):
        if method in methods:
            figures[f"{method}_maps"] = ex.maps(method, images, target).cpu().numpy().astype(np.float32)
            figures[f"mosaic_{method}_maps"] = fig_mosaic_maps[method]
    for method in methods:   # every item's score, for paired tests between methods (explanations.paired)
        figures.update({f"items_{method}_{k}": np.asarray(v, dtype=np.float32) for k, v in per[method].items() if v})
    results["figures"] = figures
    return results
