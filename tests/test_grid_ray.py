"""Grids on Ray (``slotlib grid --backend ray``), CPU only, on a local Ray instance with logical GPUs."""

import csv
import re
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from slotlib.cli import main
from slotlib.config import ConfigError
from slotlib.runs import grid_ray

TIMING = {"seconds", "images_per_second", "wall_seconds"}


def grid_file(tmp_path, root, grid, name="grid.yaml", **base) -> Path:
    params = {"base": {"data_root": str(root), "image_size": 64, "batch_size": 16, "pretrained": False,
                       "hidden_dim": 32, "slot_iters": 2, "stage1_epochs": 1, "stage2_epochs": 1,
                       "per_class_limit": 6, "device": "cpu", "explain_tiles": 0, **base},
              "grid": grid}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(params))
    return path


def history(cell_dir: Path) -> list[dict]:
    with open(cell_dir / "history.csv") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def outcome(cell_dir: Path) -> dict:
    import json

    metrics = json.loads((cell_dir / "metrics.json").read_text())
    return {k: metrics.get(k) for k in ("status", "best_val_acc", "best_stage", "best_epoch", "test_acc")}


def starts(cell_dir: Path) -> list[re.Match]:
    return list(re.finditer(r"=== (\S+ \S+) start \(device (\S+?)[,)](?:.*worker pid (\d+))?",
                            (cell_dir / "log.txt").read_text()))


# ---- without Ray ----

def test_ray_backend_without_ray_says_how_to_install(tmp_path, tiny_root, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)   # import ray -> ImportError
    path = grid_file(tmp_path, tiny_root, {"head": ["linear"]})
    assert main(["grid", str(path), "--out", str(tmp_path / "out"), "--backend", "ray"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'slotlib[ray]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_ray_options_need_the_ray_backend(tmp_path, tiny_root, capsys):
    path = grid_file(tmp_path, tiny_root, {"head": ["linear"]})
    assert main(["grid", str(path), "--out", str(tmp_path / "out"), "--jobs-per-gpu", "2"]) == 2
    assert "--backend ray" in capsys.readouterr().err
    assert main(["grid", str(path), "--out", str(tmp_path / "out"), "--backend", "ray", "--jobs", "2"]) == 2
    assert "--jobs-per-gpu" in capsys.readouterr().err


class _FakeRay:
    """Two nodes running the real probe; the second mounts the grid folder somewhere else (an empty folder)."""

    def __init__(self, elsewhere: Path, monkeypatch):
        import ray

        self.elsewhere, self.current = elsewhere, None
        fake = self

        class Context:
            def get_node_id(self):
                return fake.current

        monkeypatch.setattr(ray, "get_runtime_context", lambda: Context())

    def nodes(self):
        return [{"Alive": True, "NodeID": "a" * 56, "NodeManagerAddress": "10.0.0.1"},
                {"Alive": True, "NodeID": "b" * 56, "NodeManagerAddress": "10.0.0.2"}]

    def remote(self, fn):
        fake = self

        class Task:
            node = None

            def options(self, scheduling_strategy=None, **_):
                assert self.node is None, "Ray's .options() result has no .options()"
                task = Task()
                task.node = scheduling_strategy.node_id
                return task

            def remote(self, out_root, token):
                fake.current = self.node
                return fn(out_root if self.node == "a" * 56 else str(fake.elsewhere), token)

        return Task()

    def get(self, value, timeout=None):
        return value


def test_a_node_that_does_not_see_the_folder_is_refused_in_one_sentence(tmp_path, monkeypatch):
    pytest.importorskip("ray.util.scheduling_strategies", reason="Ray is not installed")
    out = tmp_path / "grid"
    out.mkdir()
    elsewhere = tmp_path / "node_b_view"
    elsewhere.mkdir()
    with pytest.raises(ConfigError, match=r"^--out .* is not shared with Ray node 10\.0\.0\.2 bbbbbbbb: "
                                          r"FileNotFoundError.*mounts at the same path \(e\.g\. NFS\)$"):
        grid_ray.check_shared_folder(_FakeRay(elsewhere, monkeypatch), out)
    assert list(out.iterdir()) == []   # the probe files are gone


def test_probe_reads_the_driver_file_and_writes_its_own(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray", reason="Ray is not installed")

    class Context:
        def get_node_id(self):
            return "c" * 32

    monkeypatch.setattr(ray, "get_runtime_context", lambda: Context())
    (tmp_path / ".ray-probe-tok").write_text("tok")
    assert grid_ray._probe(str(tmp_path), "tok") == {"node": "c" * 12, "error": None}
    assert (tmp_path / f".ray-probe-tok-{'c' * 12}").read_text() == "tok"
    assert "FileNotFoundError" in grid_ray._probe(str(tmp_path / "missing"), "tok")["error"]


# ---- on a local Ray instance ----

@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'slotlib[ray]'); CI installs it")
    started = time.monotonic()
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    print(f"ray.init: {time.monotonic() - started:.1f} s")
    yield ray
    ray.shutdown()


def same_threads_as_ray(monkeypatch, threads: int = 1) -> None:
    """Local cells with the thread count a Ray task gives its cell (--cpus-per-cell): float sums over other
    thread counts differ in the last digits, and the folders are to be identical."""
    monkeypatch.setenv("OMP_NUM_THREADS", str(threads))
    monkeypatch.setenv("MKL_NUM_THREADS", str(threads))


def test_three_cell_grid_on_ray_equals_local_and_reruns_nothing(tmp_path, tiny_root, isolated_cache, local_ray,
                                                                 monkeypatch):
    from slotlib.runs.grid import run_grid

    same_threads_as_ray(monkeypatch)
    path = grid_file(tmp_path, tiny_root, {"head": ["scouter", "slot", "linear"]})
    t0 = time.monotonic()
    local = run_grid(path, tmp_path / "local", echo=lambda m: None)
    t1 = time.monotonic()
    messages: list[str] = []
    on_ray = grid_ray.run_grid_ray(path, tmp_path / "ray", jobs_per_gpu=2, echo=messages.append)
    t2 = time.monotonic()
    print(f"local runner {t1 - t0:.1f} s, ray backend {t2 - t1:.1f} s for 3 cells")
    assert on_ray == local and set(on_ray.values()) == {"done"}, messages
    for cell_id in local:
        a, b = tmp_path / "local" / cell_id, tmp_path / "ray" / cell_id
        assert {p.name for p in a.iterdir()} == {p.name for p in b.iterdir()}
        assert outcome(a) == outcome(b)
        assert history(a) == history(b)
        (start,) = starts(b)
        assert start.group(2) in ("0", "1")   # the logical GPU Ray gave the task, passed to the cell
    # K = 2 cells share a logical GPU: no device ever held more than 2 at once
    spans = []
    for cell_id in local:
        (start,) = starts(tmp_path / "ray" / cell_id)
        end = (tmp_path / "ray" / cell_id / "metrics.json").stat().st_mtime
        spans.append((start.group(2), time.mktime(time.strptime(start.group(1), "%Y-%m-%d %H:%M:%S")), end))
    for dev, s, _ in spans:
        assert sum(d == dev and s2 <= s < e2 for d, s2, e2 in spans) <= 2
    # the folder is a grid folder like any other: status reads it; a rerun recomputes nothing
    assert main(["status", str(tmp_path / "ray")]) == 0
    stamps = {c: (tmp_path / "ray" / c / "metrics.json").stat().st_mtime_ns for c in local}
    messages.clear()
    assert grid_ray.run_grid_ray(path, tmp_path / "ray", jobs_per_gpu=2, echo=messages.append) == on_ray
    assert all(m.startswith("skip") for m in messages), messages
    assert stamps == {c: (tmp_path / "ray" / c / "metrics.json").stat().st_mtime_ns for c in local}


def test_a_killed_worker_is_retried_and_the_cell_resumes_to_the_same_result(tmp_path, tiny_root, isolated_cache,
                                                                           local_ray, monkeypatch):
    import os

    from slotlib.runs.grid import run_grid

    path = grid_file(tmp_path, tiny_root, {"head": ["scouter"]}, stage1_epochs=3, stage2_epochs=2)
    result: dict = {}
    errors: list = []

    def run():
        try:
            result.update(grid_ray.run_grid_ray(path, tmp_path / "ray", echo=lambda m: None))
        except BaseException as err:
            errors.append(err)

    runner = threading.Thread(target=run)
    runner.start()
    deadline = time.monotonic() + 240
    cell_dir = None
    while time.monotonic() < deadline and runner.is_alive():   # wait for a finished epoch, then kill the worker
        found = list((tmp_path / "ray").glob("*/history.csv")) if (tmp_path / "ray").exists() else []
        if found and len(history(found[0].parent)) >= 1:
            cell_dir = found[0].parent
            break
        time.sleep(0.2)
    assert not errors, errors
    assert cell_dir is not None, "the cell never finished an epoch"
    (start,) = starts(cell_dir)
    os.kill(int(start.group(3)), signal.SIGKILL)
    runner.join(timeout=300)
    assert not runner.is_alive()
    assert set(result.values()) == {"done"}
    assert len(starts(cell_dir)) == 2, "the task was not retried"
    same_threads_as_ray(monkeypatch)
    run_grid(path, tmp_path / "local", echo=lambda m: None)   # the same cell, uninterrupted
    local_dir = tmp_path / "local" / cell_dir.name
    assert outcome(cell_dir) == outcome(local_dir)
    assert history(cell_dir) == history(local_dir)
