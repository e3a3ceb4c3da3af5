"""Two cells on the same test tiles: McNemar's test on their predictions (``slotlib compare``), without torch.

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

from ..config import ConfigError

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
