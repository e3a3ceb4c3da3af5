"""Test accuracy against training minutes for a grid folder's cells: a Markdown table per setting and a PNG.

    .venv/bin/python benchmarks/budget_curve.py outputs/standard_split docs/budget_curve.png \\
        --mark scouter_ep28="fast recipe" --target 0.985

One point per finished cell (``slotlib.runs.report_figures.plot_budget_curve``); minutes are each cell's
``train_wall_seconds`` (every epoch's validation included, the final test left out), on the machine it
ran on: compare them only within one quiet run of one machine. ``--mark SETTING=LABEL`` rings a setting
(its cells' name less seed and hash) and labels it; ``--target`` draws a dashed line at that accuracy.
"""

from __future__ import annotations

import argparse
import statistics

from slotlib.runs import report
from slotlib.runs.compare import train_minutes
from slotlib.runs.folder import config_of
from slotlib.runs.report_figures import plot_budget_curve


def spread(values, scale: float = 1.0, digits: int = 2) -> str:
    values = [scale * float(v) for v in values]
    mean = f"{statistics.mean(values):.{digits}f}"
    return mean if len(values) < 2 else f"{mean} ± {statistics.stdev(values):.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir")
    parser.add_argument("png")
    parser.add_argument("--mark", action="append", default=[], metavar="SETTING=LABEL")
    parser.add_argument("--target", type=float, default=None)
    args = parser.parse_args()
    marks = dict(m.split("=", 1) for m in args.mark)
    table = report.collect(args.runs_dir)
    done = table[table["status"] == "done"].assign(minutes=train_minutes, config=lambda t: t["cell"].map(config_of))
    print("| setting | seeds | training minutes per seed | test acc (%) | best val acc (%) |")
    print("| --- | --- | --- | --- | --- |")
    for config, cells in done.groupby("config", sort=False):
        label = f" ({marks[config]})" if config in marks else ""
        print(f"| {config}{label} | {len(cells)} | {spread(cells['minutes'], digits=1)} | "
              f"{spread(cells['test_acc'], 100)} | {spread(cells['best_val_acc'], 100)} |")
    fig = plot_budget_curve(table, marks, args.target)
    fig.savefig(args.png, dpi=110)
    print(f"\nwrote {args.png}")


if __name__ == "__main__":
    main()
