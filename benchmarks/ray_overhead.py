"""Overhead of ``slotlib grid --backend ray`` against the local runner, on the same tiny 3-cell grid
(12 learnable synthetic tiles per class, one epoch per stage, CPU), two cells at a time in both, one
thread per cell in both:

    .venv/bin/python benchmarks/ray_overhead.py

Prints Ray's start-up (``ray.init`` of a local instance), the grid's wall time with each backend, and
the difference per cell. Run it with nothing else heavy on the machine.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import write_learnable_eurosat  # noqa: E402

from slotlib.heads import HEADS  # noqa: E402


def main() -> None:
    import ray

    from slotlib.runs.grid import run_grid
    from slotlib.runs.grid_ray import run_grid_ray

    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["SLOTLIB_CACHE"] = str(tmp / "cache")
        write_learnable_eurosat(tmp / "data" / "eurosat" / "2750", per_class=12)
        params = {"base": {"data_root": str(tmp / "data"), "image_size": 64, "batch_size": 16, "pretrained": False,
                           "hidden_dim": 32, "slot_iters": 2, "stage1_epochs": 1, "stage2_epochs": 1,
                           "per_class_limit": 6, "device": "cpu", "explain_tiles": 0},
                  "grid": {"head": list(HEADS)}}
        path = tmp / "grid.yaml"
        path.write_text(yaml.safe_dump(params))
        run_grid(path, tmp / "warm", jobs=1, echo=lambda m: None)   # tile cache and imports warm for both
        t0 = time.monotonic()
        run_grid(path, tmp / "local", jobs=2, echo=lambda m: None)
        local = time.monotonic() - t0
        t0 = time.monotonic()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        start_up = time.monotonic() - t0
        t0 = time.monotonic()
        run_grid_ray(path, tmp / "ray", echo=lambda m: None)
        on_ray = time.monotonic() - t0
        ray.shutdown()
    print(f"local runner, --jobs 2:      {local:6.1f} s for 3 cells")
    print(f"ray backend, 2 CPUs:         {on_ray:6.1f} s for 3 cells (+ ray.init {start_up:.1f} s)")
    print(f"overhead per cell:           {(on_ray - local) / 3:+6.1f} s dispatch, "
          f"{(on_ray + start_up - local) / 3:+6.1f} s with start-up")


if __name__ == "__main__":
    main()
