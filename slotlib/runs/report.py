"""Collect a grid folder's cell outputs into a table, and render the analysis notebook to HTML.

Reads only what cells wrote (``metrics.json``, ``history.csv``, ``maps.npz``) and the grid's copy of
its params file; it never trains and needs no torch. Grids are ranked by validation accuracy; test
accuracy stands beside it. The figures are in :mod:`slotlib.runs.report_figures`; the page is
``notebooks/analysis.ipynb`` executed and exported with an offline template (``templates/``).
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import ConfigError, grid_products
from .folder import DamagedRunFile, cell_metrics, config_of, grid_copies, read_maps, read_metrics
from .grid import NOTEBOOKS, execute_notebook

ANALYSIS_NOTEBOOK = NOTEBOOKS / "analysis.ipynb"
DISCOVERY_NOTEBOOK = NOTEBOOKS / "discovery_report.ipynb"
TEMPLATES = Path(__file__).parent / "templates"


RESULT_COLUMNS = ["best_val_acc", "test_acc", "test_acc_plain", "val_acc_tta", "best_stage", "best_epoch", "n_params",
                  "wall_seconds", "train_wall_seconds", "train_images_per_second", "area_size", "deletion_auc", "insertion_auc"]
# only cells with test-time augmentation have the first two; cells finished before 2026-12-03 lack the third
OPTIONAL_COLUMNS = ("test_acc_plain", "val_acc_tta", "train_wall_seconds")


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
    for cell_dir, m, problem in cell_metrics(runs_dir):
        if problem:                     # listed with its problem; the other cells still report
            rows.append({"cell": cell_dir.name, "status": "damaged", "error": problem})
            continue
        if m is None:
            continue
        params = m.get("params", {})
        rows.append({"cell": cell_dir.name, "status": m.get("status"),
                     **{a: params.get(a) for a in axes or ["head"]},
                     **{k: m.get(k) for k in RESULT_COLUMNS}, "error": m.get("error")})
    columns = ["cell", "status", *(axes or ["head"]), *RESULT_COLUMNS, "error"]
    table = pd.DataFrame(rows, columns=columns)
    return table.drop(columns=[c for c in OPTIONAL_COLUMNS if table[c].isna().all()])


def ranked(table: pd.DataFrame) -> pd.DataFrame:
    """Finished cells, best validation accuracy first (model selection never looks at test)."""
    done = table[table["status"] == "done"]
    return done.sort_values("best_val_acc", ascending=False).drop(columns=["error"]).reset_index(drop=True)


def seed_summary(table: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """Mean and spread (sample std) over seeds of each setting, ranked by mean validation accuracy. Without
    grid axes (cells trained one by one into a folder) a setting is a cell name less its seed."""
    done = table[table["status"] == "done"]
    keys = [a for a in axes if a != "seed"]
    if done.empty:
        return pd.DataFrame()
    grouped = (done.groupby(keys, dropna=False) if keys
               else done.assign(setting=done["cell"].map(config_of)).groupby("setting"))
    out = grouped.agg(seeds=("cell", "count"), val_mean=("best_val_acc", "mean"), val_std=("best_val_acc", "std"),
                      test_mean=("test_acc", "mean"), test_std=("test_acc", "std"), n_params=("n_params", "first"))
    return out.sort_values("val_mean", ascending=False)


def explanations(table: pd.DataFrame) -> pd.DataFrame:
    """Area size and deletion/insertion AUC per finished cell, beside its accuracy."""
    cols = ["cell", "best_val_acc", "test_acc", "area_size", "deletion_auc", "insertion_auc"]
    return ranked(table)[cols]


def explanation_results(runs_dir: str | os.PathLike, table: pd.DataFrame) -> dict[str, dict]:
    """The explanation benchmark's results (``explanations.json``, written by ``slotlib explain``) of the
    finished cells that have them, best validation accuracy first."""
    from .explanations import read_results

    found = {}
    for cell in ranked(table)["cell"]:
        results = read_results(Path(runs_dir) / cell)
        if results is not None:
            found[cell] = results
    return found


def best_explained_per_head(results: dict[str, dict]) -> list[str]:
    """Of the cells with benchmark results (best first), the first of each head."""
    seen, out = set(), []
    for cell, r in results.items():
        if r["head"] not in seen:
            seen.add(r["head"])
            out.append(cell)
    return out


def failed(table: pd.DataFrame) -> pd.DataFrame:
    """Failed cells and cells whose run files are damaged, with the whole error of each."""
    return table[table["status"].isin(["failed", "damaged"])][["cell", "status", "error"]].reset_index(drop=True)


REFERENCE = {"test_acc": 0.9854, "n_params": 2_660_000,
             "what": "MobileViT-v2 0.75 + SCOUTER, 224 px, 55 + 45 GPU epochs (params/reference_best.yaml)"}
PERCENT_COLUMNS = ("best_val_acc", "test_acc", "test_acc_plain", "val_acc_tta", "val_mean", "val_std", "test_mean",
                   "test_std", "stage1_best_val_acc")


_MD_SPECIAL = re.compile(r"([\\`*_\[\]()<>!|#~])")   # what can make emphasis, code, a link or a tag


def md(value) -> str:
    """Text from a folder name, a file or a parameter, safe inside Markdown: HTML-escaped and Markdown's
    punctuation backslash-escaped, so it shows as written and never becomes a live element or a link."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(str(value), quote=True))


def pct(value, digits: int = 2) -> str:
    """An accuracy (a fraction) in percent, '–' where it is undefined (a missing value, one seed's spread)."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    return f"{100 * float(value):.{digits}f}%"


def plain(value) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{int(value):,}"
    return str(value)


def headline(table: pd.DataFrame, axes: list[str]) -> str:
    """The best cell by validation accuracy, its test accuracy, its setting over seeds, and the reference."""
    best = ranked(table)
    if best.empty:
        return "<p><b>No cell has finished yet</b>: nothing to rank.</p>"
    top = best.iloc[0]
    keys = [a for a in axes if a != "seed"]
    line = (f"<b>Best cell: {html.escape(str(top['cell']))}</b> &mdash; validation {pct(top['best_val_acc'])}, "
            f"<b>test {pct(top['test_acc'])}</b>"
            + (f" (with test-time augmentation; plain {pct(top['test_acc_plain'])})"
               if pd.notna(top.get("test_acc_plain")) else "") + f", {plain(top['n_params'])} parameters")
    summary = seed_summary(table, axes)
    if keys and len(summary):
        key = tuple(top[k] for k in keys) if len(keys) > 1 else top[keys[0]]
        try:
            row = summary.loc[key]
        except KeyError:
            row = None
        if row is not None and int(row["seeds"]) > 1:
            line += (f"; its setting over {int(row['seeds'])} seeds: test {pct(row['test_mean'])} ± "
                     f"{pct(row['test_std'])} (validation {pct(row['val_mean'])} ± {pct(row['val_std'])})")
    ref = (f"Reference: {pct(REFERENCE['test_acc'])} test with {REFERENCE['n_params'] / 1e6:.2f}M parameters "
           f"({html.escape(REFERENCE['what'])}).")
    return f"<div class='slotlib-headline'><p>{line}.</p><p>{ref}</p></div>"


def best_per_head(table: pd.DataFrame) -> list[str]:
    """The best cell (by validation accuracy) of each head, best first: whose heatmaps the report draws."""
    best = ranked(table)
    if best.empty:
        return []
    if "head" not in best.columns:
        return list(best["cell"].head(1))
    return list(best.drop_duplicates("head")["cell"])


def cell_files(runs_dir: str | os.PathLike, cell: str) -> tuple[dict | None, dict | None, str | None]:
    """A cell's metrics and maps, and the problem that keeps either from the report (None when all is well)."""
    folder = Path(runs_dir) / cell
    try:
        metrics, maps = read_metrics(folder), read_maps(folder)
    except DamagedRunFile as err:
        return None, None, str(err)
    if maps is None:
        return metrics, None, (f"{folder / 'maps.npz'} is missing (the cell was trained before runs wrote it, or "
                               f"with heatmap_tiles: 0): `python -m slotlib.classify.explain {folder}` writes it")
    return metrics, maps, None


def per_class_table(metrics: dict) -> pd.DataFrame:
    """Per-class test accuracy and tile count of one cell, from its confusion matrix."""
    counts = np.asarray(metrics["test_confusion"], dtype=float)
    names = metrics.get("class_names") or [str(i) for i in range(len(counts))]
    totals = counts.sum(1)
    acc = np.divide(np.diag(counts), totals, out=np.full(len(counts), np.nan), where=totals > 0)
    return pd.DataFrame({"class": names, "test tiles": totals.astype(int), "test accuracy": acc,
                         "most confused with": [names[int(np.argmax(np.where(np.arange(len(r)) == i, -1, r)))]
                                                if r.sum() > r[i] else "–" for i, r in enumerate(counts)]})


def table_html(table: pd.DataFrame, sortable: bool = True, percent: tuple[str, ...] = PERCENT_COLUMNS) -> str:
    """A table in its own horizontally scrolling box, accuracies in percent, '–' for undefined values;
    with ``sortable`` its columns sort on click (self-contained script, so it works offline)."""
    click = " onclick=\"slotlibSort(this)\" style='cursor:pointer' title='click to sort'" if sortable else ""
    arrow = " &#x21C5;" if sortable else ""
    head = "".join(f"<th{click}>{html.escape(str(c))}{arrow}</th>" for c in table.columns)

    def cell(column, v):
        number = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
        key = v if number and np.isfinite(v) else ("" if v is None or (number and not np.isfinite(v)) else str(v))
        shown = pct(v) if (column in percent or column.endswith("accuracy")) and number else plain(v)
        return f"<td data-v='{html.escape(str(key))}'>{html.escape(shown)}</td>"

    body = "".join("<tr>" + "".join(cell(c, v) for c, v in zip(table.columns, row)) + "</tr>"
                   for row in table.itertuples(index=False))
    return (f"{SORT_SCRIPT if sortable else ''}<div class='slotlib-table' style='overflow-x:auto;max-width:100%'>"
            f"<table class='dataframe'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")


SORT_SCRIPT = """<script>
function slotlibSort(th){const t=th.closest('table'),i=[...th.parentNode.children].indexOf(th),
b=t.tBodies[0],r=[...b.rows],asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';
r.sort((x,y)=>{const a=x.cells[i].dataset.v,c=y.cells[i].dataset.v,na=parseFloat(a),nc=parseFloat(c);
const d=(!isNaN(na)&&!isNaN(nc))?na-nc:a.localeCompare(c);return asc?d:-d});r.forEach(x=>b.appendChild(x));}
</script>"""


def sortable_html(table: pd.DataFrame) -> str:
    return table_html(table, sortable=True)


def render(runs_dir: str | os.PathLike) -> Path:
    """Execute the analysis notebook (object-discovery grids: the discovery report) on ``runs_dir`` and write
    ``runs_dir/report.html`` (code hidden)."""
    import nbformat
    from nbconvert import HTMLExporter

    runs_dir = Path(runs_dir).resolve()
    cells = list(cell_metrics(runs_dir)) if runs_dir.is_dir() else []
    if not cells:
        raise ConfigError(f"{runs_dir} holds no cell folders (folders with params.yaml or metrics.json); run "
                          f"`slotlib grid PARAMS.yaml --out {runs_dir}` first, or name the folder a grid wrote to")
    # of the cells that have started: a classifier's metrics.json names no kind
    kinds = {metrics.get("kind", "classify") for _, metrics, _ in cells if metrics is not None}
    if kinds == {"discovery", "classify"}:
        raise ConfigError(f"{runs_dir} holds object-discovery cells beside classifier cells; a report covers one "
                          f"kind: give each its own grid folder")
    # an object-discovery grid gets its own page (FG-ARI, the two mask readouts); a classifier grid the analysis
    notebook = DISCOVERY_NOTEBOOK if "discovery" in kinds else ANALYSIS_NOTEBOOK
    executed = runs_dir / notebook.name
    execute_notebook(notebook, executed, {"runs_dir": str(runs_dir)})
    # the offline template: lab's, without the CDN scripts (require.js, MathJax) a report does not need
    exporter = HTMLExporter(template_name="slotlib_report", extra_template_basedirs=[str(TEMPLATES)],
                            exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nbformat.read(executed, as_version=4))
    out = runs_dir / "report.html"
    from .files import write_atomic
    write_atomic(out, body)
    return out
