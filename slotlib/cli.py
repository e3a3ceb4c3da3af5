"""The ``slotlib`` command line.

    slotlib describe PARAMS.yaml [--set key=value ...]
    slotlib train PARAMS.yaml --out DIR [--cell ID] [--set key=value ...]

Bad input exits with code 2 and one sentence on stderr naming the key, file or value at fault.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from .config import Config, ConfigError, load_params_file, parse_params, parse_set

EXIT_BAD_INPUT = 2


def describe(params_path: str, overrides: dict | None = None) -> dict:
    """Resolved parameters and parameter counts of a params file; trains nothing, needs no data."""
    from .model import SlotClassifier  # imports torch and timm: only for commands that need them

    pf = load_params_file(params_path)
    if overrides:
        pf = parse_params({"base": {**pf.base, **overrides}, "grid": pf.grid, "seeds": pf.seeds}, pf.path)
    cells = pf.cells()
    counts: dict[str, dict] = {}

    def count(cfg: Config) -> dict:
        key = json.dumps({k: v for k, v in cfg.to_params().items() if k in _MODEL_KEYS}, sort_keys=True)
        if key not in counts:
            counts[key] = SlotClassifier(cfg.model, num_classes=10, pretrained=False).parameter_counts()
        return counts[key]

    base = pf.base_config
    out = {"params_file": pf.path, "params": base.to_params(), **count(base),
           "cells": [c.id for c in cells]}
    if pf.grid or pf.seeds:
        out["n_params_by_cell"] = {c.id: count(c.config)["n_params"] for c in cells}
    return out


def train(params_path: str, out_dir: str, overrides: dict, cell: str | None, progress: bool) -> dict:
    """One run in-process: the same code path as notebooks/train.ipynb."""
    from .train import train as run

    pf = load_params_file(params_path)
    if overrides:
        pf = parse_params({"base": {**pf.base, **overrides}, "grid": pf.grid, "seeds": pf.seeds}, pf.path)
    cells = pf.cells()
    if cell is not None:
        chosen = [c for c in cells if c.id == cell or c.id.split("-")[0] == cell]
        if not chosen:
            raise ConfigError(f"--cell {cell!r} is not a cell of {pf.path}; its cells are: "
                              f"{', '.join(c.id for c in cells)}")
    elif len(cells) > 1:
        raise ConfigError(f"{pf.path} has {len(cells)} cells; pick one with --cell ID (see `slotlib describe`) "
                          f"or run them all with `slotlib grid`")
    else:
        chosen = cells
    return run(chosen[0].config, out_dir, progress=progress)


_MODEL_KEYS = {"backbone", "feature_stride", "head", "hidden_dim", "slots_per_class"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slotlib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("describe", help="print resolved parameters and parameter counts as JSON")
    p.add_argument("params", help="parameters file (YAML), e.g. params/demo.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a base parameter (repeatable)")
    p = sub.add_parser("train", help="train one cell in-process and write its run folder")
    p.add_argument("params", help="parameters file (YAML)")
    p.add_argument("--out", required=True, help="the run folder (created; resumed if it holds last.pt)")
    p.add_argument("--cell", help="cell id (or its readable part) when the file holds a grid")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a base parameter (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "describe":
            print(json.dumps(describe(args.params, parse_set(args.overrides)), indent=2))
        elif args.command == "train":
            from .losses import NonFiniteLossError
            try:
                metrics = train(args.params, args.out, parse_set(args.overrides), args.cell, not args.no_progress)
            except NonFiniteLossError as err:  # recorded in metrics.json as failed
                print(f"slotlib: training stopped: {err}", file=sys.stderr)
                return 1
            print(json.dumps({k: metrics.get(k) for k in ("status", "best_val_acc", "best_stage", "best_epoch",
                                                          "test_acc", "wall_seconds")}))
    except (ConfigError, FileNotFoundError) as err:  # bad parameters, or data/weights not where they were said to be
        print(f"slotlib: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
