"""Collect a grid folder's cell outputs into a table, and render the analysis notebook to HTML.

Reads only what cells wrote (``metrics.json``, ``history.csv``) and the grid's copy of its params
file; it never trains. Grids are ranked by validation accuracy; test accuracy stands beside it.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import grid_products
from .folder import DamagedRunFile, cell_dirs, grid_copies, read_history_table, read_metrics
from .grid import NOTEBOOKS, execute_notebook

ANALYSIS_NOTEBOOK = NOTEBOOKS / "analysis.ipynb"


RESULT_COLUMNS = ["best_val_acc", "test_acc", "best_stage", "best_epoch", "n_params", "wall_seconds",
                  "train_images_per_second", "area_size", "deletion_auc", "insertion_auc"]


def grid_axes(runs_dir: str | os.PathLike) -> list[str]:
    """The parameters the grid varies (from its params file), seed last when seeds are given."""
    import yaml

    axes, seeds = [], False
    for path in grid_copies(runs_dir):                           # grid.yaml, then files added with --add-cells
        raw = yaml.safe_load(path.read_text()) or {}
        products = grid_products(raw.get("grid") or {})         # a list of products: their axes, in order
        axes += [name for product in products for name in product]
        seeds = seeds or bool(raw.get("seeds"))
    return list(dict.fromkeys(axes)) + (["seed"] if seeds else [])


def collect(runs_dir: str | os.PathLike) -> pd.DataFrame:
    """One row per cell folder: the grid axes, status, results and error."""
    runs_dir = Path(runs_dir)
    axes = grid_axes(runs_dir)
    rows = []
    for cell_dir in cell_dirs(runs_dir):
        try:
            m = read_metrics(cell_dir)
        except DamagedRunFile as err:   # listed with its problem; the other cells still report
            rows.append({"cell": cell_dir.name, "status": "damaged", "error": str(err)})
            continue
        if m is None:
            continue
        params = m.get("params", {})
        rows.append({"cell": cell_dir.name, "status": m.get("status"),
                     **{a: params.get(a) for a in axes or ["head"]},
                     **{k: m.get(k) for k in RESULT_COLUMNS}, "error": m.get("error")})
    columns = ["cell", "status", *(axes or ["head"]), *RESULT_COLUMNS, "error"]
    return pd.DataFrame(rows, columns=columns)


def ranked(table: pd.DataFrame) -> pd.DataFrame:
    """Finished cells, best validation accuracy first (model selection never looks at test)."""
    done = table[table["status"] == "done"]
    return done.sort_values("best_val_acc", ascending=False).drop(columns=["error"]).reset_index(drop=True)


def seed_summary(table: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """Mean and spread (sample std) over seeds of each setting, ranked by mean validation accuracy."""
    done = table[table["status"] == "done"]
    keys = [a for a in axes if a != "seed"]
    if done.empty:
        return pd.DataFrame()
    grouped = done.groupby(keys, dropna=False) if keys else done.assign(_all="all").groupby("_all")
    out = grouped.agg(seeds=("cell", "count"), val_mean=("best_val_acc", "mean"), val_std=("best_val_acc", "std"),
                      test_mean=("test_acc", "mean"), test_std=("test_acc", "std"), n_params=("n_params", "first"))
    return out.sort_values("val_mean", ascending=False)


def explanations(table: pd.DataFrame) -> pd.DataFrame:
    """Area size and deletion/insertion AUC per finished cell, beside its accuracy."""
    cols = ["cell", "best_val_acc", "test_acc", "area_size", "deletion_auc", "insertion_auc"]
    return ranked(table)[cols]


def failed(table: pd.DataFrame) -> pd.DataFrame:
    """Failed cells and cells whose run files are damaged, with the whole error of each."""
    return table[table["status"].isin(["failed", "damaged"])][["cell", "status", "error"]].reset_index(drop=True)


def sortable_html(table: pd.DataFrame, float_format: str = "{:.4f}") -> str:
    """An HTML table whose columns sort on click; self-contained, so it works offline in the report."""
    head = "".join(f"<th onclick=\"slotlibSort(this)\" style='cursor:pointer'>{html.escape(str(c))} &#x21C5;</th>"
                   for c in table.columns)

    def cell(v):
        if isinstance(v, float) and not np.isnan(v):
            return f"<td data-v='{v}'>{float_format.format(v)}</td>"
        return f"<td data-v='{html.escape(str(v))}'>{html.escape('' if v is None else str(v))}</td>"

    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in table.itertuples(index=False))
    script = """<script>
function slotlibSort(th){const t=th.closest('table'),i=[...th.parentNode.children].indexOf(th),
b=t.tBodies[0],r=[...b.rows],asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';
r.sort((x,y)=>{const a=x.cells[i].dataset.v,c=y.cells[i].dataset.v,na=parseFloat(a),nc=parseFloat(c);
const d=(!isNaN(na)&&!isNaN(nc))?na-nc:a.localeCompare(c);return asc?d:-d});r.forEach(x=>b.appendChild(x));}
</script>"""
    return f"{script}<table class='dataframe'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def axis_label(value) -> str:
    """A grid value as a category: 'null' for None (NaN once pandas has seen a number beside it),
    not 'nan', which seaborn takes for a missing value; 32.0 back to 32."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "null"
    return f"{value:g}" if isinstance(value, float) else str(value)


def plot_axes(table: pd.DataFrame, axes: list[str]):
    """Validation and test accuracy against each grid axis (one panel per axis, seeds as points)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    done = table[table["status"] == "done"]
    shown = [a for a in axes if a != "seed"] or ["head"]
    fig, panels = plt.subplots(1, len(shown), figsize=(4 * len(shown), 3.3), squeeze=False)
    long = done.melt(id_vars=shown, value_vars=["best_val_acc", "test_acc"], var_name="split", value_name="accuracy")
    long["split"] = long["split"].map({"best_val_acc": "val", "test_acc": "test"})
    for ax, axis in zip(panels[0], shown):
        data = long.assign(**{axis: long[axis].map(axis_label)})
        sns.pointplot(data=data, x=axis, y="accuracy", hue="split", ax=ax, dodge=0.3, errorbar="sd",
                      linestyles="none", markers=["o", "s"])
        ax.set_title(axis)
    fig.tight_layout()
    return fig


def plot_top_curves(runs_dir: str | os.PathLike, table: pd.DataFrame, k: int = 3):
    """Validation accuracy per epoch of the k best cells."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for cell in ranked(table)["cell"].head(k):
        try:
            h = read_history_table(Path(runs_dir) / cell)
        except DamagedRunFile as err:   # the curve is left out and the problem said on the figure
            ax.plot([], [], label=f"{cell}: {err}"[:120])
            continue
        ax.plot(np.arange(1, len(h) + 1), h["val_acc"], label=cell)
    ax.set(xlabel="epoch (both stages)", ylabel="val accuracy", title=f"top {k} cells by validation accuracy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_params_vs_accuracy(table: pd.DataFrame):
    import matplotlib.pyplot as plt
    import seaborn as sns

    done = table[table["status"] == "done"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    hue = "head" if "head" in done.columns else None
    sns.scatterplot(data=done, x="n_params", y="test_acc", hue=hue, ax=ax)
    ax.set(xlabel="parameters", ylabel="test accuracy")
    fig.tight_layout()
    return fig


def render(runs_dir: str | os.PathLike) -> Path:
    """Execute the analysis notebook on ``runs_dir`` and write ``runs_dir/report.html`` (code hidden)."""
    import nbformat
    from nbconvert import HTMLExporter

    runs_dir = Path(runs_dir).resolve()
    from ..config import ConfigError

    if not runs_dir.is_dir() or not cell_dirs(runs_dir):
        raise ConfigError(f"{runs_dir} holds no cell folders (folders with params.yaml or metrics.json); run "
                          f"`slotlib grid PARAMS.yaml --out {runs_dir}` first, or name the folder a grid wrote to")
    kinds = set()
    for d in cell_dirs(runs_dir):
        try:
            kinds.add((read_metrics(d) or {}).get("kind"))
        except DamagedRunFile:
            pass
    if kinds == {"discovery"}:
        raise ConfigError(f"{runs_dir} holds object-discovery cells, and the report covers classifier grids only; "
                          f"use 'slotlib status {runs_dir}' and each cell's executed object_discovery.ipynb")
    executed = runs_dir / "analysis.ipynb"
    execute_notebook(ANALYSIS_NOTEBOOK, executed, {"runs_dir": str(runs_dir)})
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nbformat.read(executed, as_version=4))
    out = runs_dir / "report.html"
    from .files import write_atomic
    write_atomic(out, body)
    return out
