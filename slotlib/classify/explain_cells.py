"""``slotlib explain``: the explanation benchmark (:mod:`slotlib.classify.faithfulness`) over finished cells,
its results written into each cell (``explanations.json``, ``explanations.npz``)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..runs.explanations import FIGURES_FILE, RESULTS_FILE, results_table
from .faithfulness import benchmark


def write_results(run_dir: Path, results: dict) -> None:
    """``explanations.json`` (every metric) and ``explanations.npz`` (the figures' arrays) in a cell folder."""
    from ..runs.files import write_json, write_npz_atomic

    results = dict(results)
    figures = results.pop("figures")
    write_json(Path(run_dir) / RESULTS_FILE, results)
    write_npz_atomic(Path(run_dir) / FIGURES_FILE, **figures)


def finished_cells(paths) -> list[Path]:
    """Cell folders to explain: each path is a finished cell (``best.pt`` and status ``done``) or a grid
    folder, whose finished cells are taken. Raises ``ConfigError`` naming a path that is neither."""
    from ..config import ConfigError
    from ..runs.folder import cell_dirs, cell_status

    cells: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise ConfigError(f"{path} is not a folder: give a finished cell's folder or a grid folder")
        if (path / "best.pt").exists():
            cells.append(path)
            continue
        found = [c for c in cell_dirs(path) if (c / "best.pt").exists() and cell_status(c) == "done"]
        if not found:
            raise ConfigError(f"{path} holds no best.pt and no finished cell: give a finished cell's folder "
                              f"or a grid folder with finished cells")
        cells += found
    return cells


def explain_cells(paths, *, tiles: int = 1000, mosaic_count: int = 500, captum_tiles: int | None = None,
                  seed: int = 0, device: str | None = None, data_root: str | None = None,
                  log: Callable[[str], None] = print) -> list[dict]:
    """The benchmark on every finished cell under ``paths``; writes each cell's ``explanations.json`` and
    ``explanations.npz`` and returns the results. Bad paths are named before any cell is opened."""
    from .explain import open_run

    cells = finished_cells(paths)
    out = []
    for cell in cells:
        log(f"{cell}: {tiles} tiles, {mosaic_count} mosaics")
        exp = open_run(cell, data_root=data_root, device=device)
        results = benchmark(exp, tiles=tiles, mosaic_count=mosaic_count, captum_tiles=captum_tiles, seed=seed,
                            progress=True, log=log)
        write_results(cell, results)
        results.pop("figures")
        near = " NEAR-EMPTY MAPS" if results["near_empty"] else ""
        log(f"{cell}: head '{results['head']}', accuracy on these tiles {results['accuracy_on_tiles']:.4f}, head "
            f"maps: largest value {results['head_map_max']:.3g}, area {results['head_area']:.3g}{near}; "
            f"{results['seconds']:.0f} s\n" + results_table([results]))
        out.append(results)
    return out
