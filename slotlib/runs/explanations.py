"""The explanation benchmark's files and tables, without torch (the report reads them).

:mod:`slotlib.classify.faithfulness` computes the benchmark and writes ``explanations.json`` and
``explanations.npz`` into a cell folder; this module names the methods and metrics and formats them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .folder import config_of

METHODS = ("head", "evidence", "gradcam", "random", "centre")
# name -> (better direction, one line for tables)
METRICS = {
    "deletion_auc": ("lower", "RISE deletion AUC of the predicted class's probability"),
    "insertion_auc": ("higher", "RISE insertion AUC"),
    "ins_minus_del": ("higher", "insertion AUC minus deletion AUC"),
    "infidelity": ("lower", "Captum infidelity (normalised)"),
    "sensitivity": ("lower", "Captum sensitivity_max"),
    "mosaic": ("higher", "share of a class's map mass in its own quadrant of a 2 x 2 mosaic (chance 0.25)"),
    "random_head_rho": ("lower", "Spearman rho with the maps after re-initialising the head"),
    "random_all_rho": ("lower", "Spearman rho with the maps after re-initialising head and backbone"),
}
RESULTS_FILE = "explanations.json"
FIGURES_FILE = "explanations.npz"



def mean_sd(values) -> dict[str, float]:
    """Mean, sample sd and count of the finite values."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return {"mean": float(v.mean()) if len(v) else float("nan"), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "n": int(len(v))}


def _fmt(stat: dict | None) -> str:
    if not stat or stat.get("n", 0) == 0 or not np.isfinite(stat["mean"]):
        return "-"
    if stat["n"] == 1:
        return f"{stat['mean']:.3f}"   # one value: no spread to state
    return f"{stat['mean']:.3f} ± {stat['sd']:.3f}"


def results_table(results: list[dict], over: str = "tiles") -> str:
    """A markdown table, one row per method, one column per metric.

    ``over='tiles'`` (one cell): mean ± sd over its tiles (mosaic: over its mosaics' classes).
    ``over='cells'`` (several cells, e.g. seeds): mean ± sd of the cells' means."""
    methods = [m for m in METHODS if any(m in r["methods"] for r in results)]
    metrics = [k for k in METRICS if any(k in r["methods"].get(m, {}) for r in results for m in methods)]
    head = "| method | " + " | ".join(f"{k} ({'↑' if METRICS[k][0] == 'higher' else '↓'})" for k in metrics) + " |"
    lines = [head, "|" + " --- |" * (len(metrics) + 1)]
    for m in methods:
        cells = []
        for k in metrics:
            if over == "tiles":
                cells.append(_fmt(results[0]["methods"].get(m, {}).get(k)))
            else:
                cells.append(_fmt(mean_sd([r["methods"][m][k]["mean"] for r in results
                                            if k in r["methods"].get(m, {})])))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)




def read_results(cell_dir: str | os.PathLike) -> dict | None:
    """A cell's ``explanations.json``, or None where the benchmark has not run (or its file is unreadable)."""
    path = Path(cell_dir) / RESULTS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_figures(cell_dir: str | os.PathLike) -> dict | None:
    """A cell's ``explanations.npz`` as a dict of arrays, or None."""
    path = Path(cell_dir) / FIGURES_FILE
    try:
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError):
        return None


def summary(results: dict[str, dict]) -> pd.DataFrame:
    """Cells' results (cell name -> explanations.json) as one row per configuration (:func:`config_of`) and
    method: each metric's mean ± sd over the cells (seeds), with the cell count and the head maps' largest
    value."""
    rows = []
    groups: dict[str, list[dict]] = {}
    for name, r in sorted(results.items()):
        groups.setdefault(config_of(name), []).append(r)
    for config, mine in groups.items():
        for method in METHODS:
            have = [r for r in mine if method in r["methods"]]
            if not have:
                continue
            row = {"cells of": config, "head": have[0]["head"], "method": method, "cells": len(have),
                   "tiles": int(np.mean([r["tiles"] for r in have])), "mosaics": int(np.mean([r["mosaics"] for r in have]))}
            for k in METRICS:
                stat = mean_sd([r["methods"][method][k]["mean"] for r in have if k in r["methods"][method]])
                row[k] = _fmt(stat)
            row["largest head value"] = f"{max(r['head_map_max'] for r in have):.3g}" if method == "head" else ""
            rows.append(row)
    return pd.DataFrame(rows)


def paired(figures: dict[str, np.ndarray], metric: str, a: str, b: str) -> dict[str, float]:
    """Method ``a`` against ``b`` on one metric over the same items of one cell (its ``explanations.npz``):
    the mean difference a - b, its count, and the two-sided Wilcoxon signed-rank p-value."""
    from scipy.stats import wilcoxon

    x, y = figures[f"items_{a}_{metric}"].astype(np.float64), figures[f"items_{b}_{metric}"].astype(np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    diff = x[keep] - y[keep]
    p = float(wilcoxon(diff).pvalue) if len(diff) > 1 and np.any(diff != 0) else 1.0
    return {"mean_diff": float(diff.mean()) if len(diff) else float("nan"), "n": int(len(diff)), "p": p}
