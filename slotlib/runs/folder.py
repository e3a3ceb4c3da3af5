"""Reading a cell folder: the one place that does (status, report, resume and the grid all use it).

A cell folder holds ``params.yaml``, ``history.csv``, ``metrics.json`` (``status``: running,
done or failed), ``best.pt`` and ``last.pt`` (docs/design.md, "One cell's folder"). A file that is
there but cannot be read is a :class:`DamagedRunFile`, which names the file and what to do; the
grid's status and report list that cell with its problem and carry on with the others.
"""

from __future__ import annotations

import csv
import json
import math
import os
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError

PARAMS, HISTORY, METRICS = "params.yaml", "history.csv", "metrics.json"
MAPS = "maps.npz"         # per-class attention over fixed test tiles, written at the end of a run (report heatmaps)
MAPS_KEYS = ("tiles", "labels", "preds", "probs", "maps", "mean_maps", "class_names")
MASK_SAMPLES = "masks.npz"  # object discovery: test scenes with both readouts' segmentation (discovery report)
MASK_KEYS = ("images", "recon", "true_masks", "alpha_segmentation", "posterior_segmentation", "alpha_fg_ari",
             "posterior_fg_ari")
GRID_COPY = "grid.yaml"   # in a grid's folder: the params file that made it
STATUSES = ("running", "done", "failed")


class DamagedRunFile(ConfigError):
    """A run file that exists but cannot be read (garbage, truncated, wrong shape)."""


def _damaged(path: Path, why: str, remedy: str) -> DamagedRunFile:
    return DamagedRunFile(f"{path} is damaged ({why}); {remedy}")


def read_metrics(cell_dir: str | os.PathLike) -> dict | None:
    """A run folder's metrics.json, or None before the run has written one."""
    path = Path(cell_dir) / METRICS
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    remedy = "delete it to run the cell again (training resumes from last.pt)"
    try:
        metrics = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _damaged(path, f"not JSON: {err}", remedy) from None
    if not isinstance(metrics, dict) or metrics.get("status") not in STATUSES:
        raise _damaged(path, f"not a JSON object with a 'status' of {', '.join(STATUSES)}", remedy)
    for key in ACCURACIES:
        value = metrics.get(key)
        if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                      and (0 <= value <= 1 or math.isnan(value))):
            raise _damaged(path, f"'{key}' is {value!r}; an accuracy is a fraction from 0 to 1", remedy)
    if metrics["status"] == "done":
        _check_params_match(Path(cell_dir), metrics)
    return metrics


ACCURACIES = ("best_val_acc", "test_acc", "test_acc_plain", "val_acc_tta", "stage1_best_val_acc")


def _check_params_match(cell_dir: Path, metrics: dict) -> None:
    """A finished cell's params.yaml must still be the parameters its run recorded in metrics.json
    ('params'): one edited by hand after the run is damaged, so it is neither skipped as done nor
    ranked. (Compared as written, not by recomputing the id: a later change of a default must not
    make old cells look edited.)"""
    recorded = metrics.get("params")
    path = cell_dir / PARAMS
    if not isinstance(recorded, dict) or not path.exists():
        return
    params = read_params(cell_dir) or {}
    if params != recorded:
        changed = sorted(k for k in set(params) | set(recorded) if params.get(k) != recorded.get(k))
        raise _damaged(path, f"'{changed[0]}' is {params.get(changed[0])!r} there but {recorded.get(changed[0])!r} "
                             f"in metrics.json: edited after the run",
                       "restore it from metrics.json's 'params', or delete the cell folder to run it again")


def cell_status(cell_dir: Path) -> str:
    """'done', 'running' (started, resumable), 'failed' or 'pending'."""
    metrics = read_metrics(cell_dir)
    return metrics["status"] if metrics else "pending"


def read_params(cell_dir: str | os.PathLike) -> dict[str, Any] | None:
    """A run folder's params.yaml (flat name -> value), or None before the run has written one."""
    path = Path(cell_dir) / PARAMS
    try:
        params = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise _damaged(path, f"not YAML: {str(err).splitlines()[0]}", "delete it; the run rewrites it") from None
    if params is None:
        raise _damaged(path, "empty", "delete it; the run writes it again when the cell runs")
    if not isinstance(params, dict):
        raise _damaged(path, "not a mapping of parameter names to values", "delete it; the run rewrites it")
    return params


def read_history(cell_dir: str | os.PathLike) -> list[dict[str, float]]:
    """A run folder's history.csv as rows of floats (NaN where a column is empty), oldest first."""
    path = Path(cell_dir) / HISTORY
    try:
        with open(path) as f:
            return [{k: float(v) if v not in ("", None) else math.nan for k, v in row.items()}
                    for row in csv.DictReader(f)]
    except (ValueError, TypeError, UnicodeDecodeError, csv.Error) as err:
        raise _damaged(path, f"not a table of numbers: {err}", "delete it; the run rewrites it") from None


def read_history_table(cell_dir: str | os.PathLike, columns: tuple[str, ...] = ("val_acc",)):
    """A run folder's history.csv as a pandas DataFrame (for tables and plots); the ``columns`` must be there."""
    import pandas as pd

    path = Path(cell_dir) / HISTORY
    if not path.exists():
        raise DamagedRunFile(f"{path} is missing; the run writes it after its first epoch")
    try:
        table = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise _damaged(path, f"not a CSV table: {str(err).splitlines()[0]}", "delete it; the run rewrites it") from None
    missing = [c for c in columns if c not in table.columns]
    if missing or any(table[c].dtype.kind not in "if" for c in columns):
        raise _damaged(path, f"no numeric column {missing[0] if missing else columns[0]!r}",
                       "delete it; the run rewrites it")
    return table


def _load_npz(path: Path, keys: tuple[str, ...], remedy: str) -> dict[str, Any] | None:
    """A run folder's numpy archive as plain arrays (no torch), None when absent; damaged when unreadable
    or without one of ``keys``."""
    import zipfile

    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except FileNotFoundError:
        return None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise _damaged(path, f"not a numpy archive: {str(err).splitlines()[0] if str(err) else type(err).__name__}",
                       remedy) from None
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise _damaged(path, f"no {missing[0]!r} array", remedy)
    return arrays


def read_maps(cell_dir: str | os.PathLike) -> dict[str, Any] | None:
    """A run folder's maps.npz as plain numpy arrays (no torch), or None when the run wrote none."""
    path = Path(cell_dir) / MAPS
    remedy = f"delete it, then `python -m slotlib.classify.explain {Path(cell_dir)}` writes it again from best.pt"
    arrays = _load_npz(path, MAPS_KEYS, remedy)
    if arrays is None:
        return None
    m, k = len(arrays["labels"]), len(arrays["class_names"])
    if arrays["maps"].ndim != 4 or arrays["maps"].shape[:2] != (m, k) or len(arrays["tiles"]) != m:
        raise _damaged(path, f"maps of shape {arrays['maps'].shape} do not fit {m} tiles and {k} classes", remedy)
    return arrays


def read_mask_samples(cell_dir: str | os.PathLike) -> dict[str, Any] | None:
    """An object-discovery cell's masks.npz as plain numpy arrays, or None when the cell wrote none."""
    path = Path(cell_dir) / MASK_SAMPLES
    remedy = ("delete it; `slotlib train PARAMS.yaml --cell CELL --out FOLDER` on the same folder writes it again "
              "from model.pt without retraining")
    arrays = _load_npz(path, MASK_KEYS, remedy)
    if arrays is not None and any(len(arrays[k]) != len(arrays["images"]) for k in MASK_KEYS):
        raise _damaged(path, f"its arrays do not all hold {len(arrays['images'])} scenes", remedy)
    return arrays


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load`` of a run's checkpoint with ``weights_only=True``; an unreadable one is a DamagedRunFile."""
    import torch

    path = Path(path)
    try:
        return torch.load(path, weights_only=True, map_location=map_location)
    except pickle.UnpicklingError:
        # torch's message advises weights_only=False, which would run whatever code the file holds: never.
        raise DamagedRunFile(f"{path} holds objects other than tensors and plain values, so slotlib will not "
                             f"load it (unpickling it could run code); it was not written by slotlib: delete it "
                             f"or move it away") from None
    except FileNotFoundError:
        raise
    except (RuntimeError, EOFError, OSError, ValueError) as err:   # truncated or not a torch file
        raise _damaged(path, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'unreadable'}",
                       "delete it (last.pt: the cell starts over; best.pt: retrain the cell)") from None


def require_same_parameters(path: Path, ckpt: dict, digest: str) -> None:
    """Refuse to resume from checkpoint ``path`` when its run's parameters (``ckpt["digest"]``) are not ``digest``:
    the one sentence both applications' resume gives, before anything is written."""
    if ckpt.get("digest") != digest:
        raise ConfigError(f"{path} was written by a run with different parameters (digest {ckpt.get('digest')}, "
                          f"now {digest}); use another output folder or delete it")


def config_of(cell: str) -> str:
    """A cell folder's name less its seed and id, the cells of one configuration over seeds:
    ``scouter_ep28_seed1-25371c87`` -> ``scouter_ep28``; ``seed2-8114d277`` -> ``base``; ``my_cell`` stays."""
    return re.sub(r"_?seed\d+$", "", re.sub(r"-[0-9a-f]+$", "", cell)) or "base"


def seed_of(cell: str) -> int | None:
    """The seed a cell folder's name ends with (``scouter_seed1-25371c87`` -> 1), None without one."""
    found = re.search(r"seed(\d+)(?:-[0-9a-f]+)?$", cell)
    return int(found.group(1)) if found else None


def cell_dirs(out_root: str | os.PathLike) -> list[Path]:
    """The cell folders under a grid's folder (those holding params.yaml or metrics.json), by name."""
    return sorted(p for p in Path(out_root).iterdir()
                  if p.is_dir() and ((p / PARAMS).exists() or (p / METRICS).exists()))


def cell_metrics(out_root: str | os.PathLike) -> Iterator[tuple[Path, dict | None, str | None]]:
    """Each cell folder (:func:`cell_dirs`) with its metrics.json: ``(folder, metrics, None)``, metrics None
    before a run writes one, or ``(folder, None, problem)`` where a run file is damaged. Every reader of a
    whole grid goes through here, so a damaged cell is listed with its problem, never stops the others."""
    for cell in cell_dirs(out_root):
        try:
            metrics = read_metrics(cell)
            if metrics is None:
                read_params(cell)      # a folder with a damaged (e.g. empty) params.yaml only is listed too
        except DamagedRunFile as err:
            yield cell, None, str(err)
            continue
        yield cell, metrics, None


def grid_copies(out_root: str | os.PathLike) -> list[Path]:
    """The params files a grid folder was made from: grid.yaml, then any added with ``--add-cells``."""
    out_root = Path(out_root)
    first = out_root / GRID_COPY
    added = sorted(out_root.glob("grid-added-*.yaml"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    return ([first] if first.exists() else []) + added


def best_finished_cell(grid_dir: str | os.PathLike) -> Path:
    """The folder of a grid's best finished cell: status ``done``, highest ``best_val_acc``, ties to the
    first by name (attention.ipynb opens it when ``run_dir`` is None). Damaged cells are passed over."""
    grid_dir = Path(grid_dir)
    best: tuple[float, Path] | None = None
    for cell, metrics, _ in cell_metrics(grid_dir) if grid_dir.is_dir() else []:
        metrics = metrics or {}
        acc = metrics.get("best_val_acc")
        if metrics.get("status") == "done" and isinstance(acc, (int, float)) and not math.isnan(acc):
            if best is None or acc > best[0]:
                best = (acc, cell)
    if best is None:
        raise ConfigError(f"no finished cell in {grid_dir}: run `make demo` first (it writes outputs/demo), "
                          f"or set run_dir to a finished cell's folder")
    return best[1]
