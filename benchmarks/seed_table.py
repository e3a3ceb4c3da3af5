"""A Markdown table of a grid folder's cells, seeds pooled: mean and sd of best validation and
test accuracy (with ``tta``: also the plain test and the validation with the views), collapsed or
failed cells, wall time, training images/s (median over epochs and cells, from history.csv) and
parameters. Cells still running are left out. Then McNemar's test, seed by seed on the same test
tiles, of the group of highest mean validation accuracy (or ``--best GROUP``) against every other
group (each cell's ``predictions.npz``; ``slotlib.runs.compare.paired_rows``).

    .venv/bin/python benchmarks/seed_table.py outputs/head_check [--best scouter]

Cells are grouped by their id without the seed and hash (``scouter_os32_seed1-25371c87`` ->
``scouter_os32``), in the order of the grid folder's ``grid.yaml`` when it is there.
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path

from slotlib.runs.folder import config_of, seed_of


def pct(values: list[float]) -> str:
    if not values:
        return "–"
    mean = 100 * statistics.mean(values)
    if len(values) < 2:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {100 * statistics.stdev(values):.2f}"


def main(root: str, best: str | None = None) -> None:
    groups: dict[str, list[dict]] = {}
    for cell in sorted(Path(root).iterdir(), key=lambda p: p.stat().st_mtime):
        path = cell / "metrics.json"
        if not path.exists():
            continue
        metrics = json.loads(path.read_text())
        if metrics.get("status") not in ("done", "failed"):
            continue
        with open(cell / "history.csv") as f:
            metrics["images_per_second"] = statistics.median(
                float(row["images_per_second"]) for row in csv.DictReader(f))
        name = config_of(cell.name)
        metrics["seed"] = seed_of(cell.name)
        metrics["cell"] = cell.name
        groups.setdefault(name, []).append(metrics)
    tta = any("test_acc_plain" in m for cells in groups.values() for m in cells)
    extra = " test acc, plain (%) | val acc, tta (%) |" if tta else ""
    print("| cells | seeds | best val acc (%) | test acc (%) |" + extra + " collapsed / failed | wall (min, median) "
          "| train images/s | parameters |")
    print("| --- | --- | --- | --- |" + (" --- | --- |" if tta else "") + " --- | --- | --- | --- |")
    for name, cells in groups.items():
        done = [m for m in cells if m.get("status") == "done"]
        val = [m["best_val_acc"] for m in cells if m.get("best_val_acc") is not None]
        test = [m["test_acc"] for m in done if m.get("test_acc") is not None]
        if tta:   # a cell without tta: its plain accuracies are its only ones
            test = pct(test) + " | " + pct([m.get("test_acc_plain", m.get("test_acc")) for m in done]) + " | " + pct(
                [m.get("val_acc_tta", m.get("best_val_acc")) for m in done])
        else:
            test = pct(test)
        collapsed = sum(1 for m in cells if m.get("collapse"))
        failed = sum(1 for m in cells if m.get("status") == "failed")
        walls = [m["wall_seconds"] / 60 for m in cells if m.get("wall_seconds")]
        seeds = ", ".join(str(m["seed"]) for m in sorted(cells, key=lambda m: m["seed"] or 0))
        n_params = cells[0].get("n_params")
        speed = f"{statistics.median(m['images_per_second'] for m in cells):.0f}"
        print(f"| {name} | {seeds} | {pct(val)} | {test} | {collapsed} / {failed} | "
              f"{statistics.median(walls):.1f} | {speed} | {n_params:,} |" if walls and n_params else
              f"| {name} | {seeds} | {pct(val)} | {test} | {collapsed} / {failed} | – | {speed} | – |")
    paired(root, groups, best)


def paired(root: str, groups: dict[str, list[dict]], best: str | None) -> None:
    import pandas as pd

    from slotlib.runs.compare import paired_rows

    table = pd.DataFrame([{"cell": m["cell"], "status": m.get("status"), "best_val_acc": m.get("best_val_acc")}
                          for cells in groups.values() for m in cells])
    pairs = paired_rows(root, table, best) if len(table) else pd.DataFrame()
    if pairs.empty:
        return
    print("\n| best | against | seed | best test (%) | its test (%) | best right only | it right only | test | p |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in pairs.to_dict("records"):
        if "p" not in r or pd.isna(r.get("p")):
            print(f"| {r['best']} | {r['against']} | {r['seed']} | – | – | – | – | {r['test']} | – |")
            continue
        print(f"| {r['best']} | {r['against']} | {r['seed']} | {100 * r['best test accuracy']:.2f} | "
              f"{100 * r['its test accuracy']:.2f} | {int(r['best right only'])} | {int(r['it right only'])} | "
              f"{r['test']} | {r['p']:.3g} |")


if __name__ == "__main__":
    args = sys.argv[1:]
    best = None
    if len(args) == 3 and args[1] == "--best":
        args, best = args[:1], args[2]
    if len(args) != 1:
        sys.exit(__doc__)
    main(args[0], best)
