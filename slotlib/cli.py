"""The ``slotlib`` command line.

    slotlib describe PARAMS.yaml [--set key=value ...]
    slotlib train PARAMS.yaml --out DIR [--cell ID] [--set key=value ...]
    slotlib grid PARAMS.yaml --out DIR [--jobs N] [--devices 0,1] [--dry-run] [--retry-failed] [--add-cells]
                 [--backend ray [--address auto|ray://host:port] [--jobs-per-gpu K] [--cpus-per-cell C]]
    slotlib status DIR
    slotlib report DIR
    slotlib compare CELL_A CELL_B
    slotlib bench [PARAMS.yaml] [--pipeline reference fast compiled] [--image-size S] [--batch-size B ...]
                  [--head H ...] [--device D] [--steps N] [--json] [--set key=value ...]

Bad input exits with code 2 and one sentence on stderr naming the key, file or value at fault.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from .config import HEADS, Config, ConfigError, DiscoveryConfig, load_params_file, parse_params, parse_set

EXIT_BAD_INPUT = 2


def load_with_overrides(params_path: str, overrides: dict | None):
    """A params file with ``--set`` values on top of its base; their errors name ``--set``, not the file."""
    pf = load_params_file(params_path)
    if not overrides:
        return pf
    axes = [name for product in pf.products for name in product] + (["seed"] if pf.seeds else [])
    clash = next((name for name in overrides if name in axes), None)
    if clash is not None:
        raise ConfigError(f"--set {clash}=...: '{clash}' is a grid axis of {params_path}, so every cell sets its "
                          f"own value and --set would be ignored; pick a cell with --cell, or edit the grid")
    pf.config_cls.from_params({**pf.base, **overrides}, where="--set")   # the base is valid: errors are --set's
    return parse_params({"base": {**pf.base, **overrides}, "grid": pf.grid, "seeds": pf.seeds,
                         "notebook": pf.notebook}, pf.path)


def describe(params_path: str, overrides: dict | None = None) -> dict:
    """Resolved parameters and parameter counts of a params file; trains nothing, needs no data."""
    pf = load_with_overrides(params_path, overrides)
    # Imports torch (and timm for the classifier): only for commands that need them.
    if pf.notebook == "object_discovery.ipynb":
        from .discover.model import count_parameters
    else:
        from .classify.model import count_parameters

    cells = pf.cells()
    base = pf.base_config
    out = {"params_file": pf.path, "notebook": pf.notebook, "params": base.to_params(), **count_parameters(base),
           "cells": [c.id for c in cells]}
    if pf.grid or pf.seeds:
        out["n_params_by_cell"] = {c.id: count_parameters(c.config)["n_params"] for c in cells}
    return out


def train(params_path: str, out_dir: str, overrides: dict, cell: str | None, progress: bool) -> dict:
    """One run in-process: the same code path as notebooks/train.ipynb."""
    from .classify.fit import train as run

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
    config = chosen[0].config
    if isinstance(config, DiscoveryConfig):   # the object-discovery autoencoder, as object_discovery.ipynb trains it
        from .discover.fit import fit, fit_black

        fit(config, out_dir, progress=progress)
        fit_black(config, out_dir, progress=progress)   # with black_steps, it marks the cell done
        return json.loads((Path(out_dir) / "metrics.json").read_text())
    return run(config, out_dir, progress=progress)


def bench(args: argparse.Namespace) -> dict:
    """Throughput of the reference and the fast data path for one model (see slotlib/classify/bench.py)."""
    from .classify.bench import bench as run

    overrides = parse_set(args.overrides)
    heads, batch_sizes = tuple(dict.fromkeys(args.head or ())), tuple(dict.fromkeys(args.batch_size or ()))
    for key, value in (("image_size", args.image_size), ("batch_size", batch_sizes[0] if batch_sizes else None),
                       ("head", heads[0] if heads else None), ("device", args.device),
                       ("per_class_limit", args.per_class_limit)):
        if value is not None:
            overrides[key] = value
    if args.params:
        cells = load_with_overrides(args.params, overrides).cells()
        config = cells[0].config
    else:
        config = Config.from_params(overrides, where="--set")
    for name in ("steps", "repeats"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0 or args.workers < 0:
        raise ConfigError(f"--warmup and --workers must be >= 0, got {args.warmup} and {args.workers}")
    for b in batch_sizes:
        Config.from_params({**overrides, "batch_size": b}, where="--batch-size")  # one sentence for a bad size
    if args.profile < 0:
        raise ConfigError(f"--profile must be >= 0 steps, got {args.profile}")
    if args.peers < 1 or (args.peers > 1 and not args.ready_dir):
        raise ConfigError(f"--peers must be >= 1, and above 1 only with --ready-dir; got {args.peers}")
    pipelines = tuple(dict.fromkeys([*args.pipeline, *(["compiled"] if args.compile else [])]))
    return run(config, pipelines=pipelines, heads=heads or None, batch_sizes=batch_sizes or None, steps=args.steps,
               warmup=args.warmup, repeats=args.repeats, stage=args.stage, workers=args.workers,
               ready_dir=args.ready_dir, peers=args.peers, profile=args.profile, on_result=progress_line)


def progress_line(result: dict) -> None:
    """Each bench run's line on stderr as it finishes: a long benchmark shows where it is."""
    from .classify.bench_format import format_result
    print(format_result(result), file=sys.stderr, flush=True)


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
    p.add_argument("--add-cells", action="store_true",
                   help="add this params file's cells to a grid folder made from another params file")
    p.add_argument("--notebook", default=None,
                   help="notebook to run per cell (default: the params file's 'notebook', else notebooks/train.ipynb)")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="'local' (default): cells as child processes of this command; 'ray': one Ray task per cell "
                        "on a cluster (pip install 'slotlib[ray]'; --out must be a folder every node sees)")
    p.add_argument("--address", default=None,
                   help="with --backend ray: the cluster ('auto': the one `ray start` runs on this machine; "
                        "ray://host:port); default: a local Ray instance")
    p.add_argument("--jobs-per-gpu", type=int, default=1,
                   help="with --backend ray: cells sharing one GPU (each gets 1/K of it and of its memory)")
    p.add_argument("--cpus-per-cell", type=int, default=1,
                   help="with --backend ray: CPUs (and threads) each cell's task reserves (default 1)")
    p = sub.add_parser("status", help="one line per cell of a grid folder")
    p.add_argument("dir", help="grid folder")
    p = sub.add_parser("report", help="execute notebooks/analysis.ipynb on a grid folder; write DIR/report.html")
    p.add_argument("dir", help="grid folder")
    p = sub.add_parser("explain", help="the explanation benchmark of finished cells: the head's maps against "
                                         "Grad-CAM, a random and a centre map; writes explanations.json")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="a finished cell's folder, or a grid folder (its finished cells)")
    p.add_argument("--tiles", type=int, default=1000, help="test tiles explained (default 1000)")
    p.add_argument("--mosaics", type=int, default=500, help="2 x 2 mosaics for localisation (default 500)")
    p.add_argument("--captum-tiles", type=int, default=None,
                   help="tiles for infidelity and sensitivity, the costliest metrics (default: all of --tiles)")
    p.add_argument("--seed", type=int, default=0, help="seed of the tile sample, the mosaics and the random maps")
    p.add_argument("--device", help="'auto', 'cpu', 'cuda' or 'cuda:N' (default: the cell's own setting)")
    p.add_argument("--data-root", help="folder holding eurosat/2750 (default: the cell's own setting)")
    p = sub.add_parser("compare", help="McNemar's test between two finished cells on the same test tiles")
    p.add_argument("a", metavar="CELL_A", help="a finished cell's folder")
    p.add_argument("b", metavar="CELL_B", help="another, tested on the same tiles")
    p = sub.add_parser("bench", help="train images/s of the reference data path against the fast one")
    p.add_argument("params", nargs="?", help="parameters file (default: the defaults, i.e. the reference model); "
                                             "a grid's first cell is used")
    p.add_argument("--pipeline", nargs="+", choices=("reference", "loader", "fast", "compiled"),
                   default=["reference", "fast"],
                   help="pipelines to time, in this order (default: reference fast; 'loader' is the per-tile "
                        "DataLoader path of 'pipeline: loader', 'compiled' the fast one under torch.compile)")
    p.add_argument("--image-size", type=int, help="input size in pixels")
    p.add_argument("--batch-size", type=int, nargs="+", help="images per step (several: each is timed)")
    p.add_argument("--head", choices=HEADS, nargs="+",
                   help="classification head (several: each is timed)")
    p.add_argument("--device", help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    p.add_argument("--per-class-limit", type=int, help="load only the first N tiles per class (quicker start)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per repeat (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats, for mean and spread (default 3)")
    p.add_argument("--stage", type=int, choices=(1, 2), default=2,
                   help="1: head only on a frozen backbone; 2: everything trains (default)")
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers of the reference pipeline (default 4)")
    p.add_argument("--compile", action="store_true", help="also time the 'compiled' pipeline (fast + torch.compile)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after timing, N more steps under torch.profiler: the operators that took most device time")
    p.add_argument("--ready-dir", help="for several processes on one GPU: a shared empty folder where each one "
                                       "marks itself ready after its warm-up")
    p.add_argument("--peers", type=int, default=1,
                   help="with --ready-dir: wait after the warm-up until this many processes are ready (default 1)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter (repeatable)")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "describe":
            print(json.dumps(describe(args.params, parse_set(args.overrides)), indent=2))
        elif args.command == "train":
            from .classify.losses import HeadCollapseError
            from .runs.files import check_out_folder
            check_out_folder(args.out)
            from .runtime import NonFiniteLossError
            try:
                metrics = train(args.params, args.out, parse_set(args.overrides), args.cell, not args.no_progress)
            except (NonFiniteLossError, HeadCollapseError) as err:  # recorded in metrics.json as failed
                print(f"slotlib: training stopped: {err}", file=sys.stderr)
                return 1
            keys = (("status", "fg_ari", "fg_ari_alpha", "fg_ari_posterior", "test_mse", "wall_seconds")
                    if metrics.get("kind") == "discovery" else
                    ("status", "best_val_acc", "best_stage", "best_epoch", "test_acc", "wall_seconds"))
            print(json.dumps({k: metrics.get(k) for k in keys}))
        elif args.command == "grid":
            from .runs.files import check_out_folder
            from .runs.grid import run_grid
            check_out_folder(args.out)
            devices = [d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else None
            if args.backend == "ray" and not args.dry_run:
                if args.jobs != 1 or devices:
                    raise ConfigError("--jobs and --devices are for the local backend; with --backend ray, Ray "
                                      "places the cells: use --jobs-per-gpu and --cpus-per-cell")
                from .runs.grid_ray import run_grid_ray
                final = run_grid_ray(args.params, args.out, address=args.address, jobs_per_gpu=args.jobs_per_gpu,
                                     cpus_per_cell=args.cpus_per_cell, retry_failed=args.retry_failed,
                                     add_cells=args.add_cells, notebook=args.notebook)
            else:
                if args.backend == "local" and (args.address or args.jobs_per_gpu != 1 or args.cpus_per_cell != 1):
                    raise ConfigError("--address, --jobs-per-gpu and --cpus-per-cell need --backend ray")
                final = run_grid(args.params, args.out, jobs=args.jobs, devices=devices,
                                 retry_failed=args.retry_failed, add_cells=args.add_cells,
                                 dry_run=args.dry_run, notebook=args.notebook)
            failed = [k for k, v in final.items() if v in ("failed", "damaged")]
            if not args.dry_run:
                print(f"{sum(v == 'done' for v in final.values())}/{len(final)} cells done"
                      + (f", {len(failed)} failed (rerun with --retry-failed)" if failed else ""))
            return 1 if failed else 0
        elif args.command == "status":
            from .runs.status import format_status, status_rows
            if not os.path.isdir(args.dir):
                raise ConfigError(f"grid folder {args.dir!r} does not exist")
            print(format_status(status_rows(args.dir)))
        elif args.command == "report":
            from .runs.report import render
            if not os.path.isdir(args.dir):
                raise ConfigError(f"grid folder {args.dir!r} does not exist")
            print(f"report: {render(args.dir)}")
        elif args.command == "explain":
            from .classify.explain_cells import explain_cells
            if min(args.tiles, args.mosaics) < 1 or (args.captum_tiles is not None and args.captum_tiles < 0):
                raise ConfigError(f"--tiles and --mosaics must be >= 1 and --captum-tiles >= 0, got {args.tiles}, "
                                  f"{args.mosaics} and {args.captum_tiles}")
            explain_cells(args.dirs, tiles=args.tiles, mosaic_count=args.mosaics, captum_tiles=args.captum_tiles,
                          seed=args.seed, device=args.device, data_root=args.data_root)
        elif args.command == "compare":
            from .runs.compare import compare_cells
            print(compare_cells(args.a, args.b))
        elif args.command == "bench":
            from .classify.bench_format import format_bench
            result = bench(args)
            print(json.dumps(result, indent=2) if args.json else format_bench(result))
    except KeyboardInterrupt:
        return 130
    except (ConfigError, FileNotFoundError) as err:  # bad parameters, or data/weights not where they were said to be
        print(f"slotlib: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as err:   # a full disk, a read-only folder: one sentence; anything else is a bug to see whole
        from .runs.files import write_problem
        problem = write_problem(err)
        if problem is None:
            raise
        print(f"slotlib: error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
