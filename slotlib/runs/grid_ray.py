"""Grids on a Ray cluster: ``slotlib grid PARAMS --out DIR --backend ray [--address auto] [--jobs-per-gpu K]``.

Each cell that is not ``done`` becomes one Ray core task (not Ray Tune: a papermill cell reports nothing
to Tune, and Tune's trial folders would duplicate our status files). The task runs the same cell
subprocess as the local runner (``grid.start_cell``: papermill into ``OUT/<cell id>/``), so cell folders,
resume from ``last.pt``, ``slotlib status`` and ``slotlib report`` are those of a local grid.

Resources: ``num_gpus = 1/K`` when the cluster has GPUs (K cells share one), ``num_cpus = cpus_per_cell``.
Ray's resources are logical, so each task also caps what its cell may take: ``OMP_NUM_THREADS`` (and
MKL's) to its CPUs, and ``SLOTLIB_GPU_MEMORY_FRACTION`` = 1/K, which ``runtime.resolve_device`` hands to
``torch.cuda.set_per_process_memory_fraction``. Ray sets ``CUDA_VISIBLE_DEVICES`` for the task; the cell
inherits it.

Faults: a task whose worker or node dies is retried by Ray (``max_retries``) and its cell resumes from
``last.pt`` (the dead worker's cell process dies with it: ``PR_SET_PDEATHSIG``; the run lock waits for
its kernel). A cell that fails inside its notebook ends its task normally, recorded as failed, and is not
retried (``--retry-failed`` as for a local grid). If the driver dies, rerunning the command resumes.
Kernel starts on one node are spaced by ``KERNEL_START_GAP_S`` through a node-local lock file.

``--out`` must be a folder every node sees at the same path (a shared filesystem): before any cell starts,
one probe task per node reads a file the driver wrote there and writes one the driver reads back.

References: Ray core tasks and task fault tolerance, https://docs.ray.io/en/latest/ray-core/fault_tolerance/tasks.html
"""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from ..config import Cell, ConfigError
from .grid import CELL_LOG, KERNEL_START_GAP_S, finish_cell, start_cell
from .grid_plan import begin_grid, plan_grid, safe_status

INSTALL_HINT = "pip install 'slotlib[ray]' (or pip install ray)"
START_LOCK = Path(tempfile.gettempdir()) / "slotlib-kernel-start.lock"
PROBE_TIMEOUT_S = 120


def require_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--backend ray needs Ray, which is not installed here; install it with {INSTALL_HINT}") \
            from None
    return ray


def connect(ray, address: str | None, init_kwargs: dict | None = None) -> None:
    """Join the cluster at ``address`` ('auto': the one ``ray start`` began on this machine), or start a local
    instance when None; reuse a connection made before (e.g. by a test)."""
    if ray.is_initialized():
        return
    reachable(address)
    try:
        ray.init(address=address, log_to_driver=False, **(init_kwargs or {}))
    except ValueError as err:   # ray://... needs Ray Client, which plain `ray` does not install
        hint = "; install it with pip install 'ray[client]'" if "client" in str(err).lower() else ""
        raise ConfigError(f"--address {address!r}: {str(err).splitlines()[0]}{hint}") from None
    except ConnectionError as err:
        raise ConfigError(f"--address {address!r}: no Ray cluster could be reached ({str(err).splitlines()[0]}); "
                          f"start one with `ray start --head`, or leave --address out for a local one") from None


def reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """An explicit host:port (or ray://host:port) must accept a TCP connection within ``timeout_s``: Ray
    itself retries an unreachable address for minutes. 'auto' and None are left to Ray."""
    if not address or address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address {address!r} must be 'auto', HOST:PORT or ray://HOST:PORT (e.g. "
                          f"127.0.0.1:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ConfigError(f"--address {address!r}: nothing answers at {host}:{port} ({err.strerror or err}); "
                          f"start the cluster with `ray start --head --port={port}` there, or check the "
                          f"address") from None


def check_shared_folder(ray, out_root: Path, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Refuse in one sentence when a node cannot read and write ``out_root`` at the same path as the driver."""
    token = uuid.uuid4().hex
    driver_file = out_root / f".ray-probe-{token}"
    driver_file.write_text(token)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    try:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        probe = ray.remote(_probe)   # .options() gives a one-shot wrapper: all options in one call
        refs = {n["NodeManagerAddress"] + " " + n["NodeID"][:8]:
                probe.options(num_cpus=0, max_retries=0,
                              scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(out_root), token) for n in nodes}
        for node, ref in refs.items():
            problem = ray.get(ref, timeout=timeout_s)
            node_file = out_root / f".ray-probe-{token}-{problem['node']}"
            if problem["error"] is None and not node_file.exists():
                problem["error"] = f"the file it wrote there ({node_file.name}) is not seen by the driver"
            if problem["error"] is not None:
                raise ConfigError(f"--out {out_root} is not shared with Ray node {node}: {problem['error']}; put "
                                  f"the grid folder on a filesystem every node mounts at the same path (e.g. NFS)")
    finally:
        for path in out_root.glob(f".ray-probe-{token}*"):
            path.unlink(missing_ok=True)


def _probe(out_root: str, token: str) -> dict[str, Any]:
    import ray

    node = ray.get_runtime_context().get_node_id()[:12]
    try:
        if Path(out_root, f".ray-probe-{token}").read_text() != token:
            return {"node": node, "error": "it reads another file at that path"}
        Path(out_root, f".ray-probe-{token}-{node}").write_text(token)
    except OSError as err:
        return {"node": node, "error": f"{type(err).__name__}: {err}"}
    return {"node": node, "error": None}


def _wait_for_start_gap(gap_s: float) -> None:
    """Space kernel starts on this node by ``gap_s`` (kernels started at the same instant race for ports)."""
    with open(START_LOCK, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.seek(0)
            last = float(handle.read().strip() or 0.0)
            time.sleep(max(0.0, last + gap_s - time.time()))
            handle.seek(0)
            handle.truncate()
            handle.write(f"{time.time():.3f}")
            handle.flush()
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_cell(cell: Cell, out_root: str, notebook: str, threads: int, memory_fraction: float | None,
              start_gap_s: float) -> dict[str, Any]:
    """The Ray task of one cell: the local runner's cell subprocess, capped to the task's resources."""
    import ray

    gpus = ray.get_gpu_ids()
    device = os.environ.get("CUDA_VISIBLE_DEVICES") if gpus else None
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if memory_fraction is not None and gpus:
        env["SLOTLIB_GPU_MEMORY_FRACTION"] = f"{memory_fraction:.6g}"
    _wait_for_start_gap(start_gap_s)
    where = f", ray node {socket.gethostname()}, worker pid {os.getpid()}"
    process = start_cell(cell, Path(out_root), Path(notebook), device, env_extra=env, where=where)
    try:
        returncode = process.wait()
    finally:
        if process.poll() is None:   # the task was cancelled: take its cell down with it
            process.kill()
    return {"cell": cell.id, "returncode": returncode, "device": device, "host": socket.gethostname()}


def run_grid_ray(params_path: str | os.PathLike, out_root: str | os.PathLike, *, address: str | None = None,
                 jobs_per_gpu: int = 1, cpus_per_cell: int = 1, retry_failed: bool = False,
                 notebook: str | os.PathLike | None = None, add_cells: bool = False, max_retries: int = 3,
                 init_kwargs: dict | None = None, echo: Callable[[str], Any] = print) -> dict[str, str]:
    """Run every cell not yet done as a Ray task; returns cell id -> final status, as ``run_grid`` does."""
    if jobs_per_gpu < 1:
        raise ConfigError(f"--jobs-per-gpu must be >= 1, got {jobs_per_gpu}")
    if cpus_per_cell < 1:
        raise ConfigError(f"--cpus-per-cell must be >= 1, got {cpus_per_cell}")
    ray = require_ray()
    out_root = Path(out_root).resolve()
    plan = plan_grid(params_path, out_root, retry_failed=retry_failed, notebook=notebook, add_cells=add_cells,
                     echo=echo)
    if not plan.todo:
        begin_grid(plan, params_path, out_root)
        return {c.id: safe_status(out_root / c.id)[0] for c in plan.cells}
    connect(ray, address, init_kwargs)   # an unreachable cluster is said before anything is written
    begin_grid(plan, params_path, out_root)
    check_shared_folder(ray, out_root)
    has_gpus = ray.cluster_resources().get("GPU", 0) > 0
    task = ray.remote(_run_cell)
    resources = {"num_cpus": cpus_per_cell, "num_gpus": 1 / jobs_per_gpu if has_gpus else 0,
                 "max_retries": max_retries, "retry_exceptions": False}
    fraction = 1 / jobs_per_gpu if has_gpus and jobs_per_gpu > 1 else None
    pending = {}
    for cell in plan.todo:
        resuming = (out_root / cell.id / "last.pt").exists()
        echo(f"submit {cell.id}" + (" (resuming)" if resuming else ""))
        ref = task.options(name=f"slotlib-cell-{cell.id}", **resources).remote(
            cell, str(out_root), str(plan.notebook), cpus_per_cell, fraction, KERNEL_START_GAP_S)
        pending[ref] = cell
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            cell = pending.pop(done[0])
            try:
                result = ray.get(done[0])
                returncode = result["returncode"]
            except (ray.exceptions.RayError, OSError) as err:   # retries used up: the node or worker kept dying
                returncode = -1
                (out_root / cell.id).mkdir(parents=True, exist_ok=True)
                with open(out_root / cell.id / CELL_LOG, "a") as log:
                    log.write(f"\nRayError: the cell's task failed {max_retries + 1} times: "
                              f"{str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}\n")
            finish_cell(cell, out_root / cell.id, returncode, echo)
    except KeyboardInterrupt:
        echo("interrupted: cancelling the cells' tasks; rerun the same command to resume them")
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    return {c.id: safe_status(out_root / c.id)[0] for c in plan.cells}
