"""Two cells on the same test tiles: McNemar's test on their predictions (``slotlib compare``, and the grid
report's best configuration against the others, seed by seed), without torch.

Two means say little when the accuracies differ by a few tiles: McNemar's test counts only the tiles the
two cells disagree on, ``b`` (A right, B wrong) and ``c`` (A wrong, B right). With fewer than
``EXACT_BELOW`` such tiles the p-value is the exact two-sided binomial test of ``b`` out of ``b + c`` at
one half; otherwise the chi-square statistic with continuity correction, ``(|b - c| - 1)^2 / (b + c)``,
on one degree of freedom. Reference: McNemar, Psychometrika 12 (1947); Dietterich, "Approximate
statistical tests for comparing supervised classification learning algorithms", Neural Computation 1998.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import ConfigError
from .folder import config_of, seed_of

PREDICTIONS_FILE = "predictions.npz"
EXACT_BELOW = 25   # discordant tiles under which the exact binomial test is used


def read_predictions(cell_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """A finished cell's ``predictions.npz`` (``indices``, ``target``, ``predicted``); ``ConfigError`` names a
    cell without one (cells trained before 2026-12-03 have none: rerun them)."""
    path = Path(cell_dir) / PREDICTIONS_FILE
    try:
        with np.load(path) as data:
            return {k: data[k] for k in ("indices", "target", "predicted")}
    except FileNotFoundError:
        raise ConfigError(f"{cell_dir} holds no {PREDICTIONS_FILE}: a cell writes it when it finishes (cells "
                          f"finished before it existed need a rerun)") from None
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"{path} is damaged ({err}); rerun the cell to write it again") from None


def mcnemar(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
    """McNemar's test between two cells' predictions on the same tiles: accuracies, the discordant counts
    ``a_only`` (A right, B wrong) and ``b_only``, the test used and its two-sided p-value."""
    from scipy.stats import binomtest, chi2

    if not np.array_equal(a["indices"], b["indices"]):
        raise ConfigError("the two cells were tested on different tiles (another split, split_seed or data); "
                          "McNemar's test needs the same test tiles")
    right_a, right_b = a["predicted"] == a["target"], b["predicted"] == b["target"]
    a_only, b_only = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    n = a_only + b_only
    if n == 0:
        test, p = "none (no tile where they disagree)", 1.0
    elif n < EXACT_BELOW:
        test, p = "exact binomial", float(binomtest(a_only, n, 0.5).pvalue)
    else:
        test, p = "chi-square, continuity-corrected", float(chi2.sf((abs(a_only - b_only) - 1) ** 2 / n, 1))
    return {"tiles": int(len(right_a)), "acc_a": float(right_a.mean()), "acc_b": float(right_b.mean()),
            "a_only": a_only, "b_only": b_only, "test": test, "p": p}


def compare_cells(a_dir: str | os.PathLike, b_dir: str | os.PathLike) -> str:
    """One paragraph for ``slotlib compare A B``."""
    r = mcnemar(read_predictions(a_dir), read_predictions(b_dir))
    return (f"A {a_dir}: {100 * r['acc_a']:.2f}% test; B {b_dir}: {100 * r['acc_b']:.2f}% test, on the same "
            f"{r['tiles']:,} tiles. A right where B is wrong: {r['a_only']}; B right where A is wrong: "
            f"{r['b_only']}. McNemar ({r['test']}): p = {r['p']:.3g}.")


def paired_rows(runs_dir: str | os.PathLike, table: pd.DataFrame, best: str | None = None) -> pd.DataFrame:
    """McNemar's test of the best configuration against every other one, seed by seed on the same test tiles.

    ``table`` holds one row per cell with ``cell``, ``status`` and ``best_val_acc`` (the grid report's
    table); configuration and seed come from the cell's name (:func:`~slotlib.runs.folder.config_of`,
    :func:`~slotlib.runs.folder.seed_of`). The best configuration is ``best``, else the one of highest mean
    validation accuracy (the test set never chooses). A seed is compared where both configurations finished it and both wrote
    ``predictions.npz``; a pair that cannot be compared is a row saying why."""
    done = table[table["status"] == "done"].assign(config=lambda t: t["cell"].map(config_of))
    if done.empty or done["config"].nunique() < 2:
        return pd.DataFrame()
    means = done.groupby("config", sort=False)["best_val_acc"].mean().sort_values(ascending=False)
    best = best if best in means.index else means.index[0]
    cells = {(row["config"], seed_of(row["cell"])): row["cell"] for _, row in done.iterrows()}
    rows = []
    for other in means.index.drop(best):
        for seed in sorted((s for c, s in cells if c == other and (best, s) in cells), key=str):
            row = {"best": best, "against": other, "seed": seed}
            try:
                r = mcnemar(read_predictions(Path(runs_dir) / cells[(best, seed)]),
                            read_predictions(Path(runs_dir) / cells[(other, seed)]))
            except ConfigError as err:
                rows.append({**row, "test": f"not compared: {err}"})
                continue
            rows.append({**row, "best test accuracy": r["acc_a"], "its test accuracy": r["acc_b"],
                         "best right only": r["a_only"], "it right only": r["b_only"], "test": r["test"], "p": r["p"]})
    return pd.DataFrame(rows)


BUDGET_AXES = ("stage1_epochs", "stage2_epochs", "image_size", "eval_size", "per_class_limit", "batch_size", "steps")


def train_minutes(table: pd.DataFrame) -> pd.Series:
    """Each cell's training minutes: ``train_wall_seconds`` (validation included, the final test left out), else
    the whole run's ``wall_seconds`` for cells finished before it was recorded."""
    wall = table["train_wall_seconds"] if "train_wall_seconds" in table.columns else pd.Series(np.nan, table.index)
    return wall.fillna(table["wall_seconds"]).astype(float) / 60


def budgets_differ(table: pd.DataFrame, axes: list[str]) -> bool:
    """Whether a grid's cells differ in budget: it varies an epoch count, a size or a limit, or its finished
    cells' training times differ by more than half."""
    if any(a in BUDGET_AXES for a in axes):
        return True
    minutes = train_minutes(table[table["status"] == "done"]).dropna()
    return len(minutes) > 1 and minutes.max() > 1.5 * minutes.min()
