"""``slotlib status``: one row per cell of a grid folder, pending cells of its params files included.

A cell whose run files cannot be read is listed as ``damaged`` with the sentence naming the file;
the other cells still report.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..config import DiscoveryConfig, load_params_file
from .folder import DamagedRunFile, cell_dirs, grid_copies, read_metrics, read_params


def done_detail(metrics: dict[str, Any]) -> str:
    """The headline numbers of a finished cell, for the grid's progress lines."""
    if metrics.get("kind") == "discovery":
        nan, masks = float("nan"), metrics.get("params", {}).get("eval_masks", "alpha")
        return (f"fg-ari {metrics.get('fg_ari', nan):.4f} ({masks} masks; alpha {metrics.get('fg_ari_alpha', nan):.4f}, "
                f"posterior {metrics.get('fg_ari_posterior', nan):.4f}) mse {metrics.get('test_mse', nan):.5f}")
    return f"val {metrics.get('best_val_acc'):.4f} test {metrics.get('test_acc'):.4f}"


def status_rows(out_root: str | os.PathLike) -> list[dict[str, Any]]:
    """One row per cell folder (and per pending cell of the grid's params file, when known)."""
    out_root = Path(out_root)
    ids: list[str] = []
    planned_steps: dict[str, int] = {}   # object-discovery cells of the grid, known before they start
    for copy in grid_copies(out_root):
        cells = load_params_file(copy).cells()
        ids += [c.id for c in cells if c.id not in ids]
        planned_steps.update({c.id: c.config.steps for c in cells if isinstance(c.config, DiscoveryConfig)})
    ids += [p.name for p in cell_dirs(out_root) if p.name not in ids]
    rows = []
    for cell_id in ids:
        try:
            metrics = read_metrics(out_root / cell_id) or {}
            p = read_params(out_root / cell_id)
        except DamagedRunFile as err:   # listed with its problem; the other cells still report
            rows.append({"id": cell_id, "status": "damaged", "epochs": None, "planned": None,
                         "best_val_acc": None, "test_acc": None, "error": str(err)})
            continue
        planned = planned_steps.get(cell_id)
        if p is None:
            p = {}
        else:
            planned = p["steps"] if "steps" in p else p.get("stage1_epochs", 0) + p.get("stage2_epochs", 0)
        if metrics.get("kind") == "discovery" or "steps" in p or cell_id in planned_steps:
            # Object discovery: progress in steps; validation and test FG-ARI in the accuracy columns.
            rows.append({"id": cell_id, "status": metrics.get("status", "pending"), "kind": "discovery",
                         "epochs": metrics.get("steps_done"), "planned": planned,
                         "best_val_acc": metrics.get("val_fg_ari"), "test_acc": metrics.get("fg_ari"),
                         "error": metrics.get("error")})
            continue
        rows.append({"id": cell_id, "status": metrics.get("status", "pending"), "epochs": metrics.get("epochs_done"),
                     "planned": planned, "best_val_acc": metrics.get("best_val_acc"),
                     "test_acc": metrics.get("test_acc"), "error": metrics.get("error")})
    return rows


def format_status(rows: list[dict[str, Any]]) -> str:
    """One line per cell; a grid of object-discovery cells shows steps and FG-ARI (val, test) instead."""
    def pct(v):
        return f"{100 * v:6.2f}%" if isinstance(v, (int, float)) else "      -"
    width = max([len(r["id"]) for r in rows] + [4])
    discovery = bool(rows) and all(r.get("kind") == "discovery" for r in rows)
    lines = [f"{'cell':{width}s}  status   " + ("   steps  val fg-ari  fg-ari" if discovery else
                                                  "epochs  best val     test")]
    for r in rows:
        epochs = f"{r['epochs'] or 0}/{r['planned'] or '?'}"
        if discovery:
            line = f"{r['id']:{width}s}  {r['status']:7s}  {epochs:>11s}  {pct(r['best_val_acc']):>9s}  {pct(r['test_acc'])}"
        else:
            line = f"{r['id']:{width}s}  {r['status']:7s}  {epochs:>6s}  {pct(r['best_val_acc'])}  {pct(r['test_acc'])}"
        if r["status"] in ("failed", "damaged") and r["error"]:
            line += f"  {r['error']}"
        lines.append(line)
    return "\n".join(lines)
