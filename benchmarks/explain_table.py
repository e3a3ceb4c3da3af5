"""The explanation benchmark of cells (their ``explanations.json`` and ``.npz``, from ``slotlib explain``) as
Markdown: the summary table over seeds, one row per configuration and method, then paired tests of the
head's own map and its evidence against Grad-CAM on each cell's same items (Wilcoxon signed-rank).

    .venv/bin/python benchmarks/explain_table.py outputs/head_check outputs/cpu_recipe/scouter_seed0-93cbdf89

Each argument is a grid folder (its benchmarked cells) or a cell folder. The paired tests read each cell's
``explanations.npz`` (in the run folders; docs/cpu keeps this script's printed output, not the arrays).
Cells benchmarked before 2026-12-03 kept no item scores; their paired tests are left out, with a note.
"""

from __future__ import annotations

import sys
from pathlib import Path

from slotlib.runs.explanations import RESULTS_FILE, paired, read_figures, read_results, summary

PAIRS = (("evidence", "gradcam"), ("head", "gradcam"), ("evidence", "head"))
METRICS = ("mosaic", "ins_minus_del", "deletion_auc")


def cells_of(paths: list[str]) -> list[Path]:
    out = []
    for path in map(Path, paths):
        out += [path] if (path / RESULTS_FILE).exists() else sorted(p.parent for p in path.glob(f"*/{RESULTS_FILE}"))
    return out


def main(paths: list[str]) -> None:
    cells = cells_of(paths)
    results = {c.name: read_results(c) for c in cells}
    table = summary({k: v for k, v in results.items() if v is not None})
    print("| " + " | ".join(table.columns) + " |\n|" + " --- |" * len(table.columns))
    for row in table.itertuples(index=False):
        print("| " + " | ".join(str(v) for v in row) + " |")
    print("\nPaired tests on each cell's items (mean difference a - b, Wilcoxon signed-rank p, items):\n")
    print("| cell | metric | " + " | ".join(f"{a} - {b}" for a, b in PAIRS) + " |")
    print("|" + " --- |" * (2 + len(PAIRS)))
    for cell in cells:
        figures = read_figures(cell) or {}
        if not any(k.startswith("items_") for k in figures):
            print(f"| {cell.name} | (no item scores here: benchmarked before they were kept, or a copy without the arrays) |" + " |" * len(PAIRS))
            continue
        for metric in METRICS:
            row = []
            for a, b in PAIRS:
                if f"items_{a}_{metric}" in figures and f"items_{b}_{metric}" in figures:
                    t = paired(figures, metric, a, b)
                    row.append(f"{t['mean_diff']:+.3f} (p {t['p']:.2g}, n {t['n']})".replace('(p 0,', '(p < 1e-300,'))
                else:
                    row.append("–")
            print(f"| {cell.name} | {metric} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["outputs/head_check"])
