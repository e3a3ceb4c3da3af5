"""One run's experiment: its data, loaders, model and device, prepared before training (``prepare``)
so a notebook can show them first. Bad parameters are refused here, before anything is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import LOCAL_ONLY, Config, ConfigError
from ..data.device import make_device_loaders
from ..data.eurosat import load_eurosat
from ..data.splits import split_indices
from ..data.transforms import make_loaders, normalization
from ..runs.folder import read_metrics, read_params
from ..runtime import channels_last, resolve_device, seed_everything
from .model import SlotClassifier, check_builds
from .steps import Objective, evaluate


@dataclass
class Experiment:
    """Everything one run needs, prepared before training so a notebook can show it first."""

    config: Config
    out_dir: Path
    data: Any            # slotlib.data.eurosat.EuroSAT
    splits: dict[str, np.ndarray]
    loaders: dict[str, Any]  # DataLoader ('loader' pipeline) or device_data.DeviceLoader ('fast')
    model: SlotClassifier
    device: torch.device
    mean: tuple[float, ...]
    std: tuple[float, ...]
    split_fingerprint: str = ""
    progress: bool = True

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.data.classes)

    @property
    def objective(self) -> Objective:
        """How this run's batches go through the model and are scored (slotlib.classify.steps.Objective)."""
        return Objective.of(self.config, self.device, len(self.data.classes))

    def evaluate(self, split: str, step_model: Any = None, tta: str = "none") -> dict[str, Any]:
        """:func:`slotlib.classify.steps.evaluate` of the run's model on one of its splits (``step_model``: a
        compiled twin of the model that runs the batches)."""
        return evaluate(self.model, self.loaders[split], self.objective, tta, step_model)


def prepare(config: Config, out_dir: str | os.PathLike, *, progress: bool = True,
            pretrained: bool | None = None) -> Experiment:
    """Check the run folder, load data, build the model. Raises ConfigError on bad input first.

    ``pretrained=False`` skips fetching backbone weights (when a checkpoint will be loaded anyway).
    """
    out_dir = Path(out_dir)
    check_run_folder(config, out_dir)
    dc = config.data
    check_builds(config.model, dc.image_size, eval_size=dc.eval_size,   # a bad backbone fails in seconds
                 head_params=config.head_params)
    device = resolve_device(config.train.device)
    ds = load_eurosat(dc.data_root, per_class_limit=dc.per_class_limit)
    try:
        splits = split_indices(ds, dc.split, split_seed=dc.split_seed, split_fractions=dc.split_fractions)
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(f"parameter 'split': {err}") from None
    empty = [name for name, idx in splits.items() if len(idx) == 0]
    if empty:
        raise ConfigError(f"the '{empty[0]}' split is empty with these parameters; raise 'per_class_limit' "
                          f"or change 'split_fractions'")
    mean, std = normalization(config.model.backbone)
    loaders = split_loaders(config, ds, splits, device, mean, std)
    seed_everything(config.train.seed)
    model = tune_for_device(SlotClassifier(config.model, num_classes=len(ds.classes), pretrained=pretrained,
                                           image_size=dc.image_size, head_params=config.head_params), device)
    split_fp = json.dumps({k: v.tolist() for k, v in splits.items()})
    return Experiment(config, out_dir, ds, splits, loaders, model, device, mean, std,
                      hashlib.sha256(split_fp.encode()).hexdigest()[:16], progress)


def split_loaders(config: Config, ds, splits: dict[str, np.ndarray], device: torch.device, mean: tuple[float, ...],
                  std: tuple[float, ...], eval_size: int | None = None, drop_last_train: bool = False
                  ) -> dict[str, Any]:
    """One loader per split for the run's pipeline, normalised by the backbone's ``mean``/``std``; evaluation
    splits at ``eval_size`` (default: the config's ``eval_px``; benchmarks/eval_sizes.py asks for others).
    The one place loaders are built: training, ``slotlib bench`` (``drop_last_train``: only full batches
    are timed) and the benchmarks."""
    dc = config.data
    common = dict(image_size=dc.image_size, batch_size=dc.batch_size, mean=mean, std=std, augment=dc.augment,
                  seed=config.train.seed, crop_scale=dc.crop_scale, dihedral=dc.dihedral,
                  eval_size=dc.eval_px if eval_size is None else eval_size, drop_last_train=drop_last_train)
    if dc.pipeline == "fast":
        return make_device_loaders(ds, splits, device=device, channels_last=channels_last(device), **common)
    return make_loaders(ds, splits, num_workers=dc.num_workers, **common)


def tune_for_device(model: nn.Module, device: torch.device) -> nn.Module:
    """The model on ``device``, channels_last where that is faster; on CUDA cuDNN autotuning and TF32."""
    model = model.to(device)
    if channels_last(device):
        model = model.to(memory_format=torch.channels_last)
    if device.type != "cuda":
        return model
    torch.backends.cudnn.benchmark = True           # fixed input size: let cuDNN pick its fastest kernels
    torch.backends.cuda.matmul.allow_tf32 = True    # fp32 matmuls outside autocast
    torch.backends.cudnn.allow_tf32 = True
    return model


def check_run_folder(config: Config, out_dir: Path) -> None:
    """Refuse a folder that holds a run of different parameters, or a finished run that lost its weights,
    before anything is written; a damaged run file is named with what to do."""
    metrics = read_metrics(out_dir)
    if metrics and metrics.get("status") == "done":
        check_finished(out_dir, metrics)
    old = read_params(out_dir)
    if old is None:
        return
    path = out_dir / "params.yaml"
    try:
        old_cfg = Config.from_params(old)
    except ConfigError as err:
        raise ConfigError(f"{path} holds parameters this version cannot read ({err}); use another output folder") from None
    # 'device' says where, not what: a run may be resumed or explained elsewhere (attention.ipynb opens
    # a cell trained with device 'auto' on 'cpu')
    old_cfg = dataclasses.replace(old_cfg, train=dataclasses.replace(old_cfg.train, device=config.train.device))
    if old_cfg.digest() != config.digest():
        new, there = config.to_params(), old_cfg.to_params()
        first = next((k for k in new if k not in LOCAL_ONLY and there.get(k) != new[k]), "?")
        raise ConfigError(f"{out_dir} already holds a run with different parameters ('{first}': "
                          f"{there.get(first)!r} there, {new.get(first)!r} now); "
                          f"use another output folder or delete that one")


def check_finished(out: Path, metrics: dict) -> None:
    """A finished run is never trained over: without its best.pt it is refused, its results kept."""
    if not (out / "best.pt").exists():
        test = metrics.get("test_acc")
        raise ConfigError(f"{out} holds a finished run" + (f" (test accuracy {test:.2%})" if isinstance(test, float)
                          else "") + " whose best.pt is missing; its results stay in metrics.json. To train it "
                          "again, use another output folder, or delete that metrics.json")
