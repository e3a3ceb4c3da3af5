"""Validation accuracy against training budget, one line per head: a Markdown table and a PNG.

Reads a grid folder of ``params/head_budgets.yaml`` (or any grid over head, per_class_limit,
stage1_epochs and stage2_epochs), pools the seeds of each (head, budget), and gives for every budget
each head's mean ± sd of best validation accuracy and, for the other heads, the mean paired gap to the
linear head (same seed, same budget) with its smallest and largest value.

    .venv/bin/python benchmarks/budget_plot.py outputs/head_budgets --png docs/cpu/2026-12-03-head_budgets/budgets.png
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

HEADS = ("scouter", "slot", "linear")


def budget_of(params: dict) -> tuple[int, int, int]:
    return params["per_class_limit"], params["stage1_epochs"], params["stage2_epochs"]


def label(budget: tuple[int, int, int]) -> str:
    tiles, ep1, ep2 = budget
    return f"{tiles}/class, {ep1}+{ep2}"


def collect(grid: Path) -> dict[tuple, dict[str, dict[int, float]]]:
    """budget -> head -> seed -> best validation accuracy, for the finished cells."""
    out: dict[tuple, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for path in sorted(grid.glob("*/metrics.json")):
        m = json.loads(path.read_text())
        if m.get("status") == "done":
            p = m["params"]
            out[budget_of(p)][p["head"]][p["seed"]] = m["best_val_acc"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid")
    parser.add_argument("--png", default=None)
    args = parser.parse_args()
    data = collect(Path(args.grid))
    budgets = sorted(data, key=lambda b: (b[0], b[1] + b[2], b[2]))
    print("| budget | " + " | ".join(HEADS) + " | scouter - linear | slot - linear |")
    print("| --- " * (len(HEADS) + 3) + "|")
    for b in budgets:
        cells = []
        for head in HEADS:
            accs = list(data[b][head].values())
            cells.append(f"{100 * statistics.mean(accs):.2f} ± {100 * statistics.stdev(accs):.2f} (n={len(accs)})"
                         if len(accs) > 1 else (f"{100 * accs[0]:.2f} (n=1)" if accs else "–"))
        gaps = []
        for head in ("scouter", "slot"):
            seeds = sorted(set(data[b][head]) & set(data[b]["linear"]))
            diff = [100 * (data[b][head][s] - data[b]["linear"][s]) for s in seeds]
            gaps.append(f"{statistics.mean(diff):+.2f} [{min(diff):+.2f}, {max(diff):+.2f}]" if diff else "–")
        print(f"| {label(b)} | " + " | ".join(cells) + " | " + " | ".join(gaps) + " |")
    if args.png:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        x = range(len(budgets))
        for head in HEADS:
            means = [100 * statistics.mean(data[b][head].values()) if data[b][head] else float("nan") for b in budgets]
            sds = [100 * statistics.stdev(data[b][head].values()) if len(data[b][head]) > 1 else 0.0 for b in budgets]
            ax.errorbar(list(x), means, yerr=sds, marker="o", capsize=3, label=head)
        ax.set_xticks(list(x), [label(b) for b in budgets], rotation=20, ha="right", fontsize=8)
        ax.set_xlabel("tiles per class, frozen + fine-tuning epochs")
        ax.set_ylabel("best validation accuracy (%)")
        ax.set_title("Heads against training budget (mobilenetv2_100, 64 px; mean ± sd over seeds)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        Path(args.png).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.png, dpi=110)


if __name__ == "__main__":
    main()
