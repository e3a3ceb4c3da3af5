"""A grid's checks before it writes anything, shared by the local runner (grid.py) and the Ray backend
(grid_ray.py): the params file's cells, which of them to run, that every model builds, that the
pretrained weights are there, and that the folder belongs to this params file."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from ..config import Cell, Config, ConfigError, DiscoveryConfig, load_params_file
from .files import take_grid_lock
from .folder import GRID_COPY, DamagedRunFile, cell_status, grid_copies

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"   # slotlib/runs/grid_plan.py -> repository root


def count_cell_parameters(cell: Cell) -> int:
    """Parameters of the model a cell trains: the classifier, or the object-discovery autoencoder."""
    if isinstance(cell.config, DiscoveryConfig):
        from ..discover.model import count_parameters
    else:
        from ..classify.model import count_parameters
    return count_parameters(cell.config)["n_params"]


@dataclass
class GridPlan:
    cells: list[Cell]        # every cell of the params file
    todo: list[Cell]         # those to run now (not done, not damaged, failed only with retry_failed)
    notebook: Path
    copy: Path | None        # where the params file is copied when the grid starts (None: already there)
    lock: Any = None         # the grid folder's lock, held from begin_grid until the grid ends


def plan_grid(params_path: str | os.PathLike, out_root: Path, *, retry_failed: bool = False,
              notebook: str | os.PathLike | None = None, add_cells: bool = False,
              echo: Callable[[str], Any] | None = print, validate: bool = True) -> GridPlan:
    """Every check a grid makes before it writes anything, whatever runs its cells (local or Ray).
    ``validate=False`` leaves building the models to the caller (``--dry-run`` checks each as it lists it)."""
    pf = load_params_file(params_path)
    cells = pf.cells()
    notebook = Path(notebook) if notebook is not None else NOTEBOOKS / pf.notebook
    if not notebook.exists():
        raise ConfigError(f"notebook {notebook} does not exist")
    if validate:
        validate_cells(cells)
    copy = check_grid_folder(out_root, params_path, add_cells)
    todo = []
    for cell in cells:
        status, problem = safe_status(out_root / cell.id)
        if status in ("done", "damaged") or (status == "failed" and not retry_failed):
            if echo is not None:
                echo(f"skip  {cell.id}  ({status}{': ' + problem if problem else ''})")
            continue
        todo.append(cell)
    return GridPlan(cells, todo, notebook, copy)


def begin_grid(plan: GridPlan, params_path: str | os.PathLike, out_root: Path) -> None:
    """Check the weights the cells to run need, then create the grid folder and keep the params file."""
    check_weights_of(plan.todo)   # before anything is written
    check_data_of(plan.todo)
    out_root.mkdir(parents=True, exist_ok=True)
    plan.lock = take_grid_lock(out_root)
    if plan.copy is not None:
        shutil.copyfile(params_path, plan.copy)


def safe_status(cell_dir: Path) -> tuple[str, str | None]:
    """(status, problem): 'damaged' and the sentence naming the file when a run file cannot be read."""
    try:
        return cell_status(cell_dir), None
    except DamagedRunFile as err:
        return "damaged", str(err)


def validate_cells(cells: list[Cell], checked: set | None = None) -> None:
    """Build each distinct classifier once (no weights) and run it at its image size, before any cell starts.
    ``checked`` holds the models built already (and gains these)."""
    checked = set() if checked is None else checked
    models = {(c.config.model, c.config.head_params, c.config.data.image_size, c.config.data.eval_size)
              for c in cells if isinstance(c.config, Config)} - checked
    if not models:
        return
    from ..classify import model as classify_model

    for model, head_params, image_size, eval_size in sorted(models, key=str):
        classify_model.check_builds(model, image_size, eval_size=eval_size, head_params=head_params)
        checked.add((model, head_params, image_size, eval_size))


def check_weights_of(cells: list[Cell]) -> None:
    """Find the ImageNet weights of each pretrained backbone the cells to run need, once: missing weights
    are one sentence before any cell starts, not the same failure (after the hub's retries) in each."""
    models = {c.config.model for c in cells if isinstance(c.config, Config)}
    if not models:
        return
    from ..classify.backbone import check_weights

    for model in sorted(models, key=str):
        check_weights(model)


def check_data_of(cells: list[Cell]) -> None:
    """Read each dataset the cells to run need, once: a data problem (a missing class folder, a tile
    that does not decode) is one sentence before any cell starts, as a single ``train`` gives it, not the
    same failure in every cell. The decoded cache this writes is what the cells then read."""
    roots = {c.config.data.data_root for c in cells if isinstance(c.config, Config)}
    if not roots:
        return
    from ..data.eurosat import load_eurosat

    for root in sorted(roots, key=str):
        load_eurosat(root)


def check_grid_folder(out_root: Path, params_path: str | os.PathLike, add_cells: bool) -> Path | None:
    """Where to keep a copy of the params file (None: the folder already holds this one).

    A grid folder remembers the params file that made it and refuses another (its cells would mix with
    this one's in status and the report) unless ``add_cells``.
    """
    copies = grid_copies(out_root)   # none when the folder does not exist yet
    new = yaml.safe_load(Path(params_path).read_text())
    if any(yaml.safe_load(c.read_text()) == new for c in copies):
        return None
    if not copies:
        return out_root / GRID_COPY
    if not add_cells:
        raise ConfigError(f"{out_root} holds a grid made from another params file (its copy: {copies[0]}); use "
                          f"another --out folder, or pass --add-cells to add the cells of {params_path} to it")
    return out_root / f"grid-added-{len(copies)}.yaml"
