"""Unsupervised object discovery: the slot-attention autoencoder, FG-ARI, training and run outputs.

The model is Locatello et al.'s autoencoder, sized for a CPU: a CNN encoder with a soft
position embedding, :class:`~slotlib.slot_attention.SlotAttention` from one shared learned
Gaussian (fresh samples every forward pass, so slots are exchangeable), and a spatial-broadcast
decoder that paints every slot separately as RGB plus an alpha logit. The alphas are normalised
by a softmax over slots and the slots composed as ``recon = sum_s mask_s * rgb_s``; the only
training signal is the reconstruction MSE.

Shape letters, used in every comment and einsum below:
    B batch, S slots, D slot dim, C channels, H, W image height and width, h, w feature map,
    N tokens (h*w), P pixels (H*W), T true objects (incl. background), Q predicted segments.

References:
    Locatello et al., "Object-Centric Learning with Slot Attention", NeurIPS 2020;
        code google-research/google-research slot_attention/model.py (SoftPositionEmbed,
        SlotAttentionAutoEncoder, spatial_broadcast, unstack_and_split) and train.py (warm-up
        then exponential decay of the learning rate).
    Watters et al., "Spatial Broadcast Decoder", 2019.
    Greff et al., "Multi-Object Representation Learning with Iterative Variational Inference"
        (IODINE), ICML 2019: FG-ARI, the adjusted Rand index over foreground pixels.
    Hubert & Arabie, "Comparing partitions", 1985 (ARI); scikit-learn's adjusted_rand_score.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from .grid import read_metrics
from .losses import NonFiniteLossError
from .runfiles import resolve_device, save_torch_atomic, write_atomic, write_csv, write_json
from .scenes import Scenes, make_scenes
from .slot_attention import GaussianSlots, SlotAttention

if TYPE_CHECKING:
    from .config import DiscoveryConfig


# --------------------------------------------------------------------------- model

def coordinate_grid(h: int, w: int) -> torch.Tensor:
    """[1,h,w,4]: (y, x, 1-y, 1-x) in [0,1], the four ramps SoftPositionEmbed maps to features."""
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")  # [h,w] each
    return torch.stack([y, x, 1 - y, 1 - x], -1)[None]                                     # [1,h,w,4]


class SoftPositionEmbed(nn.Module):
    """Adds a learned linear map of the coordinate grid to channels-last features."""

    def __init__(self, dim: int, resolution: tuple[int, int]) -> None:
        super().__init__()
        self.proj = nn.Linear(4, dim)
        self.register_buffer("grid", coordinate_grid(*resolution), persistent=False)     # [1,h,w,4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(self.grid)                                 # [B,h,w,C]


class Encoder(nn.Module):
    """4 convs ``kernel`` x ``kernel`` (the first strided by ``stride``) -> position embedding -> LayerNorm + MLP."""

    def __init__(self, image_size: int, channels: int, dim: int, stride: int, kernel: int = 5) -> None:
        super().__init__()
        c, k, p = channels, kernel, kernel // 2
        self.convs = nn.Sequential(
            nn.Conv2d(3, c, max(k, stride), stride, p), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, k, 1, p), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, k, 1, p), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, k, 1, p), nn.ReLU(inplace=True))
        side = image_size // stride
        self.pos = SoftPositionEmbed(c, (side, side))
        self.mlp = nn.Sequential(nn.LayerNorm(c), nn.Linear(c, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.convs(image).permute(0, 2, 3, 1)                       # [B,h,w,C] channels last
        x = self.pos(x)                                                 # [B,h,w,C] every token knows where it is
        return self.mlp(x.flatten(1, 2))                                # [B,N,D]


class BroadcastDecoder(nn.Module):
    """Spatial broadcast: each slot tiled on a ``broadcast`` grid, position-embedded, upsampled to RGB + alpha.

    ``log2(image_size / broadcast)`` stride-2 transposed convs 5x5 reach the image size, then a
    3x3 conv gives 4 channels. A broadcast equal to the image size uses plain 5x5 convs instead.
    """

    def __init__(self, image_size: int, dim: int, channels: int, broadcast: int) -> None:
        super().__init__()
        self.broadcast = broadcast
        self.pos = SoftPositionEmbed(dim, (broadcast, broadcast))
        layers: list[nn.Module] = []
        c_in, side = dim, broadcast
        while side < image_size:
            layers += [nn.ConvTranspose2d(c_in, channels, 5, 2, 2, output_padding=1), nn.ReLU(inplace=True)]
            c_in, side = channels, side * 2
        if not layers:
            layers += [nn.Conv2d(c_in, channels, 5, 1, 2), nn.ReLU(inplace=True)]
            c_in = channels
        layers += [nn.Conv2d(c_in, channels, 3, 1, 1), nn.ReLU(inplace=True), nn.Conv2d(channels, 4, 3, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, s, d = slots.shape
        g = self.broadcast
        x = slots.reshape(b * s, 1, 1, d).expand(-1, g, g, -1)          # [B*S,g,g,D] the same vector everywhere
        x = self.pos(x).permute(0, 3, 1, 2)                             # [B*S,D,g,g] position makes it a picture
        out = self.net(x)                                               # [B*S,4,H,W]
        out = out.view(b, s, 4, *out.shape[-2:])                        # [B,S,4,H,W]
        return out[:, :, :3], out[:, :, 3:]                             # rgb [B,S,3,H,W], alpha [B,S,1,H,W]


def compose(rgb: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Alpha composition: masks = softmax of the alphas over slots; recon = sum over slots of mask * rgb."""
    masks = alpha.softmax(dim=1)                                        # [B,S,1,H,W] over slots: slots compete for pixels
    recon = torch.einsum("bsihw,bschw->bchw", masks, rgb)               # [B,3,H,W]
    return recon, masks


@torch.no_grad()
def posterior_masks(image: torch.Tensor, recon: torch.Tensor, rgb: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Each pixel's responsibilities under the decoder's mixture: p(slot k | pixel) [B,S,1,H,W].

    The decoder is a mixture per pixel: the masks are the prior over slots and slot k explains the
    pixel's colour x with N(x; rgb_k, sigma^2 I), so p(k | x) is proportional to
    ``masks_k * exp(-|x - rgb_k|^2 / (2 sigma^2))`` (the E-step of Neural EM, Greff et al. 2017).
    sigma^2 is each image's own reconstruction MSE, the maximum-likelihood variance of a Gaussian
    around the composite, so there is nothing to tune. Where a blurred mask straddles an edge, the
    pixel goes to the slot whose colour it has. A readout only: no gradient, training is unchanged.
    """
    var = (recon - image).square().mean((1, 2, 3)).clamp_min(1e-6)     # [B] per image
    dist = (rgb - image[:, None]).square().sum(2, keepdim=True)         # [B,S,1,H,W] squared colour distance
    logits = masks.clamp_min(1e-12).log() - dist / (2 * var.view(-1, 1, 1, 1, 1))
    return logits.softmax(dim=1)                                        # [B,S,1,H,W] sums to one over slots


@dataclass
class Output:
    """What the autoencoder's forward returns: nothing else, and no side effects."""

    recon: torch.Tensor   # [B,3,H,W]
    rgb: torch.Tensor     # [B,S,3,H,W] each slot's painting
    masks: torch.Tensor   # [B,S,1,H,W] sums to one over slots
    posterior: torch.Tensor  # [B,S,1,H,W] the masks given each pixel's colour (posterior_masks), sums to one
    slots: torch.Tensor   # [B,S,D]
    attn: torch.Tensor    # [B,S,N] slot attention's last iteration, sums to one over slots


class SlotAutoEncoder(nn.Module):
    """Image -> slots -> one RGB + alpha per slot -> reconstruction (Locatello et al., object discovery)."""

    def __init__(self, image_size: int = 32, num_slots: int = 6, slot_dim: int = 64, slot_iters: int = 3,
                 mlp_hidden: int = 128, enc_channels: int = 32, enc_stride: int = 2, dec_channels: int = 16,
                 dec_broadcast: int = 8, enc_kernel: int = 5, slot_init: str = "shared", bilevel: bool = False,
                 eval_iters: int = 0) -> None:
        super().__init__()
        self.eval_iters = eval_iters                                    # 0: as many as in training
        self.encoder = Encoder(image_size, enc_channels, slot_dim, enc_stride, enc_kernel)
        # Fresh samples every forward pass, in evaluation too: from one shared Gaussian (the paper's
        # exchangeable slots) or from one learned Gaussian per slot (BO-QSA's learned queries, plus noise).
        self.init = GaussianSlots(num_slots, slot_dim, per_slot=slot_init == "per_slot", sample_in_eval=True)
        self.attention = SlotAttention(slot_dim, slot_iters, mlp_hidden, bilevel=bilevel)
        self.decoder = BroadcastDecoder(image_size, slot_dim, dec_channels, dec_broadcast)

    @classmethod
    def from_config(cls, cfg: "DiscoveryConfig") -> "SlotAutoEncoder":
        return cls(cfg.image_size, cfg.num_slots, cfg.slot_dim, cfg.slot_iters, cfg.mlp_hidden, cfg.enc_channels,
                   cfg.enc_stride, cfg.dec_channels, cfg.dec_broadcast, cfg.enc_kernel, cfg.slot_init, cfg.bilevel,
                   cfg.eval_iters)

    def forward(self, image: torch.Tensor) -> Output:
        """In eval mode slot attention runs ``eval_iters`` iterations (when set), in train mode ``slot_iters``."""
        tokens = self.encoder(image)                                    # [B,N,D]
        iters = None if self.training else self.eval_iters or None
        slots, attn = self.attention(tokens, self.init(image.shape[0]), iters)  # [B,S,D], [B,S,N]
        rgb, alpha = self.decoder(slots)                                # [B,S,3,H,W], [B,S,1,H,W]
        recon, masks = compose(rgb, alpha)                              # [B,3,H,W], [B,S,1,H,W]
        posterior = posterior_masks(image, recon, rgb, masks)           # [B,S,1,H,W]
        return Output(recon=recon, rgb=rgb, masks=masks, posterior=posterior, slots=slots, attn=attn)


def count_parameters(cfg: "DiscoveryConfig") -> dict[str, int]:
    """Parameter counts of the autoencoder a config builds (no data, no training)."""
    model = SlotAutoEncoder.from_config(cfg)
    parts = {"encoder": model.encoder, "slots": nn.ModuleList([model.init, model.attention]), "decoder": model.decoder}
    counts = {f"n_params_{k}": sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
    return {"n_params": sum(p.numel() for p in model.parameters()), **counts}


# --------------------------------------------------------------------------- FG-ARI

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


# --------------------------------------------------------------------------- data

TEST_START, VAL_START = 1_000_000, 2_000_000   # scene indices: train [0, n), test and val far away, never overlap


@dataclass(frozen=True)
class SceneSplits:
    train: Scenes
    val: Scenes
    test: Scenes


def make_splits(cfg: "DiscoveryConfig") -> SceneSplits:
    """Disjoint index ranges of one seeded scene dataset: the test set is the same whatever train_scenes is."""
    kw = dict(size=cfg.image_size, background=cfg.background, seed=cfg.scene_seed)
    return SceneSplits(train=make_scenes(cfg.train_scenes, start=0, **kw),
                       val=make_scenes(cfg.val_scenes, start=VAL_START, **kw),
                       test=make_scenes(cfg.test_scenes, start=TEST_START, **kw))


def to_input(images: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 [B,H,W,3] -> float [B,3,H,W] in [-1,1], the paper's input range."""
    x = torch.as_tensor(images).to(device)                              # [B,H,W,3]
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0                  # [B,3,H,W]


def to_image(x: torch.Tensor) -> np.ndarray:
    """float [...,3,H,W] in [-1,1] -> float [...,H,W,3] in [0,1] for plotting."""
    return ((x.detach().cpu().movedim(-3, -1) + 1) / 2).clamp(0, 1).numpy()


# --------------------------------------------------------------------------- training

def learning_rate(step: int, cfg: "DiscoveryConfig") -> float:
    """Linear warm-up to ``lr``, then halving every ``decay_steps`` (google-research slot_attention train.py)."""
    warm = min(1.0, step / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    return cfg.lr * warm * 0.5 ** (step / cfg.decay_steps)


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


def fg_ari_by_readout(true_masks: np.ndarray, out: Output) -> dict[str, np.ndarray]:
    """FG-ARI per scene [B] of each readout in ``MASKS``."""
    return {kind: fg_ari(true_masks, slot_masks(out, kind)) for kind in MASKS}


def _ari_title(ari: dict[str, np.ndarray]) -> str:
    """One scene's FG-ARI by both readouts, for a figure title."""
    return f"FG-ARI {ari['alpha'][0]:.3f} (alpha masks), {ari['posterior'][0]:.3f} (posterior)"


def evaluate(model: SlotAutoEncoder, scenes: Scenes, device: torch.device | str = "cpu",
             seed: int = 0, masks: str = "alpha") -> dict[str, Any]:
    """FG-ARI of the ``masks`` readout (mean, sd, per scene), the mean of both readouts, and MSE."""
    out = predict(model, scenes.images, seed=seed, device=device)
    both = fg_ari_by_readout(scenes.masks, out)                         # [B] each
    ari = both[masks]
    mse = F.mse_loss(out.recon, to_input(scenes.images)).item()
    return {"fg_ari": float(np.nanmean(ari)), "fg_ari_std": float(np.nanstd(ari)),
            **{f"fg_ari_{kind}": float(np.nanmean(a)) for kind, a in both.items()}, "mse": mse,
            "per_scene_fg_ari": ari}


HISTORY_COLUMNS = ("step", "train_mse", "lr", "seconds", "steps_per_second", "val_fg_ari", "val_fg_ari_alpha",
                   "val_fg_ari_posterior", "val_mse")
LOG_EVERY = 50   # steps per history row (the loss curve); validation columns only on evaluation steps


def write_history(path: Path, rows: list[dict]) -> None:
    write_csv(path, rows, HISTORY_COLUMNS)


def read_history(path: str | os.PathLike) -> list[dict[str, float]]:
    with open(path) as f:
        return [{k: float(v) if v not in ("", None) else math.nan for k, v in row.items()} for row in csv.DictReader(f)]


@dataclass
class DiscoveryRun:
    """A trained autoencoder with its scenes and results (what the notebook plots)."""

    config: "DiscoveryConfig"
    out_dir: Path
    model: SlotAutoEncoder
    splits: SceneSplits
    metrics: dict[str, Any]

    @property
    def history(self) -> list[dict[str, float]]:
        return read_history(self.out_dir / "history.csv")


def fit(cfg: "DiscoveryConfig", out_dir: str | os.PathLike, *, splits: SceneSplits | None = None,
        progress: bool = True, echo: Callable[[str], Any] | None = None) -> DiscoveryRun:
    """Train on reconstruction MSE alone, evaluate FG-ARI on the held-out scenes, write the run folder.

    Writes ``params.yaml``, ``history.csv`` (every ``LOG_EVERY`` steps), ``metrics.json``
    (atomically; ``status`` running -> done | failed; ``trained`` once the weights are final)
    and ``model.pt``. A folder whose model is trained is loaded, not retrained. There is no
    resume: an interrupted training starts again. With ``black_steps`` the status stays running
    until :func:`fit_black` has finished the comparison, so a grid reruns a cell cut off there.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    splits = splits or make_splits(cfg)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)                                         # the initial weights, then slot samples
    model = SlotAutoEncoder.from_config(cfg)
    done = read_metrics(out)
    if done and done.get("trained") and done.get("digest") == cfg.digest() and (out / "model.pt").exists():
        model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
        return DiscoveryRun(cfg, out, model, splits, done)

    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    order = torch.Generator().manual_seed(cfg.seed)                     # batch order: its own generator
    write_atomic(out / "params.yaml", yaml.safe_dump(cfg.to_params(), sort_keys=False))
    metrics: dict[str, Any] = {"status": "running", "kind": "discovery", "digest": cfg.digest(),
                               "params": cfg.to_params(), "steps": cfg.steps, "steps_done": 0,
                               "n_params": sum(p.numel() for p in model.parameters()), "device": str(device),
                               "num_threads": torch.get_num_threads(), "torch": torch.__version__, "error": None}
    write_json(out / "metrics.json", metrics)
    rows: list[dict] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.steps, desc=f"train ({cfg.background})", unit="step")
    start = time.perf_counter()
    train_seconds, window_loss, window_n, window_start = 0.0, 0.0, 0, time.perf_counter()
    perm, pos = torch.randperm(len(splits.train), generator=order), 0
    try:
        model.train()
        for step in range(1, cfg.steps + 1):
            if pos + cfg.batch_size > len(perm):                        # a fresh order every pass
                perm, pos = torch.randperm(len(splits.train), generator=order), 0
            idx = perm[pos:pos + cfg.batch_size].numpy()
            pos += cfg.batch_size
            x = to_input(splits.train.images[idx], device)              # [B,3,H,W]
            for group in opt.param_groups:
                group["lr"] = learning_rate(step, cfg)
            loss = F.mse_loss(model(x).recon, x)                        # reconstruction alone: no labels anywhere
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"reconstruction loss is {loss.item()} at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            window_loss, window_n = window_loss + loss.item(), window_n + 1
            if bar is not None:
                bar.update(1)
                if step % 20 == 0:
                    bar.set_postfix(mse=f"{loss.item():.4f}", refresh=False)
            evaluate_now = (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps
            if evaluate_now or step % LOG_EVERY == 0:
                seconds = time.perf_counter() - window_start                # training time only, not evaluation
                train_seconds += seconds
                row = {"step": step, "train_mse": window_loss / window_n, "lr": learning_rate(step, cfg),
                       "seconds": round(train_seconds, 2), "steps_per_second": round(window_n / seconds, 3),
                       **{c: "" for c in HISTORY_COLUMNS[5:]}}
                if evaluate_now and cfg.val_scenes:
                    val = evaluate(model, splits.val, device, masks=cfg.eval_masks)
                    model.train()
                    scores = {f"val_{k}": val[k] for k in ("fg_ari", "fg_ari_alpha", "fg_ari_posterior")}
                    row.update(scores, val_mse=val["mse"])
                    metrics.update(scores, val_mse=val["mse"])
                    if bar is not None:
                        bar.set_postfix(mse=f"{row['train_mse']:.4f}", fg_ari_alpha=f"{val['fg_ari_alpha']:.3f}",
                                        fg_ari_posterior=f"{val['fg_ari_posterior']:.3f}")
                    if echo is not None:
                        echo(f"step {step}  train_mse {row['train_mse']:.5f}  val_fg_ari alpha "
                             f"{val['fg_ari_alpha']:.4f} posterior {val['fg_ari_posterior']:.4f}  "
                             f"{row['steps_per_second']:.2f} steps/s  {train_seconds:.0f} s")
                rows.append(row)
                write_history(out / "history.csv", rows)
                if evaluate_now:
                    metrics.update(steps_done=step, train_seconds=round(train_seconds, 1))
                    write_json(out / "metrics.json", metrics)
                window_loss, window_n, window_start = 0.0, 0, time.perf_counter()
        if bar is not None:
            bar.close()
        test = evaluate(model, splits.test, device, seed=1, masks=cfg.eval_masks)
        save_torch_atomic(model.state_dict(), out / "model.pt")
        # With a black comparison to come, the cell is done only when that is (fit_black marks it).
        metrics.update(status="running" if cfg.black_steps else "done", trained=True,
                       steps_done=cfg.steps, train_seconds=round(train_seconds, 1),
                       fg_ari=test["fg_ari"], fg_ari_std=test["fg_ari_std"], fg_ari_alpha=test["fg_ari_alpha"],
                       fg_ari_posterior=test["fg_ari_posterior"], test_mse=test["mse"],
                       wall_seconds=round(time.perf_counter() - start, 1),
                       steps_per_second=round(cfg.steps / train_seconds, 3))
        write_json(out / "metrics.json", metrics)
    except BaseException as err:
        if bar is not None:
            bar.close()
        metrics.update(status="failed", error=f"{type(err).__name__}: {err}")
        write_json(out / "metrics.json", metrics)
        raise
    model.cpu()
    return DiscoveryRun(cfg, out, model, splits, metrics)


def fit_black(cfg: "DiscoveryConfig", out_dir: str | os.PathLike, *, progress: bool = True) -> DiscoveryRun | None:
    """The comparison run: the same model and seeds on black-background scenes for ``black_steps`` steps.

    Written to ``out_dir/black``. Returns None when ``black_steps`` is 0.
    """
    if not cfg.black_steps:
        return None
    black = dataclasses.replace(cfg, background="black", steps=cfg.black_steps, black_steps=0)
    run = fit(black, Path(out_dir) / "black", progress=progress)
    metrics = read_metrics(out_dir) or {}
    if metrics.get("trained") and metrics.get("digest") == cfg.digest():  # the grey run's folder: now the cell is done
        metrics.update(status="done", black_fg_ari=run.metrics["fg_ari"], black_fg_ari_alpha=run.metrics["fg_ari_alpha"],
                       black_fg_ari_posterior=run.metrics["fg_ari_posterior"], black_test_mse=run.metrics["test_mse"])
        write_json(Path(out_dir) / "metrics.json", metrics)
    return run


# --------------------------------------------------------------------------- plots (the notebook's figures)

def _axes_off(axes: Any) -> None:
    for ax in np.ravel(axes):
        ax.set_xticks([])
        ax.set_yticks([])


def segmentation(masks: torch.Tensor) -> np.ndarray:
    """Soft masks [B,S,1,H,W] -> the owning slot of every pixel, int [B,H,W]."""
    return masks[:, :, 0].argmax(1).numpy()


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
    """Held-out scenes, their reconstructions, the predicted segmentation and the true masks."""
    import matplotlib.pyplot as plt

    test = run.splits.test
    n = min(n, len(test))
    out = predict(run.model, test.images[:n], seed=1)
    fig, axes = plt.subplots(5, n, figsize=(1.6 * n, 8.2), squeeze=False)
    for row, kind in enumerate(MASKS, start=2):
        masks = slot_masks(out, kind)
        ari, seg = fg_ari(test.masks[:n], masks), segmentation(masks)  # [n], [n,H,W]
        for i in range(n):
            axes[row, i].imshow(seg[i], cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
            axes[row, i].set_title(f"FG-ARI {ari[i]:.2f}", fontsize=8)
    for i in range(n):
        axes[0, i].imshow(test.images[i])
        axes[1, i].imshow(to_image(out.recon[i]))
        axes[4, i].imshow(test.masks[i], cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
    for ax, label in zip(axes[:, 0], ("scene", "reconstruction", "slot per pixel\n(alpha masks)",
                                      "slot per pixel\n(posterior)", "true masks")):
        ax.set_ylabel(label, fontsize=8)
    _axes_off(axes)
    fig.tight_layout()
    return fig


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
