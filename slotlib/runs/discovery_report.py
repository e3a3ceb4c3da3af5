"""The report of an object-discovery grid: its table, FG-ARI against training minutes, and the masks.

Reads only what cells wrote (``metrics.json``, ``history.csv``, ``masks.npz``); it never trains and
needs no torch. Cells are ranked by validation FG-ARI of the readout their ``eval_masks`` names; the
test FG-ARI of both readouts stands beside it. The page is ``notebooks/discovery_report.ipynb``,
executed and exported as the classifier's report is (:func:`slotlib.runs.report.render`).
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .folder import cell_metrics, config_of, read_history, seed_of

# Only some cells have these (a black control; segmentation_errors, runs from 2026-12-06): dropped where none has.
OPTIONAL = ("black_fg_ari_alpha", "black_fg_ari_posterior", "alpha_edge_wrong", "alpha_objects_merged")
RESULT_COLUMNS = ["val_fg_ari", "fg_ari", "fg_ari_alpha", "fg_ari_posterior", "fg_ari_std", "test_mse", "steps_done",
                  "steps_per_second", "n_params", *OPTIONAL]
READOUTS = ("alpha", "posterior")


def collect(runs_dir: str | os.PathLike) -> pd.DataFrame:
    """One row per cell folder: setting (the name less seed and id), seed, status, the readout, results, error."""
    rows = []
    for cell_dir, m, problem in cell_metrics(runs_dir):
        row: dict[str, Any] = {"cell": cell_dir.name, "setting": config_of(cell_dir.name), "seed": seed_of(cell_dir.name)}
        if problem:                     # listed with its problem; the other cells still report
            rows.append({**row, "status": "damaged", "error": problem})
            continue
        if m is None:
            continue
        seconds = m.get("train_seconds")
        rows.append({**row, "status": m.get("status"), "eval_masks": m.get("params", {}).get("eval_masks"),
                     **{k: m.get(k) for k in RESULT_COLUMNS},
                     "train_minutes": seconds / 60 if isinstance(seconds, (int, float)) else None,
                     "error": m.get("error")})
    columns = ["cell", "setting", "seed", "status", "eval_masks", *RESULT_COLUMNS, "train_minutes", "error"]
    table = pd.DataFrame(rows, columns=columns)
    return table.drop(columns=[c for c in OPTIONAL if table[c].isna().all()])


def ranked(table: pd.DataFrame) -> pd.DataFrame:
    """Finished cells, best validation FG-ARI first (the test scenes never choose)."""
    done = table[table["status"] == "done"]
    return done.sort_values("val_fg_ari", ascending=False).drop(columns=["error"]).reset_index(drop=True)


def seed_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample sd over seeds of each setting's test FG-ARI (both readouts), best validation first."""
    done = table[table["status"] == "done"]
    if done.empty:
        return pd.DataFrame()
    out = done.groupby("setting").agg(
        seeds=("cell", "count"), val_mean=("val_fg_ari", "mean"),
        alpha_mean=("fg_ari_alpha", "mean"), alpha_sd=("fg_ari_alpha", "std"),
        posterior_mean=("fg_ari_posterior", "mean"), posterior_sd=("fg_ari_posterior", "std"),
        test_mse=("test_mse", "mean"), train_minutes=("train_minutes", "mean"))
    return out.sort_values("val_mean", ascending=False).reset_index()


def headline(table: pd.DataFrame) -> str:
    """One sentence, as HTML: the best setting by validation, its test FG-ARI of both readouts over its seeds."""
    summary = seed_summary(table)
    if summary.empty:
        return "<p><b>No cell has finished yet</b>: nothing to rank.</p>"
    top = summary.iloc[0]

    def spread(mean, sd):
        return f"{mean:.3f}" + (f" ± {sd:.3f}" if np.isfinite(sd) else "")
    return (f"<p><b>Best setting by validation FG-ARI: {html.escape(str(top['setting']))}</b> ({int(top['seeds'])} seed"
            f"{'s' if top['seeds'] > 1 else ''}): <b>test FG-ARI {spread(top['alpha_mean'], top['alpha_sd'])} with "
            f"alpha masks</b> (the paper's readout), {spread(top['posterior_mean'], top['posterior_sd'])} with "
            f"posterior masks" + (f"; {top['train_minutes']:.1f} training minutes a seed" if pd.notna(top["train_minutes"])
                                  else "") + ".</p>")


def _first_seeds(table: pd.DataFrame) -> dict[str, str]:
    """Setting -> its finished cell with the smallest seed number, settings best first."""
    order = list(seed_summary(table).get("setting", []))
    done = table[table["status"] == "done"].sort_values(["seed", "cell"], na_position="last")
    firsts = done.drop_duplicates("setting").set_index("setting")["cell"]
    return {s: firsts[s] for s in order}


def first_seed_per_setting(table: pd.DataFrame) -> list[str]:
    """Per setting, best first, the finished cell with the smallest seed number: whose masks the report draws."""
    return list(_first_seeds(table).values())


def drawn_cells(table: pd.DataFrame) -> list[tuple[str, str]]:
    """The cells whose masks the report draws, each with why, per setting best first: the finished cell with
    the smallest seed number and, where the setting has more seeds, the one with the lowest test FG-ARI of its
    headline readout (``fg_ari``), so a seed that failed is seen, not averaged away."""
    done = table[table["status"] == "done"]
    drawn = []
    for setting, first in _first_seeds(table).items():
        seeds = done[done["setting"] == setting]
        if len(seeds) == 1:
            drawn.append((first, "its only seed"))
            continue
        worst = seeds.sort_values(["fg_ari", "cell"]).iloc[0]["cell"]
        lowest = f"the lowest test FG-ARI of the setting's {len(seeds)} seeds"
        if worst == first:
            drawn.append((first, f"the smallest seed number and {lowest}"))
        else:
            drawn += [(first, "the smallest seed number"), (worst, lowest)]
    return drawn


def mask_folders(runs_dir: str | os.PathLike, cell: str, why: str = "") -> list[tuple[str, Path]]:
    """The folders whose masks.npz the report draws for ``cell``, each with its title (the cell's name, and
    ``why`` it is drawn), then its black-background control's (``black/``, where the cell ran one: ``black_steps``)."""
    folder = Path(runs_dir) / cell
    control = folder / "black"
    title = f"{cell} ({why})" if why else cell
    return [(title, folder)] + ([(f"{cell}, its black-background control", control)] if control.is_dir() else [])


def plot_fg_ari_minutes(runs_dir: str | os.PathLike, table: pd.DataFrame) -> Any:
    """Validation FG-ARI against training minutes, one line per finished cell, one colour per setting:
    alpha masks solid, posterior dashed; each cell's test FG-ARI (alpha) is the dot at its end."""
    import matplotlib.pyplot as plt

    done = table[table["status"] == "done"]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    colours = {s: f"C{i % 10}" for i, s in enumerate(seed_summary(table).get("setting", []))}
    labelled = set(first_seed_per_setting(table))
    for _, cell in done.iterrows():
        rows = [r for r in read_history(Path(runs_dir) / cell["cell"]) if not math.isnan(r.get("val_fg_ari_alpha", math.nan))]
        minutes = [r["seconds"] / 60 for r in rows]
        colour = colours[cell["setting"]]
        for kind, style in zip(READOUTS, ("-", "--")):
            ax.plot(minutes, [r[f"val_fg_ari_{kind}"] for r in rows], style, color=colour, lw=1.2, alpha=0.85,
                    label=f"{cell['setting']} ({kind})" if cell["cell"] in labelled else None)
        if pd.notna(cell["train_minutes"]) and pd.notna(cell["fg_ari_alpha"]):
            ax.plot([cell["train_minutes"]], [cell["fg_ari_alpha"]], "o", color=colour, ms=5)
    ax.set(xlabel="training minutes (validation and test left out)", ylabel="FG-ARI", ylim=(0, 1),
           title="validation FG-ARI against training minutes (dots: test, alpha masks)")
    ax.grid(alpha=0.3)
    if done.size:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def plot_mask_samples(samples: dict[str, np.ndarray], title: str, n: int = 8) -> Any:
    """Scenes, reconstructions, the slot owning each pixel by alpha masks and by the posterior, true masks."""
    import matplotlib.pyplot as plt

    n = min(n, len(samples["images"]))
    fig, axes = plt.subplots(5, n, figsize=(1.5 * n, 7.8), squeeze=False)
    labels = ("scene", "reconstruction", "alpha masks\n(the paper's)", "posterior masks", "true masks")
    for i in range(n):
        axes[0, i].imshow(samples["images"][i])
        axes[1, i].imshow(samples["recon"][i])
        for row, kind in enumerate(READOUTS, start=2):
            axes[row, i].imshow(samples[f"{kind}_segmentation"][i], cmap="tab10", vmin=0, vmax=9,
                                interpolation="nearest")
            axes[row, i].set_title(f"FG-ARI {samples[f'{kind}_fg_ari'][i]:.2f}", fontsize=7)
        axes[4, i].imshow(samples["true_masks"][i], cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax, label in zip(axes[:, 0], labels):
        ax.set_ylabel(label, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
