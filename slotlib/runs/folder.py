"""Reading a cell folder: the one place that does (status, report, resume and the grid all use it).

A cell folder holds ``params.yaml``, ``history.csv``, ``metrics.json`` (``status``: running,
done or failed), ``best.pt`` and ``last.pt`` (DESIGN.md, "One cell's folder").
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

import yaml


def read_metrics(cell_dir: str | os.PathLike) -> dict | None:
    """A run folder's metrics.json, or None before the run has written one."""
    try:
        return json.loads((Path(cell_dir) / "metrics.json").read_text())
    except FileNotFoundError:
        return None


def cell_status(cell_dir: Path) -> str:
    """'done', 'running' (started, resumable), 'failed' or 'pending'."""
    metrics = read_metrics(cell_dir)
    return metrics["status"] if metrics else "pending"


PARAMS, HISTORY, METRICS = "params.yaml", "history.csv", "metrics.json"


def read_params(cell_dir: str | os.PathLike) -> dict[str, Any] | None:
    """A run folder's params.yaml (flat name -> value), or None before the run has written one."""
    try:
        return yaml.safe_load((Path(cell_dir) / PARAMS).read_text()) or {}
    except FileNotFoundError:
        return None


def read_history(cell_dir: str | os.PathLike) -> list[dict[str, float]]:
    """A run folder's history.csv as rows of floats (NaN where a column is empty), oldest first."""
    with open(Path(cell_dir) / HISTORY) as f:
        return [{k: float(v) if v not in ("", None) else math.nan for k, v in row.items()} for row in csv.DictReader(f)]


def read_history_table(cell_dir: str | os.PathLike):
    """A run folder's history.csv as a pandas DataFrame (for tables and plots)."""
    import pandas as pd

    return pd.read_csv(Path(cell_dir) / HISTORY)


def cell_dirs(out_root: str | os.PathLike) -> list[Path]:
    """The cell folders under a grid's folder (those holding params.yaml or metrics.json), by name."""
    return sorted(p for p in Path(out_root).iterdir()
                  if p.is_dir() and ((p / PARAMS).exists() or (p / METRICS).exists()))
