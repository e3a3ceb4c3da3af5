"""Grids: a params file -> cells -> one papermill run of a notebook per cell.

Each cell runs in its own child process (``python -m slotlib.runs.grid _cell``), which executes the
notebook with papermill into ``OUT/<cell id>/<notebook name>`` (``train.ipynb`` unless the params
file names another notebook, e.g. ``notebook: object_discovery.ipynb``) and writes its output to
``OUT/<cell id>/log.txt``. Cells already ``done`` are skipped; a cell left ``running`` by a killed
grid resumes from its ``last.pt``; a failed cell is recorded with its error and the grid carries
on (``retry_failed`` reruns only those).

Crash safety: a child dies with the runner (PR_SET_PDEATHSIG on Linux) and the kernel with its
child (ipykernel's parent poller), so no orphan keeps training; ``fit`` also holds a lock on the
cell folder. Every file a cell writes is written atomically.

The kernel must be this environment's Python, not whatever ``python3`` kernel a machine has:
``JUPYTER_PATH`` is pointed at this environment's kernelspecs first (Jupyter searches it before
the user's and the system's folders), and jupyter_client runs a spec whose command is plain
``python`` with the current interpreter.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

from ..config import Cell, ConfigError
from .folder import DamagedRunFile, read_metrics
from .grid_plan import NOTEBOOKS, begin_grid, count_cell_parameters, plan_grid, safe_status, validate_cells
from .status import done_detail

CELL_LOG = "log.txt"


KERNEL_START_GAP_S = 1.5  # kernels started at the same instant can race for the same ports


def kernel_env() -> dict[str, str]:
    """Environment variables that make papermill start this environment's kernel."""
    own = str(Path(sys.prefix) / "share" / "jupyter")
    rest = [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p and p != own]
    return {"JUPYTER_PATH": os.pathsep.join([own, *rest])}


def kernel_config() -> Any:
    """jupyter_client settings for the kernels papermill starts: CurveZMQ keys for a kernel whose spec
    supports them (this environment's ipykernel does). Without them every kernel warns that it "is
    running over TCP without encryption" in each cell's log; with them it is encrypted, so the warning
    is answered, not hidden, and a kernel that cannot encrypt still says so."""
    from traitlets.config import Config

    return Config({"KernelManager": {"transport_encryption": "auto"}})


def execute_notebook(notebook: str | os.PathLike, output: str | os.PathLike, parameters: dict[str, Any], *,
                     cwd: str | os.PathLike | None = None, log_output: bool = False,
                     start_timeout: int = 180) -> Any:
    """Run ``notebook`` with papermill, injecting ``parameters``; the executed copy goes to ``output``."""
    import papermill as pm

    os.environ.update(kernel_env())
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    return pm.execute_notebook(str(notebook), str(output), parameters=parameters, kernel_name="python3",
                               cwd=str(cwd or Path(notebook).parent), log_output=log_output, progress_bar=False,
                               start_timeout=start_timeout, config=kernel_config())


def record_failure(cell: Cell, cell_dir: Path, error: str) -> None:
    """Mark a cell failed when its notebook died without saying so itself (kernel died, bad data...)."""
    from .files import write_json

    try:
        metrics = read_metrics(cell_dir) or {"cell_id": cell.id, "params": cell.config.to_params()}
    except DamagedRunFile:
        return  # named as damaged by status and the report; never overwritten
    if metrics.get("status") == "failed" and metrics.get("error"):
        return  # the run recorded its own, more precise error
    write_json(cell_dir / "metrics.json", {**metrics, "status": "failed", "error": error})


def last_error_line(log: Path) -> str:
    """The most telling line of a cell's log: papermill's exception summary, else the last line."""
    try:
        lines = [l.strip() for l in log.read_text(errors="replace").splitlines() if l.strip()]
    except FileNotFoundError:
        return "no log"
    for line in reversed(lines):
        if "Error" in line or "Exception" in line:
            return line[:500]
    return lines[-1][:500] if lines else "no output"


@dataclass
class Running:
    cell: Cell
    process: subprocess.Popen
    device: str | None


def _die_with_parent() -> None:
    """preexec_fn: the kernel's parent (this child) gets SIGKILL when the grid runner dies."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


# Environment variables that name a path: a cell's kernel runs in notebooks/, so a relative one is made
# absolute (from the grid's working directory) before it is handed on.
PATH_ENV = ("EUROSAT_ROOT", "SLOTLIB_WEIGHTS")


def absolute_path_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with the paths of ``PATH_ENV`` absolute (``EUROSAT_ROOT=../shared/data`` would otherwise
    be read from notebooks/ and fail every cell)."""
    return {**env, **{k: os.path.abspath(env[k]) for k in PATH_ENV if env.get(k)}}


def cell_parameters(cell: Cell) -> dict[str, Any]:
    """The parameters a cell's notebook gets: its config, with ``data_root`` absolute (it is local-only,
    not in the cell id, and the kernel's working directory is notebooks/)."""
    params = cell.config.to_params()
    if params.get("data_root"):
        params["data_root"] = os.path.abspath(params["data_root"])
    return params


def start_cell(cell: Cell, out_root: Path, notebook: Path, device: str | None,
               env_extra: dict[str, str] | None = None, where: str = "") -> subprocess.Popen:
    """The cell's child process (papermill), its output appended to the cell's log.txt.

    ``env_extra``: more environment for it (the Ray backend's thread and GPU-memory caps); ``where``: said
    in the log's start line (the Ray node)."""
    cell_dir = out_root / cell.id
    cell_dir.mkdir(parents=True, exist_ok=True)
    env = absolute_path_env({**os.environ, **kernel_env(), "PYTHONUNBUFFERED": "1", **(env_extra or {})})
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    log = open(cell_dir / CELL_LOG, "ab")
    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} start (device {device or 'default'}{where})\n".encode())
    log.flush()
    cmd = [sys.executable, "-m", "slotlib.runs.grid", "_cell", str(notebook), str(cell_dir),
           json.dumps(cell_parameters(cell))]
    try:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                preexec_fn=_die_with_parent)
    finally:
        log.close()


def device_slots(devices: list[str] | None, jobs: int) -> list[str | None]:
    """One entry per concurrent cell: ``jobs`` spread over ``devices`` (several per device when jobs > devices)."""
    if not devices:
        return [None] * jobs
    per_device = max(1, math.ceil(jobs / len(devices)))
    return [d for d in devices for _ in range(per_device)][:max(jobs, len(devices))]


def finish_cell(cell: Cell, cell_dir: Path, returncode: int, echo: Callable[[str], Any]) -> str:
    """After a cell's process ended: record a failure it could not record itself, say how it ended."""
    if returncode != 0:
        record_failure(cell, cell_dir, f"notebook exited with code {returncode}: "
                                       f"{last_error_line(cell_dir / CELL_LOG)}")
    status, problem = safe_status(cell_dir)
    metrics = (read_metrics(cell_dir) or {}) if problem is None else {"error": problem}
    detail = done_detail(metrics) if status == "done" else metrics.get("error") or ""
    echo(f"{status:5s} {cell.id}  {detail}")
    return status


def run_grid(params_path: str | os.PathLike, out_root: str | os.PathLike, *, jobs: int = 1,
             devices: list[str] | None = None, retry_failed: bool = False, dry_run: bool = False,
             notebook: str | os.PathLike | None = None, add_cells: bool = False,
             echo: Callable[[str], Any] = partial(print, flush=True)) -> dict[str, str]:
    """Run every cell not yet done; returns cell id -> final status ('damaged': a run file is unreadable).

    ``notebook`` defaults to the one the params file names (``notebook:``, in notebooks/), else train.ipynb.
    """
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    out_root = Path(out_root)
    plan = plan_grid(params_path, out_root, retry_failed=retry_failed, notebook=notebook, add_cells=add_cells,
                     echo=None if dry_run else echo, validate=not dry_run)
    if dry_run:   # streams: each distinct model is built just before its first line
        checked: set = set()
        for cell in plan.cells:
            validate_cells([cell], checked)
            echo(f"{cell.id}  {safe_status(out_root / cell.id)[0]:8s}  n_params={count_cell_parameters(cell):,}")
        return {c.id: safe_status(out_root / c.id)[0] for c in plan.cells}
    begin_grid(plan, params_path, out_root)
    todo = list(plan.todo)
    free = device_slots(devices, jobs)
    running: list[Running] = []
    last_start = 0.0
    try:
        while todo or running:
            while todo and free:
                time.sleep(max(0.0, last_start + KERNEL_START_GAP_S - time.monotonic()))
                cell, device = todo.pop(0), free.pop(0)
                resuming = (out_root / cell.id / "last.pt").exists()
                echo(f"start {cell.id}" + (" (resuming)" if resuming else "") + (f" on device {device}" if device else ""))
                running.append(Running(cell, start_cell(cell, out_root, plan.notebook, device), device))
                last_start = time.monotonic()
            time.sleep(0.2)
            for r in [r for r in running if r.process.poll() is not None]:
                running.remove(r)
                free.append(r.device)
                finish_cell(r.cell, out_root / r.cell.id, r.process.returncode, echo)
    except KeyboardInterrupt:
        echo("interrupted: stopping running cells; rerun the same command to resume them")
        for r in running:
            r.process.send_signal(signal.SIGTERM)
        for r in running:
            r.process.wait()
        raise
    return {c.id: safe_status(out_root / c.id)[0] for c in plan.cells}


def _run_cell_main(notebook: str, cell_dir: str, params_json: str) -> int:
    """The child process of one cell: papermill, with the kernel's output echoed to log.txt."""
    import logging

    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    parameters = {**json.loads(params_json), "out_dir": str(Path(cell_dir).resolve())}
    try:
        execute_notebook(notebook, Path(cell_dir) / Path(notebook).name, parameters, log_output=True)
    except Exception as err:  # papermill's error for a failing cell, or a dead kernel: report and exit 1
        print(f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "_cell":
        sys.exit(_run_cell_main(*sys.argv[2:]))
    sys.exit("usage: python -m slotlib.runs.grid _cell NOTEBOOK CELL_DIR PARAMS_JSON (used by `slotlib grid`)")
