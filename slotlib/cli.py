"""The ``slotlib`` command line.

    slotlib describe PARAMS.yaml [--set key=value ...]
    slotlib train PARAMS.yaml --out DIR [--cell ID] [--set key=value ...]
    slotlib grid PARAMS.yaml --out DIR [--jobs N] [--devices 0,1] [--dry-run] [--retry-failed]
    slotlib status DIR
    slotlib report DIR

Bad input exits with code 2 and one sentence on stderr naming the key, file or value at fault.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from .config import Config, ConfigError, load_params_file, parse_params, parse_set

EXIT_BAD_INPUT = 2


def load_with_overrides(params_path: str, overrides: dict | None):
    pf = load_params_file(params_path)
    if overrides:
        pf = parse_params({"base": {**pf.base, **overrides}, "grid": pf.grid, "seeds": pf.seeds}, pf.path)
    return pf


def describe(params_path: str, overrides: dict | None = None) -> dict:
    """Resolved parameters and parameter counts of a params file; trains nothing, needs no data."""
    from .model import count_parameters  # imports torch and timm: only for commands that need them

    pf = load_with_overrides(params_path, overrides)
    cells = pf.cells()
    base = pf.base_config
    out = {"params_file": pf.path, "params": base.to_params(), **count_parameters(base),
           "cells": [c.id for c in cells]}
    if pf.grid or pf.seeds:
        out["n_params_by_cell"] = {c.id: count_parameters(c.config)["n_params"] for c in cells}
    return out


def train(params_path: str, out_dir: str, overrides: dict, cell: str | None, progress: bool) -> dict:
    """One run in-process: the same code path as notebooks/train.ipynb."""
    from .train import train as run

    cells = load_with_overrides(params_path, overrides).cells()
    if cell is not None:
        chosen = [c for c in cells if c.id == cell or c.id.split("-")[0] == cell]
        if not chosen:
            raise ConfigError(f"--cell {cell!r} is not a cell of {params_path}; its cells are: "
                              f"{', '.join(c.id for c in cells)}")
    elif len(cells) > 1:
        raise ConfigError(f"{params_path} has {len(cells)} cells; pick one with --cell ID (see `slotlib describe`) "
                          f"or run them all with `slotlib grid`")
    else:
        chosen = cells
    return run(chosen[0].config, out_dir, progress=progress)


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
    p = sub.add_parser("grid", help="run every cell of a params file as one papermill run of a notebook")
    p.add_argument("params", help="parameters file (YAML) with base/grid/seeds")
    p.add_argument("--out", required=True, help="grid folder: one sub-folder per cell")
    p.add_argument("--jobs", type=int, default=1, help="cells at once (default 1)")
    p.add_argument("--devices", help="comma-separated GPU ids to pin cells to, e.g. 0,1 (jobs spread over them)")
    p.add_argument("--dry-run", action="store_true", help="list the cells and their parameter counts; run nothing")
    p.add_argument("--retry-failed", action="store_true", help="also rerun cells that failed")
    p.add_argument("--notebook", default=None, help="notebook to run per cell (default notebooks/train.ipynb)")
    p = sub.add_parser("status", help="one line per cell of a grid folder")
    p.add_argument("dir", help="grid folder")
    p = sub.add_parser("report", help="execute notebooks/analysis.ipynb on a grid folder; write DIR/report.html")
    p.add_argument("dir", help="grid folder")
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
        elif args.command == "grid":
            from .grid import TRAIN_NOTEBOOK, run_grid
            devices = [d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else None
            final = run_grid(args.params, args.out, jobs=args.jobs, devices=devices, retry_failed=args.retry_failed,
                             dry_run=args.dry_run, notebook=args.notebook or TRAIN_NOTEBOOK)
            failed = [k for k, v in final.items() if v == "failed"]
            if not args.dry_run:
                print(f"{sum(v == 'done' for v in final.values())}/{len(final)} cells done"
                      + (f", {len(failed)} failed (rerun with --retry-failed)" if failed else ""))
            return 1 if failed else 0
        elif args.command == "status":
            from .grid import format_status, status_rows
            if not os.path.isdir(args.dir):
                raise ConfigError(f"grid folder {args.dir!r} does not exist")
            print(format_status(status_rows(args.dir)))
        elif args.command == "report":
            from .report import render
            if not os.path.isdir(args.dir):
                raise ConfigError(f"grid folder {args.dir!r} does not exist")
            print(f"report: {render(args.dir)}")
    except KeyboardInterrupt:
        return 130
    except (ConfigError, FileNotFoundError) as err:  # bad parameters, or data/weights not where they were said to be
        print(f"slotlib: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
