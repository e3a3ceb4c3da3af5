"""Two-stage training: one stage loop called twice, evaluation, checkpoints, resume, run files.

Stage 1 trains the head on a frozen backbone (kept in eval mode, so BatchNorm statistics stay
put); the best stage-1 weights are then restored and stage 2 fine-tunes everything at a lower
learning rate. The best validation accuracy over both stages wins; the test set is evaluated
once, at the end, on those weights (with ``tta``, also without it, to show what the views add).

A run writes one folder (see docs/design.md, "One cell's folder"), every file atomically:
``params.yaml``, ``history.csv``, ``metrics.json``, ``best.pt``, ``last.pt`` and, at the end,
``maps.npz`` (per-class attention over fixed test tiles, for the report).

Randomness: every epoch re-seeds torch, numpy, python and the loader's shuffle generator from
(seed, stage, epoch), so the random stream of an epoch does not depend on what ran before it in
this process; a resumed run therefore repeats an uninterrupted one exactly (on CPU).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from tqdm.auto import tqdm

from ..config import Config, ConfigError
from ..runs.files import run_lock, save_torch_atomic, write_atomic, write_csv, write_json
from ..runs.folder import load_checkpoint, read_metrics, require_same_parameters
from ..runtime import autocast_dtype, describe_device, git_sha, seed_everything, versions
from .experiment import Experiment, check_finished, prepare
from .losses import HeadCollapseError
from .steps import StagePlan, collapse_of, make_optimizer, set_stage, stage_plans, train_mode, train_one_epoch

HISTORY_COLUMNS = ("stage", "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds",
                   "images_per_second", "logit_spread", "attn_saturated", "wall_seconds")


def write_history(path: Path, rows: list[dict]) -> None:
    write_csv(path, rows, HISTORY_COLUMNS)


def epoch_seed(seed: int, stage: int, epoch: int) -> int:
    """A distinct, reproducible seed for each (run seed, stage, epoch)."""
    return (seed * 1_000_003 + stage * 10_007 + epoch) % 2**31


@dataclass
class RunState:
    """What last.pt holds besides weights and optimiser: where the run is and the best so far."""

    stage: int = 0             # stage of the last finished epoch (0: nothing done)
    epoch: int = 0             # last finished epoch within that stage
    best_val_acc: float = -1.0
    best_stage: int = 0
    best_epoch: int = 0
    stage1_best_val_acc: float | None = None
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    train_images: int = 0


def fit(exp: Experiment) -> dict[str, Any]:
    """Train both stages (resuming from last.pt when present), test once, write the run folder.

    Returns metrics.json's content. A run already ``done`` is not redone.
    """
    with run_lock(exp.out_dir):
        return _fit_locked(exp)


def _fit_locked(exp: Experiment) -> dict[str, Any]:
    out, cfg = exp.out_dir, exp.config
    done = read_metrics(out)
    if done and done.get("status") == "done":
        check_finished(out, done)
        return done
    state, resume = load_resume(exp, done or {})   # refuses other parameters, other data or a damaged last.pt: nothing written yet
    write_atomic(out / "params.yaml", yaml.safe_dump(cfg.to_params(), sort_keys=False))
    wall_start = time.perf_counter()
    base = {"cell_id": out.name, "params": cfg.to_params(), "n_params": exp.model.parameter_counts()["n_params"],
            "device": describe_device(exp.device), "versions": versions(), "git_sha": git_sha(),
            "data_fingerprint": exp.data.fingerprint, "split_fingerprint": exp.split_fingerprint}
    wall_before = resume.get("wall_seconds", 0.0) if resume else 0.0

    def write_metrics(status: str, **extra) -> dict:
        metrics = {"status": status, **base, "epochs_done": len(state.history),
                   "best_val_acc": state.best_val_acc if state.best_stage else None,
                   "best_stage": state.best_stage or None, "best_epoch": state.best_epoch or None,
                   "stage1_best_val_acc": state.stage1_best_val_acc,
                   "train_images_per_second": (state.train_images / state.train_seconds
                                               if state.train_seconds else None),
                   "wall_seconds": wall_before + time.perf_counter() - wall_start,
                   "peak_gpu_memory_mb": (round(torch.cuda.max_memory_allocated(exp.device) / 2**20, 1)
                                          if exp.device.type == "cuda" else None),
                   "error": None, **extra}
        write_json(out / "metrics.json", metrics)
        return metrics

    try:
        write_metrics("running")
        step_model = torch.compile(exp.model) if cfg.train.compile else exp.model
        for plan in stage_plans(cfg):
            finished = plan.index < state.stage or (plan.index == state.stage and state.epoch >= plan.epochs)
            if not finished:
                run_stage(exp, step_model, plan, state, resume if plan.index == state.stage else None,
                          lambda: write_metrics("running"), wall_before, wall_start)
            if plan.index == 1 and state.stage == 1 and cfg.train.stage2_epochs:
                # stage 2 starts from the best stage-1 weights
                exp.model.load_state_dict(load_checkpoint(out / "best.pt", exp.device))
        exp.model.load_state_dict(load_checkpoint(out / "best.pt", exp.device))
        tta = cfg.train.tta
        test = exp.evaluate("test", step_model, tta)
        with_tta = {} if tta == "none" else {   # what the views add, on the same weights
            "test_acc_plain": test["acc_plain"], "val_acc_tta": exp.evaluate("val", step_model, tta)["acc"]}
        write_predictions(out, exp, test["predicted"])
        per_class = {name: (row[i] / sum(row) if sum(row) else None)
                     for i, (name, row) in enumerate(zip(exp.class_names, test["confusion"]))}
        explanation = {}
        if cfg.train.explain_tiles:
            from .explain import explain_split
            explanation = explain_split(exp, "test", cfg.train.explain_tiles, seed=cfg.train.seed)
        if cfg.train.heatmap_tiles:
            from .explain import MAPS_FILE, write_maps
            write_maps(exp, out / MAPS_FILE, per_class=cfg.train.heatmap_tiles)
        trained = state.history[-1].get("wall_seconds") if state.history else None
        return write_metrics("done", train_wall_seconds=float(trained) if trained not in (None, "") else None,
                             test_acc=test["acc"], test_loss=test["loss"], per_class_test_acc=per_class,
                             test_confusion=test["confusion"], class_names=list(exp.class_names), **with_tta,
                             **explanation)
    except KeyboardInterrupt:
        raise  # status stays "running": last.pt resumes it
    except HeadCollapseError as err:
        write_metrics("failed", error=f"{type(err).__name__}: {err}", collapse=err.info)
        raise
    except Exception as err:
        write_metrics("failed", error=f"{type(err).__name__}: {err}")
        raise


def write_predictions(out: Path, exp: Experiment, predicted) -> None:
    """``predictions.npz``: each test tile's dataset index, true and predicted class (the test loader's
    order), for paired tests between cells on the same tiles (:func:`slotlib.runs.compare.mcnemar`)."""
    import numpy as np

    from ..runs.compare import PREDICTIONS_FILE
    from ..runs.files import write_npz_atomic

    indices = np.asarray(exp.splits["test"])
    write_npz_atomic(out / PREDICTIONS_FILE, indices=indices, target=np.asarray(exp.data.labels)[indices],
                     predicted=np.asarray(predicted))


def run_stage(exp: Experiment, step_model: Callable, plan: StagePlan, state: RunState, resume: dict | None,
              on_epoch: Callable[[], Any], wall_before: float, wall_start: float) -> None:
    cfg, out = exp.config, exp.out_dir
    params = set_stage(exp.model, plan.freeze_backbone)
    optimizer, scheduler = make_optimizer(params, plan, cfg)
    scaler = torch.amp.GradScaler(exp.device.type) if autocast_dtype(cfg.train.precision, exp.device) is torch.float16 else None
    first = 1
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        if scaler is not None and resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        first = state.epoch + 1
    ema = None
    if cfg.train.ema_decay is not None:   # the stage's moving average starts from the stage's first weights
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(exp.model, decay=cfg.train.ema_decay)
        if resume is not None and resume.get("ema") is not None:
            ema.module.load_state_dict(resume["ema"])
    judged = exp.model if ema is None else ema.module   # what validation, best.pt and so the test see
    epochs = tqdm(range(first, plan.epochs + 1), desc=plan.name, initial=first - 1, total=plan.epochs,
                  disable=not exp.progress, unit="epoch")
    for epoch in epochs:
        seed = epoch_seed(cfg.train.seed, plan.index, epoch)
        seed_everything(seed)
        exp.loaders["train"].generator.manual_seed(seed)
        train_mode(exp.model, plan.freeze_backbone, cfg.train.stage2_batchnorm)
        lr = optimizer.param_groups[0]["lr"]
        result = train_one_epoch(step_model, exp.loaders["train"], optimizer, exp.objective, plan, epoch,
                                 grad_clip=cfg.train.grad_clip, scaler=scaler, progress=exp.progress,
                                 after_step=None if ema is None else lambda: ema.update(exp.model))
        val = exp.evaluate("val", step_model if ema is None else ema.module)
        scheduler.step()
        state.history.append({"stage": plan.index, "epoch": epoch, "train_loss": result.loss,
                              "train_acc": result.acc, "val_loss": val["loss"], "val_acc": val["acc"], "lr": lr,
                              "seconds": round(result.seconds, 3),
                              "images_per_second": round(result.images_per_second, 1),
                              "logit_spread": round(result.spread_mean, 6),
                              "attn_saturated": round(result.diagnostics["saturated"][0], 4)
                              if "saturated" in result.diagnostics else "",
                              # the run's wall so far, validation included: the x of an accuracy-vs-minutes curve
                              "wall_seconds": round(wall_before + time.perf_counter() - wall_start, 1)})
        state.stage, state.epoch = plan.index, epoch
        state.train_seconds += result.seconds
        state.train_images += result.images
        if val["acc"] > state.best_val_acc:
            state.best_val_acc, state.best_stage, state.best_epoch = val["acc"], plan.index, epoch
            save_torch_atomic(judged.state_dict(), best_next(out, plan.index, epoch))   # best.pt once last.pt knows it
        if plan.index == 1:
            state.stage1_best_val_acc = max(state.stage1_best_val_acc or 0.0, val["acc"])
        write_history(out / "history.csv", state.history)
        save_torch_atomic({"digest": cfg.digest(), "data_fingerprint": exp.data.fingerprint,
                           "split_fingerprint": exp.split_fingerprint, "model": exp.model.state_dict(),
                           "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                           "scaler": scaler.state_dict() if scaler is not None else None,
                           "ema": ema.module.state_dict() if ema is not None else None, "state": state.__dict__,
                           "wall_seconds": wall_before + time.perf_counter() - wall_start}, out / "last.pt")
        settle_best(out, state)
        on_epoch()
        collapse = collapse_of(cfg, plan, epoch, result)
        if collapse is not None:  # recorded in history.csv (the row above) and metrics.json (fit)
            raise collapse
        epochs.set_postfix(train_acc=f"{result.acc:.3f}", val_acc=f"{val['acc']:.3f}",
                           best=f"{state.best_val_acc:.3f}")


# A new best epoch's weights go to best_next(...) first and become best.pt only after last.pt records that
# epoch: a run killed in between would otherwise resume with a best.pt that last.pt does not know (a
# stage-2 epoch's weights taken for the best stage-1 ones when stage 2 starts). The file names its epoch,
# because last.pt's own epoch may be its best too (then only the name tells the two apart).
LEGACY_BEST_NEXT = "best.next.pt"   # written, without its epoch, by runs of slotlib before 2026-12-05


def best_next(out: Path, stage: int, epoch: int) -> Path:
    """Where a new best epoch's weights wait until last.pt records that epoch."""
    return out / f"best.next.stage{stage}.epoch{epoch}.pt"


def settle_best(out: Path, state: RunState) -> None:
    """The pending best weights become best.pt when ``state`` (what last.pt holds) names their epoch as its
    last and its best; any other pending file is dropped: the epoch that wrote it was not finished."""
    if state.best_stage and (state.best_stage, state.best_epoch) == (state.stage, state.epoch):
        for mine in (best_next(out, state.stage, state.epoch), out / LEGACY_BEST_NEXT):
            if mine.exists():
                os.replace(mine, out / "best.pt")
                break
    for pending in out.glob("best.next*.pt"):
        pending.unlink()


def load_resume(exp: Experiment, metrics: dict) -> tuple[RunState, dict | None]:
    """RunState and the checkpoint from last.pt, or a fresh state. Refuses a checkpoint of other parameters."""
    path = exp.out_dir / "last.pt"
    if not path.exists():
        settle_best(exp.out_dir, RunState())
        return RunState(), None
    ckpt = load_checkpoint(path, exp.device)
    if not isinstance(ckpt, dict) or not {"model", "state"} <= set(ckpt):
        raise ConfigError(f"{path} is not a slotlib checkpoint (no model and state); delete it to start the cell over")
    require_same_parameters(path, ckpt, exp.config.digest())
    check_same_data(exp, ckpt, metrics)   # metrics: the folder's metrics.json, read once by the caller
    exp.model.load_state_dict(ckpt["model"])
    state = RunState(**ckpt["state"])
    settle_best(exp.out_dir, state)
    return state, ckpt


def check_same_data(exp: Experiment, ckpt: dict, metrics: dict) -> None:
    """Refuse to resume on other tiles or another split than the run started with."""
    for key, now, what in (("data_fingerprint", exp.data.fingerprint, "tiles"),
                           ("split_fingerprint", exp.split_fingerprint, "train/val/test split")):
        then = ckpt.get(key, metrics.get(key))
        if then is not None and then != now:
            raise ConfigError(f"{exp.out_dir} was started on other {what} ({key} {then}, now {now}): data_root "
                              f"(EUROSAT_ROOT) or the split's files changed since; point them back at the data the "
                              f"run started with, or use another output folder")


def train(config: Config, out_dir: str | os.PathLike, *, progress: bool = True) -> dict[str, Any]:
    """prepare + fit: one run in-process (the CLI's and the notebook's code path)."""
    return fit(prepare(config, out_dir, progress=progress))
