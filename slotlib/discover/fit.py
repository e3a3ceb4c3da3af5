"""Training the object-discovery autoencoder: scenes, learning-rate schedule, the loop, run files.

Reference: google-research slot_attention/train.py (warm-up, then exponential decay of the
learning rate).
"""

from __future__ import annotations

import dataclasses
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

from ..data.scenes import Scenes, make_scenes
from ..runs.files import save_torch_atomic, write_atomic, write_csv, write_json, write_npz_atomic
from ..runs.folder import MASK_SAMPLES, load_checkpoint, read_history, read_metrics
from ..runtime import NonFiniteLossError, flushing_denormals, resolve_device
from .metrics import error_metrics, evaluate, mask_samples, pixel_entropy, sample_arrays, to_input
from .model import SlotAutoEncoder
from .resume import CHECKPOINT_EVERY, LAST, LoopState, load_last, save_last

if TYPE_CHECKING:
    from ..config import DiscoveryConfig


TEST_START, VAL_START = 1_000_000, 2_000_000   # scene indices: train [0, n), test and val far away, never overlap


@dataclass(frozen=True)
class SceneSplits:
    train: Scenes
    val: Scenes
    test: Scenes


def make_splits(cfg: "DiscoveryConfig") -> SceneSplits:
    """Disjoint index ranges of one seeded scene dataset: the test set is the same whatever train_scenes is."""
    kw = dict(size=cfg.image_size, background=cfg.background, seed=cfg.scene_seed, kind=cfg.scenes)
    return SceneSplits(train=make_scenes(cfg.train_scenes, start=0, **kw),
                       val=make_scenes(cfg.val_scenes, start=VAL_START, **kw),
                       test=make_scenes(cfg.test_scenes, start=TEST_START, **kw))


def learning_rate(step: int, cfg: "DiscoveryConfig") -> float:
    """Linear warm-up to ``lr``, then halving every ``decay_steps`` (google-research slot_attention train.py)."""
    warm = min(1.0, step / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    return cfg.lr * warm * 0.5 ** (step / cfg.decay_steps)


def mask_entropy(masks: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of the masks' entropy over slots (nats): log S where all S share a pixel, 0 where one owns it.

    ``masks`` [B,S,1,H,W] sums to one over slots. A penalty on it sharpens the alpha masks; their argmax
    does not change with sharpness alone, but the MSE then charges a pixel on the wrong side of an edge
    its whole colour difference, where a blurred mask pays a blend's.
    """
    return pixel_entropy(masks).mean()


HISTORY_COLUMNS = ("step", "train_mse", "lr", "seconds", "steps_per_second", "val_fg_ari", "val_fg_ari_alpha",
                   "val_fg_ari_posterior", "val_mse")


def mean_colour(images: np.ndarray, chunk: int = 2000) -> torch.Tensor:
    """The mean colour [3] of uint8 images [N,H,W,3], in the model's input range [-1,1] (to_input's)."""
    total = sum(images[i:i + chunk].astype(np.float64).sum((0, 1, 2)) for i in range(0, len(images), chunk))
    mean = total / (len(images) * images.shape[1] * images.shape[2])  # [3] in 0..255
    return torch.as_tensor(mean / 127.5 - 1.0, dtype=torch.float32)


LOG_EVERY = 50   # steps per history row (the loss curve); validation columns only on evaluation steps


def write_history(path: Path, rows: list[dict]) -> None:
    write_csv(path, rows, HISTORY_COLUMNS)


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
        return read_history(self.out_dir)


def fit(cfg: "DiscoveryConfig", out_dir: str | os.PathLike, *, splits: SceneSplits | None = None,
        progress: bool = True, echo: Callable[[str], Any] | None = None) -> DiscoveryRun:
    """Train on reconstruction MSE alone, evaluate FG-ARI on the held-out scenes, write the run folder.

    Writes ``params.yaml``, ``history.csv`` (every ``LOG_EVERY`` steps), ``metrics.json``
    (atomically; ``status`` running -> done | failed; ``trained`` once the weights are final),
    ``model.pt`` and ``masks.npz`` (test scenes with both readouts' masks, for the grid report). A
    folder whose model is trained is loaded, not retrained (and given ``masks.npz`` if it lacks it).
    An interrupted run resumes from ``last.pt`` to the result it would have had (``resume.py``); it
    refuses one of other parameters before writing anything. With ``black_steps`` the status stays
    running until :func:`fit_black` has finished the comparison, so a grid reruns a cell cut off there.
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
        model.load_state_dict(load_checkpoint(out / "model.pt"))
        if not (out / MASK_SAMPLES).exists():   # folders trained before the report drew them
            write_npz_atomic(out / MASK_SAMPLES, **mask_samples(model, splits.test))
        return DiscoveryRun(cfg, out, model, splits, done)

    if cfg.dec_colour_init == "mean":
        model.start_colour(mean_colour(splits.train.images))
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    state = LoopState(torch.Generator().manual_seed(cfg.seed))         # batch order: its own generator
    resumed = load_last(out, cfg, model, opt, state, device)            # refuses another run's: nothing written yet
    write_atomic(out / "params.yaml", yaml.safe_dump(cfg.to_params(), sort_keys=False))
    metrics: dict[str, Any] = {"status": "running", "kind": "discovery", "digest": cfg.digest(),
                               "params": cfg.to_params(), "steps": cfg.steps, "steps_done": state.step,
                               "n_params": sum(p.numel() for p in model.parameters()), "device": str(device),
                               "num_threads": torch.get_num_threads(), "torch": torch.__version__, "error": None,
                               **state.scores}
    write_json(out / "metrics.json", metrics)
    if resumed and (echo is not None or progress):
        (echo or print)(f"resuming {out} from {LAST} at step {state.step} of {cfg.steps}")
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.steps, initial=state.step, desc=f"train ({cfg.background})", unit="step")
    start = time.perf_counter()
    # Sharp masks come from a saturated softmax whose small values are denormal floats, which make CPU
    # arithmetic several times slower (a run with mask_entropy fell from 13 to 2.5 steps/s).
    with flushing_denormals():
        try:
            train_seconds = train_steps(model, opt, state, splits, cfg, device, out, metrics, bar, echo)
            if bar is not None:
                bar.close()
            test = evaluate(model, splits.test, device, seed=1, masks=cfg.eval_masks)
            save_torch_atomic(model.state_dict(), out / "model.pt")
            write_npz_atomic(out / MASK_SAMPLES, **sample_arrays(splits.test, test["output"]))  # the same prediction
            # With a black comparison to come, the cell is done only when that is (fit_black marks it).
            metrics.update(status="running" if cfg.black_steps else "done", trained=True,
                           steps_done=cfg.steps, train_seconds=round(train_seconds, 1),
                           fg_ari=test["fg_ari"], fg_ari_std=test["fg_ari_std"], fg_ari_alpha=test["fg_ari_alpha"],
                           fg_ari_posterior=test["fg_ari_posterior"], test_mse=test["mse"],
                           **error_metrics(splits.test.masks, test["output"]),
                           wall_seconds=round(time.perf_counter() - start, 1),
                           steps_per_second=round(cfg.steps / train_seconds, 3))
            write_json(out / "metrics.json", metrics)
            (out / LAST).unlink(missing_ok=True)                        # model.pt is final
        except KeyboardInterrupt:
            if bar is not None:
                bar.close()
            raise                                                       # status stays running: last.pt resumes it
        except BaseException as err:
            if bar is not None:
                bar.close()
            metrics.update(status="failed", error=f"{type(err).__name__}: {err}")
            write_json(out / "metrics.json", metrics)
            raise
    model.cpu()
    return DiscoveryRun(cfg, out, model, splits, metrics)


def train_steps(model: SlotAutoEncoder, opt: torch.optim.Optimizer, state: LoopState, splits: SceneSplits,
                cfg: "DiscoveryConfig", device: torch.device, out: Path, metrics: dict[str, Any], bar: Any,
                echo: Callable[[str], Any] | None) -> float:
    """The training steps of :func:`fit` from ``state.step + 1``, with ``history.csv``, the running
    ``metrics.json`` and ``last.pt`` written as they go; returns the seconds spent training in all (this
    call's and those before a resume; evaluation not counted)."""
    window_loss, window_n, window_start = 0.0, 0, time.perf_counter()
    if state.perm is None:
        state.perm = torch.randperm(len(splits.train), generator=state.order)
    model.train()
    for step in range(state.step + 1, cfg.steps + 1):
        if state.pos + cfg.batch_size > len(state.perm):            # a fresh order every pass
            state.perm, state.pos = torch.randperm(len(splits.train), generator=state.order), 0
        idx = state.perm[state.pos:state.pos + cfg.batch_size].numpy()
        state.pos += cfg.batch_size
        x = to_input(splits.train.images[idx], device)              # [B,3,H,W]
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, cfg)
        output = model(x)
        mse = F.mse_loss(output.recon, x)                           # reconstruction: no labels anywhere
        loss = mse
        if cfg.mask_entropy and step > cfg.mask_entropy_from:
            loss = mse + cfg.mask_entropy * mask_entropy(output.masks)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"reconstruction loss is {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        state.step = step
        window_loss, window_n = window_loss + mse.item(), window_n + 1   # the MSE alone, penalty or not
        if bar is not None:
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(mse=f"{mse.item():.4f}", refresh=False)
        evaluate_now = (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps
        if evaluate_now or step % LOG_EVERY == 0:
            seconds = time.perf_counter() - window_start                # training time only, not evaluation
            state.train_seconds += seconds
            row = {"step": step, "train_mse": window_loss / window_n, "lr": learning_rate(step, cfg),
                   "seconds": round(state.train_seconds, 2), "steps_per_second": round(window_n / seconds, 3),
                   **{c: "" for c in HISTORY_COLUMNS[5:]}}
            if evaluate_now and cfg.val_scenes:
                val = evaluate(model, splits.val, device, masks=cfg.eval_masks)
                model.train()
                state.scores = {**{f"val_{k}": val[k] for k in ("fg_ari", "fg_ari_alpha", "fg_ari_posterior")},
                                "val_mse": val["mse"]}
                row.update(state.scores)
                metrics.update(state.scores)
                if bar is not None:
                    bar.set_postfix(mse=f"{row['train_mse']:.4f}", fg_ari_alpha=f"{val['fg_ari_alpha']:.3f}",
                                    fg_ari_posterior=f"{val['fg_ari_posterior']:.3f}")
                if echo is not None:
                    echo(f"step {step}  train_mse {row['train_mse']:.5f}  val_fg_ari alpha "
                         f"{val['fg_ari_alpha']:.4f} posterior {val['fg_ari_posterior']:.4f}  "
                         f"{row['steps_per_second']:.2f} steps/s  {state.train_seconds:.0f} s")
            state.rows.append(row)
            write_history(out / "history.csv", state.rows)
            if evaluate_now:
                metrics.update(steps_done=step, train_seconds=round(state.train_seconds, 1))
                write_json(out / "metrics.json", metrics)
            if evaluate_now or step % CHECKPOINT_EVERY == 0:
                save_last(out, cfg, model, opt, state, device)
            window_loss, window_n, window_start = 0.0, 0, time.perf_counter()
    return state.train_seconds


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
